"""Scanned and unrolled layers: a train state in one param layout, restored into the other.

With execution.scan_layers the decoder's blocks are one 'blocks' subtree whose arrays have
a leading layer axis; without, N subtrees 'block_0' ... 'block_{N-1}'. Scanning is an
execution choice (compile time against step time), so a checkpoint saved in one layout
restores into the other: the restore target is made in the saved layout, restored, and
converted. The conversion applies to every dict that holds the blocks: the params, and
the optimizer's moments, which mirror them.
"""

import re

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

_BLOCK = re.compile(r'block_(\d+)$')


def is_scanned(shapes: dict) -> bool:
  """Whether a {'a/b/c': shape} dict (checkpoint.shapes) is in the scanned layout."""
  return any('/blocks/' in f'/{k}/' for k in shapes)


def shapes_as(shapes: dict, scanned: bool) -> dict:
  """A {'a/block_3/b': shape} dict in the other layout, if it is not in `scanned`'s."""
  if is_scanned(shapes) == scanned:
    return shapes
  out, layers = {}, {}
  for key, shape in shapes.items():
    parts = key.split('/')
    if scanned and any(_BLOCK.match(p) for p in parts):
      i = next(j for j, p in enumerate(parts) if _BLOCK.match(p))
      merged = '/'.join([*parts[:i], 'blocks', *parts[i + 1 :]])
      layers[merged] = layers.get(merged, 0) + 1
      out[merged] = tuple(shape)
    elif not scanned and 'blocks' in parts:
      i = parts.index('blocks')
      for n in range(shape[0]):
        out['/'.join([*parts[:i], f'block_{n}', *parts[i + 1 :]])] = tuple(shape[1:])
    else:
      out[key] = tuple(shape)
  for key, n in layers.items():
    out[key] = (n, *out[key])
  return out


def convert(tree, scanned: bool, stack, unstack):
  """`tree` with every dict of blocks in the scanned (or unrolled) layout: stack(leaves)
  joins the layers' leaves, unstack(leaf, i) takes layer i's."""

  def holds_blocks(x):
    return isinstance(x, dict) and ('block_0' in x if scanned else 'blocks' in x)

  def relayout(x):
    if not holds_blocks(x):
      return x
    out = {k: v for k, v in x.items() if k != 'blocks' and not _BLOCK.match(k)}
    if scanned:
      n = sum(bool(_BLOCK.match(k)) for k in x)
      out['blocks'] = jax.tree.map(
        lambda *leaves: stack(leaves), *[x[f'block_{i}'] for i in range(n)]
      )
    else:
      n = jax.tree.leaves(x['blocks'])[0].shape[0]
      for i in range(n):
        out[f'block_{i}'] = jax.tree.map(lambda a, i=i: unstack(a, i), x['blocks'])
    return out

  return jax.tree.map(relayout, tree, is_leaf=holds_blocks)


def abstract_as(abstract, scanned: bool):
  """A restore target (ShapeDtypeStructs with shardings) in the scanned or unrolled layout;
  a stacked array keeps its layers whole on every device."""

  def stack(leaves):
    a = leaves[0]
    spec = P(None, *a.sharding.spec) if isinstance(a.sharding, NamedSharding) else None
    sharding = NamedSharding(a.sharding.mesh, spec) if spec is not None else a.sharding
    return jax.ShapeDtypeStruct((len(leaves), *a.shape), a.dtype, sharding=sharding)

  def unstack(a, _):
    sharding = a.sharding
    if isinstance(sharding, NamedSharding):
      sharding = NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))
    return jax.ShapeDtypeStruct(a.shape[1:], a.dtype, sharding=sharding)

  return convert(abstract, scanned, stack, unstack)


def restore(restore_fn, abstract, saved_shapes: dict | None):
  """restore_fn(target) for a checkpoint saved in either layout, returned in abstract's
  layout on abstract's shardings."""
  want = any(
    getattr(k, 'key', None) == 'blocks'
    for path, _ in jax.tree_util.tree_leaves_with_path(abstract)
    for k in path
  )
  if saved_shapes is None or is_scanned(saved_shapes) == want:
    return restore_fn(abstract)
  restored = restore_fn(abstract_as(abstract, not want))
  converted = convert(restored, want, jnp.stack, lambda a, i: a[i])
  return jax.device_put(converted, jax.tree.map(lambda a: a.sharding, abstract))
