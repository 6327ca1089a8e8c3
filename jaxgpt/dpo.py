"""Direct Preference Optimization (Rafailov et al. 2023): the objective of preference pairs.

A pair is a prompt with a chosen and a rejected response. With the implicit reward
r(y) = beta * (log pi(y|x) - log pi_ref(y|x)), each log-probability summed over the
response's tokens, a pair's loss is -log sigmoid(r(chosen) - r(rejected)). The conservative
variant (label smoothing eps: Mitchell's cDPO note, as TRL has it) takes a share eps of the
labels to be flipped: -(1 - eps) log sigmoid(z) - eps log sigmoid(-z).

Batches hold pairs as rows of two (B x 2 x L: [:, 0] chosen, [:, 1] rejected) and the
reference's summed log-probs (B x 2), computed once from the frozen starting point before
training (`reference_logps`): no second copy of the model is held, and the reference is
the same at every step by construction.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgpt import sharding
from jaxgpt.data import finetune_data as fdata
from jaxgpt.data import loader


def sequence_logps(logits_BxLxV, targets_BxL, weights_BxL):
  """Per row: the sum over weighted positions (the response's) of log p(target), float32."""
  logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  picked_BxL = jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  return (picked_BxL * weights_BxL).sum(axis=-1)


def pair_logps(model, params, batch, rng=None):
  """(B, 2): each pair's summed response log-probs under `model` with `params` (chosen
  first); an `rng` turns dropout on."""
  pairs, _, seq_len = batch['inputs'].shape
  rows = lambda x: x.reshape(2 * pairs, seq_len)
  logits_2BxLxV = model.apply(
    {'params': params},
    rows(batch['inputs']),
    deterministic=rng is None,
    rngs=None if rng is None else {'dropout': rng},
  )
  logps_2B = sequence_logps(logits_2BxLxV, rows(batch['targets']), rows(batch['weights']))
  return logps_2B.reshape(pairs, 2)


def pair_losses(logps_Bx2, reference_Bx2, beta: float, label_smoothing: float = 0.0):
  """(loss_B, chosen reward_B, rejected reward_B) of each pair."""
  rewards_Bx2 = beta * (logps_Bx2 - reference_Bx2)
  chosen_B, rejected_B = rewards_Bx2[:, 0], rewards_Bx2[:, 1]
  z_B = chosen_B - rejected_B
  loss_B = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z_B)
  loss_B = loss_B - label_smoothing * jax.nn.log_sigmoid(-z_B)
  return loss_B, chosen_B, rejected_B


def _real_pairs(batch):
  """1 for a pair, 0 for the zero-weight rows that pad an evaluation's last batch."""
  return (batch['weights'].sum(axis=(1, 2)) > 0).astype(jnp.float32)


def loss(model, params, batch, rng, beta: float, label_smoothing: float):
  """(summed loss, pairs): what the fine-tune's step minimises, per pair on average."""
  real_B = _real_pairs(batch)
  loss_B, _, _ = pair_losses(
    pair_logps(model, params, batch, rng), batch['reference'], beta, label_smoothing
  )
  return (loss_B * real_B).sum(), real_B.sum()


def sums(logps_Bx2, reference_Bx2, real_B, beta: float, label_smoothing: float) -> dict:
  """Summed over real pairs: loss, reward accuracy (chosen above rejected), margin and
  each reward; `summarize` divides by the pairs."""
  loss_B, chosen_B, rejected_B = pair_losses(logps_Bx2, reference_Bx2, beta, label_smoothing)
  return {
    'loss': (loss_B * real_B).sum(),
    'reward_accuracy': ((chosen_B > rejected_B) * real_B).sum(),
    'reward_margin': ((chosen_B - rejected_B) * real_B).sum(),
    'chosen_reward': (chosen_B * real_B).sum(),
    'rejected_reward': (rejected_B * real_B).sum(),
    'pairs': real_B.sum(),
  }


def summarize(totals: dict) -> dict:
  pairs = max(totals['pairs'], 1.0)
  return {
    **{k: v / pairs for k, v in totals.items() if k != 'pairs'},
    'pairs': int(totals['pairs']),
  }


def batch_shapes(seq_len: int, batch_size: int) -> dict:
  """A batch of pairs: what the fine-tune's loader yields."""
  rows = (batch_size, 2, seq_len)
  return {
    'inputs': (rows, jnp.int32),
    'targets': (rows, jnp.int32),
    'weights': (rows, jnp.float32),
    'reference': ((batch_size, 2), jnp.float32),
  }


def make_eval_fn(model, mesh, beta: float, label_smoothing: float):
  """jitted (params, batch) -> `sums` of a batch of pairs, replicated."""

  def eval_fn(params, batch):
    logps_Bx2 = pair_logps(model, params, batch)
    return sums(logps_Bx2, batch['reference'], _real_pairs(batch), beta, label_smoothing)

  return jax.jit(
    eval_fn,
    in_shardings=(None, sharding.batch_sharding(mesh)),
    out_shardings=NamedSharding(mesh, P()),
  )


def evaluate(eval_fn, params, arrays: dict, batch_size: int, mesh) -> dict:
  """The pairs' mean loss, reward accuracy, margin and rewards (host float64 sums)."""
  totals = {}
  for batch in _batches(arrays, batch_size):
    out = jax.device_get(eval_fn(params, sharding.global_batch(batch, mesh)))
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return summarize(totals)


def _batches(arrays: dict, batch_size: int):
  return loader.ordered_batches(
    fdata.ArraySource(arrays, 'pairs'),
    batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def make_logps_fn(model, mesh):
  """jitted (params, batch) -> (B, 2) log-probs, replicated so every process reads them."""
  return jax.jit(
    functools.partial(pair_logps, model),
    in_shardings=(None, sharding.batch_sharding(mesh)),
    out_shardings=NamedSharding(mesh, P()),
  )


def reference_logps(logps_fn, params, arrays: dict, batch_size: int, mesh) -> np.ndarray:
  """(n, 2) summed response log-probs of every pair in `arrays` under `params`: the frozen
  reference's, computed once."""
  out = []
  for batch in _batches(arrays, batch_size):
    out.append(np.asarray(logps_fn(params, sharding.global_batch(batch, mesh))))
  n = len(arrays['inputs'])
  return np.concatenate(out)[:n].astype(np.float32)
