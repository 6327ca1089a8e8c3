"""Validation loss, perplexity and bits per UTF-8 byte.

Bits per byte divide the summed loss by the bytes the target tokens stand for (from the
tokenizer's per-id byte table), so runs with different tokenizers compare fairly.
"""
import math

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P


def token_nll(logits_BxLxV, targets_BxL):
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)


def make_eval_step(model):
  def eval_step(params, batch, byte_table_V):
    logits_BxLxV = model.apply({'params': params}, batch['inputs'], deterministic=True)
    weights_BxL = batch['weights']
    nll_BxL = token_nll(logits_BxLxV, batch['targets'])
    return {'nll': (nll_BxL * weights_BxL).sum(), 'tokens': weights_BxL.sum(),
            'bytes': (byte_table_V[batch['targets']] * weights_BxL).sum()}
  return eval_step


def summarize(totals: dict) -> dict:
  loss = totals['nll'] / max(totals['tokens'], 1.0)
  return {'loss': loss, 'perplexity': math.exp(min(loss, 700.0)),
          'bits_per_byte': totals['nll'] / max(totals['bytes'], 1.0) / math.log(2),
          'tokens': totals['tokens']}


def evaluate(eval_step, params, batches, byte_table_V, to_global) -> dict:
  """Sums the step's outputs over `batches` (host float64) and summarizes them."""
  totals = {'nll': 0.0, 'tokens': 0.0, 'bytes': 0.0}
  for batch in batches:
    out = jax.device_get(eval_step(params, to_global(batch), byte_table_V))
    for k in totals:
      totals[k] += float(out[k])
  return summarize(totals)


def make_jitted_eval_step(model, state_param_shardings, batch_sharding):
  replicated = NamedSharding(batch_sharding.mesh, P())
  return jax.jit(make_eval_step(model), in_shardings=(state_param_shardings, batch_sharding,
                                                      replicated), out_shardings=replicated)


def byte_table(tokenizer, vocab_size):
  return jnp.asarray(tokenizer.byte_lengths(vocab_size), jnp.float32)
