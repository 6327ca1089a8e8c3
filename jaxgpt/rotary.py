"""Rotary position embeddings (Su et al. 2021), as Llama and GPT-NeoX apply them.

Each head's dimensions pair up as (i, i + K/2), the "rotate half" layout of Hugging Face's
Llama (Meta's original interleaves pairs (2i, 2i + 1): the same function of permuted
weights). Pair i turns by position * theta^(-2i/K), so a query and a key meet at an angle
that depends only on how far apart they are.
"""

import jax.numpy as jnp


def rotate(x_BxLxHxK, positions_BxL, theta: float):
  """x with each position's pairs rotated; the angles are computed in float32."""
  half = x_BxLxHxK.shape[-1] // 2
  inv_freq_F = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_BxLx1xF = (positions_BxL.astype(jnp.float32)[:, :, None, None]) * inv_freq_F
  cos_BxLx1xF, sin_BxLx1xF = jnp.cos(angles_BxLx1xF), jnp.sin(angles_BxLx1xF)
  x1_BxLxHxF = x_BxLxHxK[..., :half].astype(jnp.float32)
  x2_BxLxHxF = x_BxLxHxK[..., half:].astype(jnp.float32)
  out_BxLxHxK = jnp.concatenate(
    [
      x1_BxLxHxF * cos_BxLx1xF - x2_BxLxHxF * sin_BxLx1xF,
      x2_BxLxHxF * cos_BxLx1xF + x1_BxLxHxF * sin_BxLx1xF,
    ],
    axis=-1,
  )
  return out_BxLxHxK.astype(x_BxLxHxK.dtype)
