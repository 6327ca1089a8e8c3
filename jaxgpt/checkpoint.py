"""Orbax checkpoints of everything a run needs to continue exactly where it stopped.

Each step directory holds four items: the train state (sharded arrays, written by every
process), the grain iterator state (one small file per process), the config (JSON) and
the tokenizer (its SentencePiece model, base64 in JSON). Orbax writes a step under a
temporary name and renames it when complete, so a killed save never looks like a
checkpoint; with async saving the arrays are copied off the devices and written in the
background while training goes on.
"""
import base64
import os

import grain
import jax
import orbax.checkpoint as ocp

from jaxgpt.data import tokenizer as tokenizer_lib


class Checkpointer:

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, config, tokenizer, force=False) -> bool:
    items = dict(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(config.to_dict()),
        tokenizer=ocp.args.JsonSave({'sha256': tokenizer.sha256,
                                     'model': base64.b64encode(tokenizer.proto).decode()}))
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state onto the shardings `abstract_state` carries, and the iterator."""
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored['state']

  def restore_params(self, step: int, abstract_params):
    """Only the params of a saved state (no optimizer moments), onto the shardings that
    `abstract_params` carries: what a fine-tune or an evaluation needs of a run."""
    restore_args = ocp.checkpoint_utils.construct_restore_args({'params': abstract_params})
    args = ocp.args.PyTreeRestore(item={'params': abstract_params}, restore_args=restore_args,
                                  partial_restore=True)
    return self.manager.restore(step, args=ocp.args.Composite(state=args))['state']['params']

  def restore_json(self, step: int, item: str) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.JsonRestore()}))[item]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def load_tokenizer(checkpointer: Checkpointer, step: int) -> tokenizer_lib.Tokenizer:
  """The tokenizer a checkpoint was trained with, from its own item."""
  item = checkpointer.restore_json(step, 'tokenizer')
  return tokenizer_lib.Tokenizer(base64.b64decode(item['model']))


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs that tell Orbax where each restored array goes."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)
