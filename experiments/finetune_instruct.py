"""Fine-tune a pretrained jaxgpt run to follow instructions (Alpaca-style data).

    python run.py --config=experiments/finetune_instruct.py --workdir=runs/instruct \
        --config.finetune.base_workdir=runs/default \
        --config.finetune.train_path=instructions.jsonl [--config.finetune.packed=True]

Records hold an instruction, an optional input and an output (JSON or JSONL). The loss
counts the response tokens only, each response ends with the end-of-document id, and the
held-out loss is logged during training. After training, the held-out prompts' generated
responses are written to WORKDIR/responses.jsonl beside the references.
`--mode=export` writes the model with LoRA adapters merged into WORKDIR/merged, a plain
checkpoint that `--mode=sample` and `--mode=eval` read.
"""

from configs import base, finetune


def get_config(arg=None):
  base.no_argument(arg, 'experiments/finetune_instruct.py')
  c = finetune.get_config('instruct')
  c.train.batch_size = 8
  c.lock()
  return c
