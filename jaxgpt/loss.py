"""The next-token loss: cross-entropy of the model's logits, with optional z-loss and label
smoothing (config.train).

`next_token_loss` is what pretraining and instruction tuning minimise and evaluation
reports; `cross_entropy_sum` is the formula, whole logits at once. With
execution.loss_chunks > 1 the same loss runs chunked (chunked_loss.py), for vocabularies whose
(B, L, V) logits are the largest arrays of the step.
"""

import jax
import jax.numpy as jnp

from jaxgpt import chunked_loss
from jaxgpt import model as model_lib


def next_token_loss(
  model, params, batch, *, rng=None, z_loss: float = 0.0, label_smoothing: float = 0.0
):
  """(summed loss over batch['weights'], summed weights). Packed rows carry segments and
  positions; an `rng` turns dropout on."""
  inputs = dict(
    segments_BxL=batch.get('segments'),
    positions_BxL=batch.get('positions'),
    deterministic=rng is None,
  )
  rngs = None if rng is None else {'dropout': rng}
  cfg = model.cfg
  if cfg.loss_chunks == 1:
    logits_BxLxV = model.apply({'params': params}, batch['inputs'], **inputs, rngs=rngs)
    total = cross_entropy_sum(
      logits_BxLxV, batch['targets'], batch['weights'], z_loss, label_smoothing, cfg.valid_vocab
    )
  else:
    h_BxLxD = model.apply({'params': params}, batch['inputs'], **inputs, rngs=rngs, method='hidden')
    total = chunked_loss.nll_sum(
      h_BxLxD,
      model_lib.output_table(cfg, params),
      batch['targets'],
      batch['weights'],
      cfg.loss_chunks,
      cfg.dtype,
      z_loss,
      label_smoothing,
      cfg.valid_vocab,
    )
  return total, batch['weights'].sum()


def cross_entropy_sum(
  logits_BxLxV,
  targets_BxL,
  weights_BxL,
  z_loss: float = 0.0,
  label_smoothing: float = 0.0,
  valid_vocab: int = 0,
):
  """Sum over positions of weights * (-sum_v q_v log softmax(logits)_v + z_loss * logZ^2),
  where q is the one-hot target smoothed toward uniform over the valid ids (below
  valid_vocab, or all when 0) by label_smoothing, in float32. Padding ids' logits come
  masked (model.mask_padding)."""
  vocab = logits_BxLxV.shape[-1]
  valid = valid_vocab or vocab
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  logz_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  logp_BxLxV = logits_BxLxV - logz_BxL[..., None]
  # The target as a one-hot product rather than a gather: it partitions over a
  # vocab-sharded axis, where a gather would collect the logits on one device.
  uniform_V = (jnp.arange(vocab) < valid) / valid
  q_BxLxV = jax.nn.one_hot(targets_BxL, vocab) * (1 - label_smoothing) + label_smoothing * uniform_V
  loss_BxL = -(q_BxLxV * logp_BxLxV).sum(axis=-1) + z_loss * logz_BxL**2
  return (loss_BxL * weights_BxL).sum()
