"""A scaling study that runs on a 2-core CPU: IsoFLOP curves (5 FLOP budgets x 6 widths,
32k to 560k parameters), Chinchilla's approaches 2 and 3, and a prediction checked
against a run at 4x the largest budget.

    python run.py --config=experiments/scaling.py --workdir=runs/scaling --mode=sweep

The corpus is the Python sources of the installed packages (site-packages: jax, torch,
scipy, ...; 366 MB of .py files here): no network, and enough tokens (136M) that no run
sees any twice. Each run trains in WORKDIR/runs/NAME from one shared token store
(WORKDIR/data); the table, fits, plots and check land in WORKDIR. The committed results
are in experiments/scaling_results/. They took about 75 minutes here on 2026-12-02, a slow
day; the four smaller budgets alone took 36. `--sweep_launch=commands` or `=slurm` hands
the same runs to a cluster; `--mode=fit` tabulates and fits whatever has finished.
"""

import sysconfig

from configs import base
from jaxgpt import sweep

WIDTHS = (16, 24, 32, 48, 64, 96)
BUDGETS = (5e11, 1e12, 2e12, 4e12, 8e12)  # training FLOPs, 6ND plus attention
CHECK_FACTOR = 4.0


def get_config(arg=None):
  base.no_argument(arg, 'experiments/scaling.py')
  c = base.get_config()
  c.data.source = 'files'
  c.data.paths = (sysconfig.get_paths()['purelib'],)
  c.data.extensions = ('.py',)
  c.data.profile = 'code'
  c.data.prep.skip_bad_records = True  # a few test files in site-packages are not UTF-8
  c.data.tokenizer.vocab_size = 1024
  c.model.vocab_size = 1024  # known before the data, so each run's N is
  c.model.num_layers = 4
  c.model.seq_len = 128
  c.execution.attention_block = 64
  c.train.batch_size = 16
  c.optim.lr = 3e-3
  c.optim.min_lr = 3e-4
  c.loop.keep_checkpoints = 1
  c.loop.eval_batches = 32
  c.eval.num_samples = 0  # no samples: a sweep is about its losses
  c.lock()
  return c


def size(width: int) -> dict:
  """A model of this width: 4 layers, heads of 16 dimensions (one below 32)."""
  return {'model.d_model': width, 'model.num_heads': max(1, width // 16)}


def per_run(steps: int) -> dict:
  """What scales with a run's length: warmup, and 4 evaluations and checkpoints."""
  return {
    'optim.warmup_steps': max(1, steps // 10),
    'loop.log_every': max(1, steps // 20),
    'loop.eval_every': -(-steps // 4),
    'loop.checkpoint_every': -(-steps // 4),
  }


def get_sweep(arg=None):
  sizes = {f'w{w}': size(w) for w in WIDTHS}
  return sweep.isoflop(get_config(arg), sizes, BUDGETS, per_run, min_steps=30)


def get_check(arg=None):
  widths = (16, 24, 32, 40, 48, 64, 80, 96, 128)
  return sweep.Check(CHECK_FACTOR, {f'w{w}': size(w) for w in widths}, per_run)
