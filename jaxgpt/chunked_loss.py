"""The opt-in chunked next-token loss (execution's loss_chunks > 1): loss.py's cross-entropy
from final hidden states, with logits made a chunk of positions at a time.

Shape letters as in model.py; C is the number of chunks and Q = L / C positions per chunk.

With C chunks the (B, L, V) logits are never whole: each chunk's logits are made, turned
into its loss and into the gradients of that loss with respect to the hidden states and
the output table, and dropped. The forward pass keeps (B, L, D) and (V, D) gradients for
the backward pass instead of the (B, L, V) logits, which for a 50k vocabulary are the
largest arrays of the step. Taking the gradients in the forward pass is possible because
the loss is a weighted sum, the last thing before the scalar: the backward pass only
scales them by the incoming cotangent. The three products are those of the plain loss,
so no FLOPs are added. On this repository's CPU the step runs at the same speed as with
whole logits; a tiny model with an 8k vocabulary needs 1/4 of the temporaries at C = 8.
Evaluation takes the same loss without a gradient (a chunk's logits and its loss only),
and task scoring each position's log-probability of its target (`token_logp`).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgpt import model as model_lib


LOGITS_AXES = ('batch', 'length', 'vocab')


def nll_sum(
  h_BxLxD,
  table_VxD,
  targets_BxL,
  weights_BxL,
  chunks: int = 1,
  dtype=jnp.float32,
  z_loss: float = 0.0,
  label_smoothing: float = 0.0,
  valid_vocab: int = 0,
):
  """loss.cross_entropy_sum of the logits h table^T (ids from valid_vocab on masked as
  padding), made `chunks` chunks of positions at a time: the same value and gradients, in
  float32.

  The products run in `dtype` with float32 results; the softmax is float32. Called
  without a gradient (evaluation), only the loss is made; under `jax.grad` the chunks
  also make their gradients (below).
  """
  objective = (float(z_loss), float(label_smoothing), int(valid_vocab))
  return _nll_sum(h_BxLxD, table_VxD, targets_BxL, weights_BxL, chunks, jnp.dtype(dtype), objective)


# One chunk runs as a scan of length 1 too: inlined into the step, XLA's CPU backend ran
# it 1.4x slower. The table is cast to the compute dtype once, not once per chunk.
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _nll_sum(h_BxLxD, table_VxD, targets_BxL, weights_BxL, chunks, dtype, objective):
  """Without a gradient: each chunk's logits and loss only."""
  compute_table_VxD = table_VxD.astype(dtype)

  def body(total, chunk):
    h_BxQxD, targets_BxQ, weights_BxQ = chunk
    loss, _ = _chunk_loss(h_BxQxD, compute_table_VxD, targets_BxQ, weights_BxQ, dtype, objective)
    return total + loss, None

  xs = _split(chunks, h_BxLxD, targets_BxL, weights_BxL.astype(jnp.float32))
  return jax.lax.scan(body, jnp.float32(0), xs)[0]


def _fwd(h_BxLxD, table_VxD, targets_BxL, weights_BxL, chunks, dtype, objective):
  """The loss, and its gradients for h and the table as the residuals."""
  compute_table_VxD = table_VxD.astype(dtype)

  def body(acc, chunk):
    h_BxQxD, targets_BxQ, weights_BxQ = chunk
    loss, dh_BxQxD, dtable_DxV = _chunk(
      h_BxQxD, compute_table_VxD, targets_BxQ, weights_BxQ, dtype, objective
    )
    return (acc[0] + loss, acc[1] + dtable_DxV), dh_BxQxD

  xs = _split(chunks, h_BxLxD, targets_BxL, weights_BxL.astype(jnp.float32))
  zeros = (jnp.float32(0), jnp.zeros(table_VxD.shape[::-1], jnp.float32))
  (loss, dtable_DxV), dh_CxBxQxD = jax.lax.scan(body, zeros, xs)
  dh_BxLxD = _join(dh_CxBxQxD, h_BxLxD.shape[1])
  return loss, (dh_BxLxD.astype(h_BxLxD.dtype), dtable_DxV.T.astype(table_VxD.dtype))


def _bwd(chunks, dtype, objective, residuals, g):
  dh_BxLxD, dtable_VxD = residuals
  return g * dh_BxLxD, g * dtable_VxD, None, None


_nll_sum.defvjp(_fwd, _bwd)


def _chunk_logits(h_BxQxD, table_VxD, targets_BxQ, dtype, valid_vocab):
  """One chunk's logits (padding ids masked), their logsumexp and one-hot targets, and each
  position's target logit.

  `table_VxD` comes already in the compute dtype. The products run on (B*Q, D) operands,
  which XLA's CPU backend runs faster than (B, Q, D).
  """
  vocab, d = table_VxD.shape
  h_MxD = h_BxQxD.reshape(-1, d).astype(dtype)
  logits_MxV = jnp.einsum('md,vd->mv', h_MxD, table_VxD, preferred_element_type=jnp.float32)
  logits_BxQxV = nn.with_logical_constraint(
    model_lib.mask_padding(logits_MxV.reshape(*h_BxQxD.shape[:2], vocab), valid_vocab), LOGITS_AXES
  )
  lse_BxQx1 = jax.nn.logsumexp(logits_BxQxV, axis=-1, keepdims=True)
  # The target's logit as a masked sum: it partitions over a vocab-sharded axis, where
  # an indexed gather would collect the logits on one device.
  onehot_BxQxV = jax.nn.one_hot(targets_BxQ, vocab, dtype=jnp.float32)
  target_BxQ = (logits_BxQxV * onehot_BxQxV).sum(axis=-1)
  return h_MxD, logits_BxQxV, lse_BxQx1, onehot_BxQxV, target_BxQ


def _chunk_loss(h_BxQxD, table_VxD, targets_BxQ, weights_BxQ, dtype, objective):
  """One chunk's weighted loss sum, and the pieces its gradients are made from.

  With smoothing s the target distribution is (1 - s) onehot + s uniform (over the valid
  ids), so a position's loss is lse - (1 - s) target logit - s mean(valid logits) (+ z lse^2
  with the z-loss).
  """
  z_loss, smoothing, valid_vocab = objective
  h_MxD, logits_BxQxV, lse_BxQx1, onehot_BxQxV, target_BxQ = _chunk_logits(
    h_BxQxD, table_VxD, targets_BxQ, dtype, valid_vocab
  )
  lse_BxQ = lse_BxQx1[..., 0]
  loss_BxQ = lse_BxQ - (1 - smoothing) * target_BxQ
  if smoothing:
    loss_BxQ = loss_BxQ - smoothing * (logits_BxQxV * _uniform(logits_BxQxV, valid_vocab)).sum(-1)
  if z_loss:
    loss_BxQ = loss_BxQ + z_loss * lse_BxQ**2
  return (loss_BxQ * weights_BxQ).sum(), (h_MxD, logits_BxQxV, lse_BxQx1, onehot_BxQxV)


def _chunk(h_BxQxD, table_VxD, targets_BxQ, weights_BxQ, dtype, objective):
  """One chunk's weighted loss sum, its gradient for h and its (D, V) gradient for the table."""
  z_loss, smoothing, valid_vocab = objective
  loss, (h_MxD, logits_BxQxV, lse_BxQx1, onehot_BxQxV) = _chunk_loss(
    h_BxQxD, table_VxD, targets_BxQ, weights_BxQ, dtype, objective
  )
  vocab = table_VxD.shape[0]
  # d loss / d logits = weights * (softmax (1 + 2 z lse) - target distribution), the
  # softmax made again from the logits rather than kept from the sum above: one (B, Q, V)
  # array fewer.
  softmax_BxQxV = jnp.exp(logits_BxQxV - lse_BxQx1)
  if z_loss:
    softmax_BxQxV = softmax_BxQxV * (1 + 2 * z_loss * lse_BxQx1)
  target_dist_BxQxV = (1 - smoothing) * onehot_BxQxV
  if smoothing:
    target_dist_BxQxV = target_dist_BxQxV + smoothing * _uniform(logits_BxQxV, valid_vocab)
  dlogits_BxQxV = (softmax_BxQxV - target_dist_BxQxV) * weights_BxQ[..., None]
  dlogits_MxV = dlogits_BxQxV.reshape(-1, vocab).astype(dtype)
  dh_MxD = jnp.einsum('mv,vd->md', dlogits_MxV, table_VxD, preferred_element_type=jnp.float32)
  # (D, V) rather than (V, D): XLA's CPU backend ran this product ~20% faster that way.
  dtable_DxV = jnp.einsum('md,mv->dv', h_MxD, dlogits_MxV, preferred_element_type=jnp.float32)
  return loss, dh_MxD.reshape(h_BxQxD.shape), dtable_DxV


def _uniform(logits_BxQxV, valid_vocab):
  """The uniform distribution over the valid ids, broadcastable to the logits."""
  vocab = logits_BxQxV.shape[-1]
  valid = valid_vocab or vocab
  return (jnp.arange(vocab) < valid).astype(jnp.float32) / valid


def token_logp(
  h_BxLxD, table_VxD, targets_BxL, chunks: int = 1, dtype=jnp.float32, valid_vocab: int = 0
):
  """Each position's log-probability of its target, and whether the target is the most
  likely token there (a tie counts), from logits made a chunk of positions at a time;
  ids from valid_vocab on are padding, never likely."""
  xs = _split(chunks, h_BxLxD, targets_BxL)
  compute_table_VxD = table_VxD.astype(dtype)

  def body(_, chunk):
    h_BxQxD, targets_BxQ = chunk
    _, logits_BxQxV, lse_BxQx1, _, target_BxQ = _chunk_logits(
      h_BxQxD, compute_table_VxD, targets_BxQ, dtype, valid_vocab
    )
    greedy_BxQ = target_BxQ >= logits_BxQxV.max(axis=-1)
    return None, (target_BxQ - lse_BxQx1[..., 0], greedy_BxQ)

  _, (logp_CxBxQ, greedy_CxBxQ) = jax.lax.scan(body, None, xs)
  length = h_BxLxD.shape[1]
  return _join(logp_CxBxQ, length), _join(greedy_CxBxQ, length)


def _split(chunks, *xs_BxL):
  """Each (B, L, ...) array as (C, B, Q, ...) chunks of positions. A length that chunks do
  not divide is padded with zeros: zero-weight positions, which add nothing to a loss or a
  gradient. Chunks split the length axis, so each keeps the batch's sharding."""
  pad = -xs_BxL[0].shape[1] % chunks
  pad_fn = lambda x: jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
  split = lambda x: x.reshape(x.shape[0], chunks, -1, *x.shape[2:]).swapaxes(0, 1)
  return tuple(split(pad_fn(x) if pad else x) for x in xs_BxL)


def _join(x_CxBxQ, length):
  """The inverse of `_split`: (B, L, ...) without the padding."""
  x_BxCxQ = x_CxBxQ.swapaxes(0, 1)
  return x_BxCxQ.reshape(x_BxCxQ.shape[0], -1, *x_BxCxQ.shape[3:])[:, :length]
