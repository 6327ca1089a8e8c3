"""What keeps a run safe from faults: stop requests, non-finite losses, changed configs.

The train loop asks these at step boundaries; each failure names the fix.
"""
import json
import signal

import jax
import numpy as np

from jaxgpt.errors import UserError


class StopRequest:
  """SIGTERM/SIGINT while training: finish the step, save, and return cleanly."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, _frame):
    self.signal = signal.Signals(signum).name

  def __exit__(self, *_):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self) -> bool:
    """Whether any process was asked to stop (all processes must stop at the same step)."""
    if jax.process_count() == 1:
      return self.signal is not None
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.int32(self.signal is not None))
    return bool(np.asarray(flags).any())


def check_finite(first_bad, last_saved):
  bad = int(first_bad)
  if bad >= 0:
    raise UserError(f'the loss or gradient became non-finite at step {bad}; stopped without '
                    f'saving it, so the latest checkpoint is the last good one (step '
                    f'{last_saved}). Lower optim.lr, raise optim.warmup_steps or set '
                    '--config.train.skip_nonfinite=True to skip such updates')


# Fields a resumed run may change: how it reports and saves, where it runs, and the knobs
# that trade memory for time without changing the params or the loss (up to rounding), so
# a run that ran out of memory resumes with more remat, micro-batches or loss chunks.
# (Micro-batches also draw dropout's masks per micro-batch.) Runs saved before
# model.loss_chunks existed resume too.
RESUMABLE_CHANGES = ('train.run_steps', 'train.log_every', 'train.eval_every',
                     'train.eval_batches', 'train.checkpoint_every', 'train.keep_checkpoints',
                     'train.async_checkpoints', 'train.peak_flops', 'train.skip_nonfinite',
                     'train.allow_config_change', 'data.cache_dir', 'data.skip_bad_records',
                     'data.prep.', 'eval.', 'mesh.', 'model.loss_chunks', 'model.remat',
                     'model.attention_block', 'train.micro_batches')


def _flatten(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = list(value) if isinstance(value, (list, tuple)) else value
  return out


def check_resumable(config, saved: dict, workdir: str):
  """Refuses to continue a run under a config that would make it a different run."""
  now = _flatten(json.loads(config.to_json()))
  before = _flatten(saved)
  differ = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k)
                  and not k.startswith(RESUMABLE_CHANGES))
  if differ and not config.train.allow_config_change:
    changes = '; '.join(f'{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in differ)
    raise UserError(f'{workdir} holds a run with a different config ({changes}). Use another '
                    '--workdir, or pass --config.train.allow_config_change=True to resume '
                    'it under the new config')
