"""The best learning rate across widths, under the standard parametrization and under
muP (model.parametrization='mup'): 4 widths x 6 learning rates x both, on a 2-core CPU
in about 20 minutes.

    python run.py --config=experiments/mup.py --workdir=runs/mup --mode=sweep

Widths 32 to 256 with 4 heads each (muP's base: 32, where both are the same model), 2
layers, 300 steps of 16 x 64 tokens from the standard library (the default experiment's
corpus). It prints each width's best learning rate and plots loss against learning rate
(WORKDIR/lr_width.png); the committed results are in experiments/mup_results/.
"""

from configs import base
from jaxgpt import sweep

STUDY = 'lr_width'  # what --mode=sweep concludes with: the best learning rate per width
WIDTHS = (32, 64, 128, 256)
LRS = tuple(2.0**-k for k in range(10, 4, -1))  # 1e-3 to 3e-2, a factor of 2 apart
STEPS = 300


def get_config(arg=None):
  base.no_argument(arg, 'experiments/mup.py')
  c = base.get_config()
  c.data.profile = 'code'
  c.data.tokenizer.vocab_size = 1024
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.seq_len = 64
  c.model.mup_base_width = 32
  c.train.batch_size = 16
  c.train.steps = STEPS
  c.optim.warmup_steps = 30
  c.loop.log_every = 50
  c.loop.eval_every = STEPS
  c.loop.checkpoint_every = STEPS
  c.loop.keep_checkpoints = 1
  c.loop.eval_batches = 16
  c.eval.num_samples = 0
  c.lock()
  return c


def get_sweep(arg=None):
  return [
    sweep.Run(
      f'{kind}-w{width}-lr{sweep.short(lr)}',
      {
        'model.parametrization': kind,
        'model.d_model': width,
        'optim.lr': lr,
        'optim.min_lr': lr / 10,
      },
    )
    for kind in ('sp', 'mup')
    for width in WIDTHS
    for lr in LRS
  ]
