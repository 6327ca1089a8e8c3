"""Causal self-attention: whole sequences, or new tokens over a key/value cache. Shape
letters as in model.py; T is the number of new tokens per row.

Whole sequences have several implementations, chosen by `model.attention_impl`:
- 'einsum' (`causal`): query blocks of two einsums, the float32 softmax between them;
- 'reference' (`reference`): the textbook formula over the whole L x L mask, which the
  others are tested against;
- 'cudnn': cuDNN's fused kernel through `jax.nn.dot_product_attention` (GPU, 16-bit);
- 'splash': the Pallas splash-attention kernel (TPU); see fused_attention.py;
- 'auto': splash on TPU, cuDNN on GPU where they apply, einsum otherwise (`choose`).
All give the same function up to rounding, so a run may change it when it resumes.

Keys and values may have fewer heads (G) than queries (H), grouped-query attention: query
head h reads key/value head h // (H / G), as Llama's `repeat_kv` pairs them. The einsum
and cached paths fold each group's H / G query heads into the query axis, so a group's
keys and values are read once, never copied per query head.
"""

import math

import jax
import jax.numpy as jnp

from jaxgpt.errors import UserError

IMPLS = ('auto', 'einsum', 'reference', 'cudnn', 'splash')
SPLASH_MULTIPLE = 128  # splash tiles the sequence in blocks of a multiple of 128 on TPU


def check_name(impl: str):
  if impl not in IMPLS:
    raise UserError(f'model.attention_impl={impl!r}: use one of {", ".join(IMPLS)}')


def choose(impl: str, platform: str, dtype: str, dropout: float, seq_len: int) -> str:
  """The implementation a config's `impl` runs on `platform`: 'auto' resolved, and an
  explicit choice that cannot run there refused by name (before anything compiles).

  The fused kernels have no attention dropout; cuDNN's flash attention takes 16-bit inputs
  only; splash tiles whole blocks of 128 positions.
  """
  check_name(impl)
  fits_splash = seq_len % SPLASH_MULTIPLE == 0
  if impl == 'auto':
    if dropout == 0 and platform == 'tpu' and fits_splash:
      return 'splash'
    if dropout == 0 and platform == 'gpu' and dtype != 'float32':
      return 'cudnn'
    return 'einsum'
  field = f'model.attention_impl={impl!r}'
  if impl in ('cudnn', 'splash') and dropout:
    raise UserError(
      f'{field} has no attention dropout, and model.dropout={dropout}: set the dropout '
      "to 0 or use attention_impl='einsum'"
    )
  if impl == 'cudnn':
    if platform != 'gpu':
      raise UserError(
        f"{field} runs on GPUs (cuDNN); this run's devices are {platform}: use 'auto', "
        "'einsum' or 'reference'"
      )
    if dtype == 'float32':
      raise UserError(
        f"{field} needs 16-bit inputs (cuDNN's flash attention): set model.dtype to "
        "bfloat16 or float16, or use attention_impl='einsum'"
      )
  if impl == 'splash':
    if not fits_splash:
      raise UserError(
        f'{field} tiles the sequence in blocks of {SPLASH_MULTIPLE}: model.seq_len='
        f"{seq_len} is not a multiple; change it or use attention_impl='einsum'"
      )
  return impl


def repeat_kv(x_BxSxGxK, heads: int):
  """Key/value heads repeated to one per query head (B, S, H, K)."""
  return jnp.repeat(x_BxSxGxK, heads // x_BxSxGxK.shape[2], axis=2)


def reference(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, dropout_fn=lambda w: w, segments_BxL=None):
  """softmax(q k^T / sqrt(K) + mask) v over the whole (L, L) causal mask, in float32,
  with the key/value heads repeated to the query heads."""
  heads = q_BxLxHxK.shape[2]
  k_BxSxHxK, v_BxSxHxK = repeat_kv(k_BxSxGxK, heads), repeat_kv(v_BxSxGxK, heads)
  dtype = v_BxSxHxK.dtype
  q_BxLxHxK, k_BxSxHxK, v_BxSxHxK = (
    x.astype(jnp.float32) for x in (q_BxLxHxK, k_BxSxHxK, v_BxSxHxK)
  )
  logits_BxHxLxS = jnp.einsum('blhk,bshk->bhls', q_BxLxHxK, k_BxSxHxK) / math.sqrt(
    q_BxLxHxK.shape[-1]
  )
  seq_len = q_BxLxHxK.shape[1]
  mask_BxHxLxS = jnp.tril(jnp.ones((seq_len, seq_len), bool))[None, None]
  if segments_BxL is not None:
    mask_BxHxLxS = mask_BxHxLxS & (segments_BxL[:, None, :, None] == segments_BxL[:, None, None])
  weights_BxHxLxS = jax.nn.softmax(jnp.where(mask_BxHxLxS, logits_BxHxLxS, -1e30), axis=-1)
  out_BxLxHxK = jnp.einsum('bhls,bshk->blhk', dropout_fn(weights_BxHxLxS), v_BxSxHxK)
  return out_BxLxHxK.astype(dtype)


def self_attention(
  impl, q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, block, dropout_fn, segments_BxL, platform
):
  """Causal attention of a whole sequence by `impl` (resolved by `choose`)."""
  if impl == 'reference':
    return reference(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, dropout_fn, segments_BxL)
  if impl in ('cudnn', 'splash'):
    from jaxgpt import fused_attention  # Pallas' TPU modules load only where splash runs

    if impl == 'cudnn':  # takes fewer key/value heads as they are
      return fused_attention.cudnn(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segments_BxL)
    heads = q_BxLxHxK.shape[2]
    out_BxLxHxK = fused_attention.splash(
      q_BxLxHxK,
      repeat_kv(k_BxLxGxK, heads),
      repeat_kv(v_BxLxGxK, heads),
      segments_BxL,
      interpret=platform != 'tpu',
    )
    if out_BxLxHxK is not None:
      return out_BxLxHxK
  return causal(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, block, dropout_fn, segments_BxL)


def _group(x_BxHxQxK, groups: int):
  """(B, H, Q, K) -> (B, G, R*Q, K): each group's R = H / G query heads side by side along
  the query axis (head h is group h // R, row r = h % R)."""
  b, h, q, k = x_BxHxQxK.shape
  return x_BxHxQxK.reshape(b, groups, (h // groups) * q, k)


def _ungroup(x_BxGxRQxK, heads: int):
  b, g, rq, k = x_BxGxRQxK.shape
  return x_BxGxRQxK.reshape(b, heads, rq * g // heads, k)


def causal(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, block: int, dropout_fn, segments_BxL=None):
  """Softmax(q k^T / sqrt(K)) v under a causal mask, in query blocks of `block`.

  The products run with heads ahead of positions (B, H, L, K): XLA's CPU backend runs
  those batched matmuls 2-3x faster than with heads inside (B, L, H, K). A query block
  only reads the keys up to its own end, so fully masked key blocks above the diagonal are
  never computed. Logits and softmax are float32 whatever the compute dtype. With
  `segments_BxL` (packed sequences) a token also attends only within its own segment.
  With G < H key/value heads, a block's queries are grouped (`_group`) against them.
  """
  q_BxHxLxK, k_BxGxSxK, v_BxGxSxK = (
    x.transpose(0, 2, 1, 3) for x in (q_BxLxHxK, k_BxSxGxK, v_BxSxGxK)
  )
  heads, seq_len = q_BxHxLxK.shape[1], q_BxHxLxK.shape[2]
  groups = k_BxGxSxK.shape[1]
  per_group = heads // groups
  block = block or seq_len
  scale = 1.0 / math.sqrt(q_BxHxLxK.shape[-1])
  out_blocks = []
  for start in range(0, seq_len, block):
    end = start + block
    q_BxGxRQxK = _group(q_BxHxLxK[:, :, start:end], groups)
    logits_BxGxRQxS = (
      jnp.einsum(
        'bgqk,bgsk->bgqs', q_BxGxRQxK, k_BxGxSxK[:, :, :end], preferred_element_type=jnp.float32
      )
      * scale
    )
    q_pos = jnp.tile(jnp.arange(start, end), per_group)[:, None]
    k_pos = jnp.arange(end)[None, :]
    # A large finite negative rather than -inf keeps fully masked rows NaN-free.
    mask_RQxS = k_pos <= q_pos
    if segments_BxL is not None:
      q_seg_BxRQ = jnp.tile(segments_BxL[:, start:end], (1, per_group))
      same_Bx1xRQxS = q_seg_BxRQ[:, None, :, None] == segments_BxL[:, None, None, :end]
      mask_RQxS = mask_RQxS & same_Bx1xRQxS
    logits_BxGxRQxS = jnp.where(mask_RQxS, logits_BxGxRQxS, -1e30)
    # Softmax with the normalisation moved after the product with v: dividing the
    # (B, G, RQ, K) output costs K/S of dividing the (B, G, RQ, S) weights. Dropout is
    # elementwise, so dropping unnormalised weights gives the same result.
    max_BxGxRQx1 = jax.lax.stop_gradient(logits_BxGxRQxS.max(axis=-1, keepdims=True))
    weights_BxGxRQxS = jnp.exp(logits_BxGxRQxS - max_BxGxRQx1)
    total_BxGxRQx1 = weights_BxGxRQxS.sum(axis=-1, keepdims=True)
    out_BxGxRQxK = jnp.einsum(
      'bgqs,bgsk->bgqk',
      dropout_fn(weights_BxGxRQxS).astype(v_BxGxSxK.dtype),
      v_BxGxSxK[:, :, :end],
      preferred_element_type=jnp.float32,
    )
    out_BxGxRQxK = (out_BxGxRQxK / total_BxGxRQx1).astype(v_BxGxSxK.dtype)
    out_blocks.append(_ungroup(out_BxGxRQxK, heads))
  out_BxHxLxK = jnp.concatenate(out_blocks, axis=2) if len(out_blocks) > 1 else out_blocks[0]
  return out_BxHxLxK.transpose(0, 2, 1, 3)


def cached(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, cache, lengths_B):
  """Attention of T new tokens per row over a key/value cache, which it updates.

  `cache` is (k_BxGxSxK, v_BxGxSxK); row b holds lengths_B[b] valid positions and its new
  tokens take the next T. Each row writes at its own offset, so prompts of different
  lengths share one batch; positions past a row's end are masked out, and whatever a
  padded prefill wrote there is overwritten as the row grows. The cost of a call is that
  of attending to all S slots, whatever the lengths: flat per generated token.
  """
  put = lambda c_GxSxK, x_GxTxK, i: jax.lax.dynamic_update_slice(c_GxSxK, x_GxTxK, (0, i, 0))
  write = lambda c, x_BxTxGxK: jax.vmap(put)(
    c, x_BxTxGxK.transpose(0, 2, 1, 3).astype(c.dtype), lengths_B
  )
  k_cache_BxGxSxK, v_cache_BxGxSxK = write(cache[0], k_BxTxGxK), write(cache[1], v_BxTxGxK)
  heads, new = q_BxTxHxK.shape[2], q_BxTxHxK.shape[1]
  groups = k_cache_BxGxSxK.shape[1]
  q_BxGxRTxK = _group(q_BxTxHxK.transpose(0, 2, 1, 3), groups)
  scale = 1.0 / math.sqrt(q_BxTxHxK.shape[-1])
  logits_BxGxRTxS = (
    jnp.einsum('bgtk,bgsk->bgts', q_BxGxRTxK, k_cache_BxGxSxK, preferred_element_type=jnp.float32)
    * scale
  )
  q_pos_BxRT = jnp.tile(lengths_B[:, None] + jnp.arange(new), (1, heads // groups))
  k_pos_S = jnp.arange(k_cache_BxGxSxK.shape[2])
  logits_BxGxRTxS = jnp.where(k_pos_S <= q_pos_BxRT[:, None, :, None], logits_BxGxRTxS, -1e30)
  # The same float32 softmax, normalised after the product with v, as causal.
  max_BxGxRTx1 = logits_BxGxRTxS.max(axis=-1, keepdims=True)
  weights_BxGxRTxS = jnp.exp(logits_BxGxRTxS - max_BxGxRTx1)
  total_BxGxRTx1 = weights_BxGxRTxS.sum(axis=-1, keepdims=True)
  out_BxGxRTxK = jnp.einsum(
    'bgts,bgsk->bgtk',
    weights_BxGxRTxS.astype(v_cache_BxGxSxK.dtype),
    v_cache_BxGxSxK,
    preferred_element_type=jnp.float32,
  )
  out_BxGxRTxK = (out_BxGxRTxK / total_BxGxRTx1).astype(v_cache_BxGxSxK.dtype)
  out_BxHxTxK = _ungroup(out_BxGxRTxK, heads)
  return out_BxHxTxK.transpose(0, 2, 1, 3), (k_cache_BxGxSxK, v_cache_BxGxSxK)
