"""The default experiment: a small GPT on the Python standard library, on a laptop CPU.

    python run.py --config=experiments/default.py --workdir=runs/default

Builds the corpus from the running interpreter's standard library (no network), trains a
BPE tokenizer, a 4-layer GPT for a few minutes, evaluates it and prints samples. Running
the same command again resumes from the latest checkpoint.
"""

from configs import base


def get_config(arg=None):
  base.no_argument(arg, 'experiments/default.py')
  c = base.get_config()
  c.data.profile = 'code'  # the standard library is code: prose rules would drop it all
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.d_model = 256
  c.model.seq_len = 128
  c.execution.attention_block = 64  # skip fully masked key blocks: faster on CPU
  c.train.batch_size = 16
  c.train.steps = 800
  c.loop.log_every = 50
  c.loop.eval_every = 200
  c.loop.checkpoint_every = 200
  c.eval.prompt = 'import os\n\n\ndef '
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.lock()
  return c
