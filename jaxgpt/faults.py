"""What keeps a run safe from faults: stop requests, non-finite losses, changed configs.

The train loop asks these at step boundaries; each failure names the fix.
"""

import json
import signal

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from configs import base as base_config
from jaxgpt import layout
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

  def requested(self, step: int, sync_every: int) -> bool:
    """Whether to stop after this step. All processes must stop at the same step, so with
    several they agree (one all-gather) every `sync_every` steps only, not every step."""
    if jax.process_count() == 1:
      return self.signal is not None
    if step % sync_every:
      return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(self.signal is not None))
    return bool(np.asarray(flags).any())


def stop_non_finite(step: int, last_saved: int | None, skipping: bool):
  """Stops the run at the first non-finite step (unless loop.skip_nonfinite skips it)."""
  if skipping:
    return
  where = (
    f'the latest checkpoint is the last good one (step {last_saved}), and the run resumes from it'
    if last_saved is not None
    else 'no checkpoint was saved before it, so the run starts afresh'
  )
  raise UserError(
    f'the loss or gradient became non-finite at step {step}; stopped without '
    f'saving it: {where}. Lower optim.lr, raise optim.warmup_steps or set '
    '--config.loop.skip_nonfinite=True to skip such updates'
  )


# What a resumed run may change follows from the config's sections (configs/base.py): how a
# step is computed (so a run that ran out of memory resumes with more remat, micro-batches
# or loss chunks; micro-batches also draw dropout's masks per micro-batch), where it runs,
# how the loop reports and saves, evaluation, and how the data preparation runs.
RESUMABLE = (
  *(f'{section}.' for section in base_config.RESUMABLE_SECTIONS),
  *base_config.RESUMABLE_FIELDS,
)

# Fields that moved to their sections (issue 15), and fields added since: a run saved
# before reads as if saved now.
MOVED = {
  **{
    f'model.{k}': f'execution.{k}'
    for k in ('scan_layers', 'remat', 'attention_block', 'loss_chunks')
  },
  'train.micro_batches': 'execution.micro_batches',
  **{
    f'train.{k}': f'loop.{k}'
    for k in (
      'run_steps',
      'log_every',
      'eval_every',
      'eval_batches',
      'checkpoint_every',
      'keep_checkpoints',
      'async_checkpoints',
      'peak_flops',
      'skip_nonfinite',
      'allow_config_change',
    )
  },
  'data.cache_dir': 'data.prep.cache_dir',
  'data.skip_bad_records': 'data.prep.skip_bad_records',
  'finetune.task': 'train.kind',
}
ADDED = {
  'train.kind': 'pretrain',
  'train.z_loss': 0.0,
  'train.label_smoothing': 0.0,
  'model.norm_eps': 1e-5,
  'model.attention_impl': 'auto',
  'model.parametrization': 'sp',
  'model.mup_base_width': 256,
  'model.position': 'learned',
  'model.rope_theta': 10_000.0,
  'model.norm': 'layernorm',
  'model.mlp': 'gelu',
  'model.num_kv_heads': 0,
  'model.qk_norm': False,
  'data.tokenizer.vocab_path': '',
  'data.tokenizer.merges_path': '',
}


# Fields added to the finetune section since fine-tunes were saved: a saved fine-tune's
# config reads with their defaults (a pretraining config has no such section).
ADDED_TO_FINETUNE = {
  'finetune.prompt_field': 'prompt',
  'finetune.chosen_field': 'chosen',
  'finetune.rejected_field': 'rejected',
  'finetune.dpo.beta': 0.1,
  'finetune.dpo.label_smoothing': 0.0,
}


def upgrade(saved: dict) -> dict:
  """A saved config in this version's layout (see MOVED, ADDED and ADDED_TO_FINETUNE)."""
  flat = {MOVED.get(k, k): v for k, v in _flatten(saved).items()}
  added = dict(ADDED)
  if any(k.startswith('finetune.') for k in flat):
    added.update(ADDED_TO_FINETUNE)
  for key, default in added.items():
    flat.setdefault(key, default)
  return traverse_util.unflatten_dict(flat, sep='.')


def _flatten(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = list(value) if isinstance(value, (list, tuple)) else value
  return out


def _changed(now: dict, before: dict) -> list[str]:
  """The keys whose values differ between two flattened configs."""
  return sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))


def check_resumable(config, saved: dict, workdir: str):
  """Refuses to continue a run under a config that would make it a different run."""
  now = _flatten(json.loads(config.to_json()))
  before = _flatten(upgrade(saved))
  differ = [k for k in _changed(now, before) if not k.startswith(RESUMABLE)]
  if differ and not config.loop.allow_config_change:
    changes = '; '.join(f'{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in differ)
    raise UserError(
      f'{workdir} holds a run with a different config ({changes}). Use another '
      '--workdir, or pass --config.loop.allow_config_change=True to resume '
      'it under the new config'
    )


def check_shapes(now: dict, saved: dict | None, config, saved_config: dict, workdir: str):
  """Refuses, whatever loop.allow_config_change says, a config whose train state has other
  shapes than the checkpoint's: no restore could continue such a run. The layer layout
  (execution.scan_layers) may differ: a restore converts it."""
  if saved is not None:
    saved = layout.shapes_as(saved, layout.is_scanned(now))
    if not any(k.startswith('opt_state/') for k in saved):  # params alone: an import
      now = {k: v for k, v in now.items() if not k.startswith('opt_state/')}
  if saved is None or now == saved:
    return
  differ = sorted(set(now) ^ set(saved)) + sorted(
    k for k in set(now) & set(saved) if now[k] != saved[k]
  )
  examples = '; '.join(
    f'{k}: {saved.get(k, "absent")} -> {now.get(k, "absent")}' for k in differ[:3]
  )
  fields = [
    k
    for k in _changed(_flatten(json.loads(config.to_json())), _flatten(upgrade(saved_config)))
    if k.startswith(('model.', 'optim.'))
  ]
  raise UserError(
    f'{workdir} holds a run whose parameters or optimizer state have other shapes '
    f'than this config gives ({len(differ)} arrays, e.g. {examples}), which no '
    f'resume can bridge; the fields that differ: {", ".join(fields) or "none"}. '
    'Use another --workdir for the new shape, or drop those overrides'
  )


# Model fields that change no parameter and no evaluation: evaluation and sampling may set
# them on the command line whatever the run was trained with (as any execution field).
MODEL_EXECUTION = ('dropout', 'attention_impl')
# Of those, the ones that belong to the machine rather than the run: a checkpoint trained
# with splash attention on TPU is evaluated with this machine's choice, not the saved one.
MODEL_LOCAL = ('model.attention_impl',)


def with_saved_model(config, saved: dict, overrides=None):
  """config with the checkpoint's model, for evaluating or sampling it: the model that was
  trained, whatever the config's defaults say. From the command line (`overrides`, the
  dotted keys it set), the data are the run's too, unless data fields were given there;
  a model field given there must agree with the checkpoint unless it is one of
  MODEL_EXECUTION. Called from code (overrides None), the caller's data section stands."""
  given = set(overrides or ())
  saved = upgrade(saved)
  model = saved.get('model', {})
  clash = [
    k
    for k in sorted(model)
    if f'model.{k}' in given
    and k not in MODEL_EXECUTION
    and k in config.model
    and _plain(config.model[k]) != _plain(model[k])
  ]
  if clash:
    pairs = '; '.join(
      f'model.{k}={config.model[k]!r} (the checkpoint has {model[k]!r})' for k in clash
    )
    raise UserError(
      f'{pairs}: evaluation and sampling use the saved model, so drop the '
      'override (only model.' + ', model.'.join(MODEL_EXECUTION) + ' may differ)'
    )
  config = config.copy_and_resolve_references()
  config.unlock()
  for section in ('model',) if overrides is None else ('model', 'data'):
    for key, value in _flatten(saved.get(section, {}), f'{section}.').items():
      if key in given or key in MODEL_LOCAL:
        continue
      _set(config, key, value)
  config.lock()
  return config


def _plain(value):
  return list(value) if isinstance(value, (list, tuple)) else value


def _set(config, dotted: str, value):
  *parents, leaf = dotted.split('.')
  node = config
  for p in parents:
    if p not in node:
      if not dotted.startswith('data.mixture.'):
        return  # a field this version no longer has
      node[p] = ml_collections.ConfigDict()  # a named source of the saved mixture
    node = node[p]
  if leaf not in node and not dotted.startswith('data.mixture.'):
    return
  if isinstance(value, list) and (leaf not in node or isinstance(node[leaf], tuple)):
    value = tuple(value)  # JSON gave a list where the config holds tuples
  node[leaf] = value
