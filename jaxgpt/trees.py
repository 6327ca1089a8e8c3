"""Parameter trees by path: split into two by a predicate, merge back, count, freeze.

A path is the tuple of dict keys from the root to a leaf, e.g. ('block_3', 'mlp', 'fc_in',
'kernel'), as flax's traverse_util flattens a params dict.
"""

import math

import flax.linen as nn
import jax
from flax import traverse_util


def split(params: dict, keep) -> tuple[dict, dict]:
  """(the leaves whose path `keep` accepts, the others), each a nested dict."""
  flat = traverse_util.flatten_dict(params)
  pick = lambda wanted: traverse_util.unflatten_dict(
    {k: v for k, v in flat.items() if keep(k) == wanted}
  )
  return pick(True), pick(False)


def merge(*trees: dict) -> dict:
  """One nested dict of every leaf of `trees`; a later tree's leaf wins at a shared path."""
  flat = {}
  for tree in trees:
    flat.update(traverse_util.flatten_dict(tree))
  return traverse_util.unflatten_dict(flat)


def count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def map_paths(fn, params: dict) -> dict:
  """fn(path, leaf) at every leaf of a nested dict."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: fn(k, v) for k, v in flat.items()})


def stop_gradient_where(params: dict, frozen) -> dict:
  """params with jax.lax.stop_gradient on the leaves whose path `frozen` accepts: their
  gradients are exact zeros, which XLA never computes."""
  return map_paths(lambda k, v: jax.lax.stop_gradient(v) if frozen(k) else v, params)


def strip_boxes(tree):
  """nn.Partitioned -> its value, without applying sharding constraints."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(
    lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box
  )
