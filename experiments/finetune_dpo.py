"""Tune a pretrained or instruction-tuned jaxgpt run on preference pairs with DPO.

    python run.py --config=experiments/finetune_dpo.py --workdir=runs/dpo \
        --config.finetune.base_workdir=runs/default \
        --config.finetune.train_path=pairs.jsonl [--config.finetune.dpo.beta=0.1]

Records (JSON or JSONL) hold a `prompt`, a `chosen` and a `rejected` response; or an
`instruction` with an optional `input` (put in the Alpaca templates, as the instruction
fine-tune does) and the two responses. The base is a pretraining run, or an instruction
fine-tune's merged model (`--mode=export` writes it to WORKDIR/merged; name that directory).

The reference is the starting point, frozen: its log-probs of every pair are computed once
before training (no second copy of the model). Only response tokens count. While training
it logs the held-out pairs' DPO loss, reward accuracy and reward margin; at the end it
writes the held-out prompts' responses before and after to WORKDIR/generations.jsonl.
`--config.finetune.dpo.label_smoothing=0.1` gives the conservative variant.
`--mode=export` merges the adapters into a plain checkpoint, as for instructions.
"""

from configs import base, finetune


def get_config(arg=None):
  base.no_argument(arg, 'experiments/finetune_dpo.py')
  c = finetune.get_config('dpo')
  c.train.batch_size = 8
  c.lock()
  return c
