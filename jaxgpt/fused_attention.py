"""Fused attention kernels: cuDNN's on GPU, Pallas' splash attention on TPU.

Both take and return (B, L, H, K) like attention.causal, causal and, with `segments_BxL`,
within each packed segment. Neither materialises the (L, L) scores, which at 2048
positions is what the einsum path spends most of its memory on.
"""

import math

import flax.linen as nn
import jax

from jaxgpt import sharding

BLOCKS = (512, 256, 128)  # splash's tile along the sequence: the largest that divides it


def cudnn(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segments_BxL=None, implementation='cudnn'):
  """`jax.nn.dot_product_attention` by cuDNN's flash attention (16-bit inputs; GPU).

  `implementation='xla'` runs the same call through XLA's own lowering, which is how CPU
  tests check the layout, scale and masks handed to the kernel.
  """
  mask_Bx1xLxL = None
  if segments_BxL is not None:
    mask_Bx1xLxL = segments_BxL[:, None, :, None] == segments_BxL[:, None, None, :]
  return jax.nn.dot_product_attention(
    q_BxLxHxK,
    k_BxLxHxK,
    v_BxLxHxK,
    mask=mask_Bx1xLxL,
    is_causal=True,
    implementation=implementation,
  )


def _splash_kernel(heads: int, seq_len: int, block: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

  mask = masks.MultiHeadMask([masks.CausalMask((seq_len, seq_len))] * heads)
  sizes = kernel.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  # Built in each trace that needs it (its mask tables become that trace's constants);
  # jax caches the mask processing itself.
  splash = kernel.make_splash_mha(
    mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
  )
  return splash, kernel.SegmentIds


def splash(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segments_BxL=None, interpret=False):
  """Splash attention, or None where these shapes cannot take it (the caller then runs the
  einsum path): a length that no block divides, or a batch or head count that its mesh
  axes do not divide (as the one-row batch that initialises the params).

  Mosaic kernels are not partitioned by XLA, so on a mesh the kernel runs inside
  `shard_map`, each device on its own rows and heads: the batch and heads are split as the
  logical rules split them, the sequence and head dim whole (a length axis split by the
  rules is gathered first).
  """
  batch, seq_len, heads, head_dim = q_BxLxHxK.shape
  block = next((b for b in BLOCKS if seq_len % b == 0), 0)
  if not block:
    return None
  mesh = jax.sharding.get_abstract_mesh()
  spec = None
  if not mesh.empty:
    spec = nn.logical_to_mesh_axes(('batch', None, 'heads', None))
    if batch % sharding.axes_size(mesh, spec[0]) or heads % sharding.axes_size(mesh, spec[2]):
      return None
  local_heads = heads // (sharding.axes_size(mesh, spec[2]) if spec else 1)
  kernel, segment_ids = _splash_kernel(local_heads, seq_len, block, interpret)
  scale = 1.0 / math.sqrt(head_dim)

  def rows(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segments_BxL):
    q_BxHxLxK, k_BxHxLxK, v_BxHxLxK = (
      x.transpose(0, 2, 1, 3) for x in (q_BxLxHxK * scale, k_BxLxHxK, v_BxLxHxK)
    )
    if segments_BxL is None:
      out_BxHxLxK = jax.vmap(kernel)(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK)
    else:
      one_row = lambda q, k, v, s: kernel(q, k, v, segment_ids=segment_ids(q=s, kv=s))
      out_BxHxLxK = jax.vmap(one_row)(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, segments_BxL)
    return out_BxHxLxK.transpose(0, 2, 1, 3)

  if spec is None:
    return rows(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segments_BxL)
  rows_spec = jax.sharding.PartitionSpec(spec[0], None)
  return jax.shard_map(
    rows,
    in_specs=(spec, spec, spec, None if segments_BxL is None else rows_spec),
    out_specs=spec,
    check_vma=False,
  )(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segments_BxL)
