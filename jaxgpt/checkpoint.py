"""Orbax checkpoints of everything a run needs to continue exactly where it stopped.

Each step directory holds four items: the train state (sharded arrays, written by every
process), the grain iterator state (one small file per process), the config (JSON) and
the tokenizer (its model file, base64 in JSON). Orbax writes a step under a
temporary name and renames it when complete, so a killed save never looks like a
checkpoint; with async saving the arrays are copied off the devices and written in the
background while training goes on.
"""

import base64
import logging
import os

import grain
import jax
import orbax.checkpoint as ocp

from jaxgpt import layout
from jaxgpt.data import tokenizer as tokenizer_lib
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')
# The files each item of a step must have; what a damaged step lacks is named from these.
_ITEM_FILES = {'state': '_METADATA', 'config': 'metadata', 'tokenizer': 'metadata'}


class Checkpointer:
  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, config, tokenizer, force=False) -> bool:
    items = dict(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(config.to_dict()),
      tokenizer=ocp.args.JsonSave(
        {'sha256': tokenizer.sha256, 'model': base64.b64encode(tokenizer.proto).decode()}
      ),
    )
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state onto the shardings `abstract_state` carries, and the iterator.
    A state saved with the other layer layout (execution.scan_layers) is converted."""

    def restore_fn(target):
      items = dict(state=ocp.args.StandardRestore(target))
      if data_iterator is not None and self.has_data(step):
        items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
      return self.manager.restore(step, args=ocp.args.Composite(**items))['state']

    return layout.restore(restore_fn, abstract_state, self.saved_shapes(step, quiet=True))

  def restore_params(self, step: int, abstract_params):
    """Only the params of a saved state (no optimizer moments), onto the shardings that
    `abstract_params` carries: what a fine-tune or an evaluation needs of a run."""

    def restore_fn(target):
      restore_args = ocp.checkpoint_utils.construct_restore_args({'params': target})
      args = ocp.args.PyTreeRestore(
        item={'params': target}, restore_args=restore_args, partial_restore=True
      )
      # A manager of its own: Orbax binds an item to the handler it first used, and this
      # manager saves the state with StandardSave (a run resumed from params alone).
      reader = ocp.CheckpointManager(self.directory)
      try:
        return reader.restore(step, args=ocp.args.Composite(state=args))['state']['params']
      finally:
        reader.close()

    return layout.restore(restore_fn, abstract_params, self.saved_shapes(step, quiet=True))

  def restore_json(self, step: int, item: str) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[
      item
    ]

  def has_optimizer(self, step: int) -> bool:
    """Whether a step holds the optimizer state; an imported model's step 0 holds params
    alone (its moments would be zeros)."""
    saved = self.saved_shapes(step, quiet=True)
    return saved is None or any(k.startswith('opt_state/') for k in saved)

  def has_data(self, step: int) -> bool:
    return os.path.isdir(os.path.join(self.directory, str(step), 'data'))

  def missing(self, step: int, with_data: bool) -> list[str]:
    """The files of a step's items that are not there. A step 0 saved without the data
    iterator (an imported model) needs none: its data start from the beginning."""
    root = os.path.join(self.directory, str(step))
    want = [os.path.join(root, item, name) for item, name in _ITEM_FILES.items()]
    if with_data and (step > 0 or self.has_data(step)):
      n = jax.process_count()
      want.append(os.path.join(root, 'data', f'process_{jax.process_index()}-of-{n}.json'))
    return [p for p in want if not os.path.exists(p)]

  def newest_intact(self, restore, with_data: bool, set_aside: bool):
    """(step, restore(step)) for the newest step that restores. A damaged step is skipped
    with a warning naming what is wrong, and with `set_aside` renamed to STEP.damaged so
    that training can save that step again; when no step restores, the error names the
    damaged files. restore's own UserErrors (a refused config, say) pass through."""
    damaged = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      missing = self.missing(step, with_data)
      try:
        if missing:
          raise FileNotFoundError(f'missing {", ".join(missing)}')
        return step, restore(step)
      except UserError:
        raise
      except Exception as e:  # what a truncated or missing file raises varies by library
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        damaged.append(f'step {step}: {reason}')
        log.warning('checkpoint step %d is damaged and was skipped (%s)', step, reason)
        if set_aside and jax.process_index() == 0:
          path = os.path.join(self.directory, str(step))
          os.replace(path, path + '.damaged')
          self.manager.reload()
          log.warning('moved it to %s.damaged', path)
    if damaged:
      raise UserError(
        f'no intact checkpoint in {self.directory}: {"; ".join(damaged)}. Restore '
        'those files, or move the checkpoints away to start the run afresh'
      )
    return None, None

  def saved_shapes(self, step: int, quiet: bool = False) -> dict | None:
    """{'params/block_0/...': shape} of a step's train state, from its metadata alone; None
    when the metadata does not read (the restore then finds the step damaged)."""
    reader = ocp.CheckpointManager(
      self.directory, item_handlers={'state': ocp.StandardCheckpointHandler()}
    )
    try:
      return shapes(reader.item_metadata(step)['state'])
    except Exception as e:  # noqa: BLE001 (what a damaged file raises varies)
      if not quiet:
        log.warning('could not read the shapes saved at step %d: %s', step, e)
      return None
    finally:
      reader.close()

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def load_tokenizer(checkpointer: Checkpointer, step: int) -> tokenizer_lib.Tokenizer:
  """The tokenizer a checkpoint was trained with, from its own item."""
  item = checkpointer.restore_json(step, 'tokenizer')
  return tokenizer_lib.from_bytes(base64.b64decode(item['model']))


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def shapes(tree) -> dict:
  """{'a/b/0/c': shape} for the arrays of a tree (states, metadata trees alike)."""
  return {
    '/'.join(_key_name(k) for k in path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs that tell Orbax where each restored array goes."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings
  )
