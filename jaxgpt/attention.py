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


def reference(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, dropout_fn=lambda w: w, segments_BxL=None):
  """softmax(q k^T / sqrt(K) + mask) v over the whole (L, L) causal mask, in float32."""
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
  impl, q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, block, dropout_fn, segments_BxL, platform
):
  """Causal attention of a whole sequence by `impl` (resolved by `choose`)."""
  if impl == 'reference':
    return reference(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, dropout_fn, segments_BxL)
  if impl in ('cudnn', 'splash'):
    from jaxgpt import fused_attention  # Pallas' TPU modules load only where splash runs

    if impl == 'cudnn':
      return fused_attention.cudnn(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segments_BxL)
    out_BxLxHxK = fused_attention.splash(
      q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segments_BxL, interpret=platform != 'tpu'
    )
    if out_BxLxHxK is not None:
      return out_BxLxHxK
  return causal(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, block, dropout_fn, segments_BxL)


def causal(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, block: int, dropout_fn, segments_BxL=None):
  """Softmax(q k^T / sqrt(K)) v under a causal mask, in query blocks of `block`.

  The products run with heads ahead of positions (B, H, L, K): XLA's CPU backend runs
  those batched matmuls 2-3x faster than with heads inside (B, L, H, K). A query block
  only reads the keys up to its own end, so fully masked key blocks above the diagonal are
  never computed. Logits and softmax are float32 whatever the compute dtype. With
  `segments_BxL` (packed sequences) a token also attends only within its own segment.
  """
  q_BxHxLxK, k_BxHxSxK, v_BxHxSxK = (
    x.transpose(0, 2, 1, 3) for x in (q_BxLxHxK, k_BxSxHxK, v_BxSxHxK)
  )
  seq_len = q_BxHxLxK.shape[2]
  block = block or seq_len
  scale = 1.0 / math.sqrt(q_BxHxLxK.shape[-1])
  out_blocks = []
  for start in range(0, seq_len, block):
    end = start + block
    logits_BxHxQxS = (
      jnp.einsum(
        'bhqk,bhsk->bhqs',
        q_BxHxLxK[:, :, start:end],
        k_BxHxSxK[:, :, :end],
        preferred_element_type=jnp.float32,
      )
      * scale
    )
    q_pos = jnp.arange(start, end)[:, None]
    k_pos = jnp.arange(end)[None, :]
    # A large finite negative rather than -inf keeps fully masked rows NaN-free.
    mask_QxS = k_pos <= q_pos
    if segments_BxL is not None:
      same_Bx1xQxS = segments_BxL[:, None, start:end, None] == segments_BxL[:, None, None, :end]
      mask_QxS = mask_QxS & same_Bx1xQxS
    logits_BxHxQxS = jnp.where(mask_QxS, logits_BxHxQxS, -1e30)
    # Softmax with the normalisation moved after the product with v: dividing the
    # (B, H, Q, K) output costs K/S of dividing the (B, H, Q, S) weights. Dropout is
    # elementwise, so dropping unnormalised weights gives the same result.
    max_BxHxQx1 = jax.lax.stop_gradient(logits_BxHxQxS.max(axis=-1, keepdims=True))
    weights_BxHxQxS = jnp.exp(logits_BxHxQxS - max_BxHxQx1)
    total_BxHxQx1 = weights_BxHxQxS.sum(axis=-1, keepdims=True)
    out_BxHxQxK = jnp.einsum(
      'bhqs,bhsk->bhqk',
      dropout_fn(weights_BxHxQxS).astype(v_BxHxSxK.dtype),
      v_BxHxSxK[:, :, :end],
      preferred_element_type=jnp.float32,
    )
    out_blocks.append((out_BxHxQxK / total_BxHxQx1).astype(v_BxHxSxK.dtype))
  out_BxHxLxK = jnp.concatenate(out_blocks, axis=2) if len(out_blocks) > 1 else out_blocks[0]
  return out_BxHxLxK.transpose(0, 2, 1, 3)


def cached(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, cache, lengths_B):
  """Attention of T new tokens per row over a key/value cache, which it updates.

  `cache` is (k_BxHxSxK, v_BxHxSxK); row b holds lengths_B[b] valid positions and its new
  tokens take the next T. Each row writes at its own offset, so prompts of different
  lengths share one batch; positions past a row's end are masked out, and whatever a
  padded prefill wrote there is overwritten as the row grows. The cost of a call is that
  of attending to all S slots, whatever the lengths: flat per generated token.
  """
  put = lambda c_HxSxK, x_HxTxK, i: jax.lax.dynamic_update_slice(c_HxSxK, x_HxTxK, (0, i, 0))
  write = lambda c, x_BxTxHxK: jax.vmap(put)(
    c, x_BxTxHxK.transpose(0, 2, 1, 3).astype(c.dtype), lengths_B
  )
  k_cache_BxHxSxK, v_cache_BxHxSxK = write(cache[0], k_BxTxHxK), write(cache[1], v_BxTxHxK)
  q_BxHxTxK = q_BxTxHxK.transpose(0, 2, 1, 3)
  scale = 1.0 / math.sqrt(q_BxHxTxK.shape[-1])
  logits_BxHxTxS = (
    jnp.einsum('bhtk,bhsk->bhts', q_BxHxTxK, k_cache_BxHxSxK, preferred_element_type=jnp.float32)
    * scale
  )
  q_pos_Bx1xTx1 = (lengths_B[:, None] + jnp.arange(q_BxHxTxK.shape[2]))[:, None, :, None]
  k_pos_S = jnp.arange(k_cache_BxHxSxK.shape[2])
  logits_BxHxTxS = jnp.where(k_pos_S <= q_pos_Bx1xTx1, logits_BxHxTxS, -1e30)
  # The same float32 softmax, normalised after the product with v, as causal.
  max_BxHxTx1 = logits_BxHxTxS.max(axis=-1, keepdims=True)
  weights_BxHxTxS = jnp.exp(logits_BxHxTxS - max_BxHxTx1)
  total_BxHxTx1 = weights_BxHxTxS.sum(axis=-1, keepdims=True)
  out_BxHxTxK = jnp.einsum(
    'bhts,bhsk->bhtk',
    weights_BxHxTxS.astype(v_cache_BxHxSxK.dtype),
    v_cache_BxHxSxK,
    preferred_element_type=jnp.float32,
  )
  out_BxHxTxK = (out_BxHxTxK / total_BxHxTx1).astype(v_cache_BxHxSxK.dtype)
  return out_BxHxTxK.transpose(0, 2, 1, 3), (k_cache_BxHxSxK, v_cache_BxHxSxK)
