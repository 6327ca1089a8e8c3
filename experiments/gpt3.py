"""GPT-3 model shapes (Brown et al. 2020, table 2.1) on the configured corpus.

    python run.py --config=experiments/gpt3.py:125m --workdir=runs/gpt3-125m

Presets: 125m, 350m, 760m, 1.3b, 2.7b, 6.7b. These are sized for accelerators: on a CPU use
them to check shapes and parameter counts, or shrink seq_len and steps on the command line.
"""
from configs import base, models


def get_config(arg='125m'):
  arg = arg or '125m'
  if arg not in models.GPT3:
    raise KeyError(f'unknown GPT-3 preset {arg!r}; choose one of {", ".join(models.GPT3)}')
  c = models.apply(base.get_config(), models.GPT3[arg])
  c.model.dtype = 'bfloat16'
  c.data.tokenizer.vocab_size = 32768
  c.train.batch_size = 256
  c.train.steps = 100_000
  c.train.log_every = 100
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  c.optim.lr = 6e-4
  c.optim.min_lr = 6e-5
  c.optim.warmup_steps = 2000
  c.mesh.shape.data, c.mesh.shape.fsdp = 1, -1
  c.lock()
  return c
