"""Causal self-attention over (B, H, L, K) arrays: whole sequences, or new tokens over a
key/value cache. Shape letters as in model.py; T is the number of new tokens per row.
"""

import math

import jax
import jax.numpy as jnp


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
