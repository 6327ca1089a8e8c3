"""Fields of a fine-tuning experiment (config.finetune), beside the base config's.

The model's shape and the tokenizer come from the pretrained checkpoint named by
finetune.base_workdir; config.model is overwritten with the saved model fields at start,
so a fine-tune's own checkpoints record the model they trained.
"""

import ml_collections

from configs import base

ALPACA = (
  'Below is an instruction that describes a task, paired with an input that provides '
  'further context. Write a response that appropriately completes the request.\n\n'
  '### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n'
)
ALPACA_NO_INPUT = (
  'Below is an instruction that describes a task. Write a response that '
  'appropriately completes the request.\n\n'
  '### Instruction:\n{instruction}\n\n### Response:\n'
)


def finetune_config(task: str) -> ml_collections.ConfigDict:
  f = ml_collections.ConfigDict()
  f.base_workdir = ''  # the pretrained run: its latest (or base_step) checkpoint
  f.base_step = 0  # 0: the latest
  f.train_path = ''  # .csv, .tsv, .jsonl or .json
  f.val_path = ''  # empty: val_fraction of the training file, by a hash of the text
  f.test_path = ''  # empty: test_fraction of the training file
  f.val_fraction = 0.1
  f.test_fraction = 0.1 if task == 'classify' else 0.0
  # What trains: 'head' (the classifier head), 'last_k' (head, the last k blocks and the
  # final norm), 'all', or 'lora' (adapters, plus the head when classifying).
  f.trainable = 'lora'
  f.last_k = 1
  f.dropout = 0.0  # the model's dropout while fine-tuning
  f.lora = ml_collections.ConfigDict()
  f.lora.rank = 8
  f.lora.alpha = 16.0
  f.lora.dropout = 0.0
  f.lora.targets = ('qkv', 'out', 'fc_in', 'fc_out')  # which dense layers get adapters
  # classification
  f.text_field = 'text'
  f.label_field = 'label'
  # instruction following
  f.instruction_field = 'instruction'
  f.input_field = 'input'  # optional per record
  f.output_field = 'output'
  f.prompt_template = ALPACA  # {instruction} and {input}
  f.prompt_template_no_input = ALPACA_NO_INPUT  # when a record's input is empty or absent
  f.packed = False  # pack several examples per row (segments keep them apart)
  f.num_generate = 0  # held-out responses generated after training (0: all)
  # preference pairs (train.kind='dpo'): a record holds a prompt (used as it is) or an
  # instruction and optional input (put in the templates above), and two responses
  f.prompt_field = 'prompt'
  f.chosen_field = 'chosen'
  f.rejected_field = 'rejected'
  f.dpo = ml_collections.ConfigDict()
  f.dpo.beta = 0.1  # how far from the reference the policy may move (the KL penalty's weight)
  # The conservative variant: the share of pairs assumed mislabelled (0: plain DPO)
  f.dpo.label_smoothing = 0.0
  return f


def get_config(task: str) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.train.kind = task
  c.finetune = finetune_config(task)
  c.train.steps = 200
  c.loop.log_every = 20
  c.loop.eval_every = 50
  c.loop.checkpoint_every = 100
  c.loop.eval_batches = 0
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 10
  c.optim.weight_decay = 0.0
  c.eval.temperature = 0.0  # held-out responses: greedy
  c.eval.sample_tokens = 64
  if task == 'dpo':
    # Preference tuning moves a model a little from where it starts: a lower rate than
    # supervised tuning (Rafailov et al.: 1e-6 for whole models; adapters take more).
    c.optim.lr = 1e-4
    c.optim.min_lr = 1e-5
  return c
