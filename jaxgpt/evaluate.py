"""Validation loss, perplexity and bits per UTF-8 byte; classification metrics.

Bits per byte divide the summed loss by the bytes the target tokens stand for (from the
tokenizer's per-id byte table), so runs with different tokenizers compare fairly.
"""

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgpt import loss as loss_lib
from jaxgpt import sharding
from jaxgpt.data import loader

log = logging.getLogger('jaxgpt')


def make_eval_step(model):
  def eval_step(params, batch, byte_table_V):
    # The train step's loss without its regularisers, chunked the same way: evaluation's
    # logits take no more memory than training's.
    nll, _ = loss_lib.next_token_loss(model, params, batch)
    weights_BxL = batch['weights']
    return {
      'nll': nll,
      'tokens': weights_BxL.sum(),
      'bytes': (byte_table_V[batch['targets']] * weights_BxL).sum(),
    }

  return eval_step


def summarize(totals: dict) -> dict:
  loss = totals['nll'] / max(totals['tokens'], 1.0)
  return {
    'loss': loss,
    'perplexity': math.exp(min(loss, 700.0)),
    'bits_per_byte': totals['nll'] / max(totals['bytes'], 1.0) / math.log(2),
    'tokens': totals['tokens'],
  }


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
  return jax.jit(
    make_eval_step(model),
    in_shardings=(state_param_shardings, batch_sharding, replicated),
    out_shardings=replicated,
  )


def make_evaluator(config, run, prepared, writer):
  """run_eval(params, step): validation loss, perplexity and bits per byte, logged; called
  under run.context()."""
  tc, lc, seq_len = config.train, config.loop, run.model.cfg.seq_len
  eval_step = make_jitted_eval_step(
    run.model, run.state_shardings.params, sharding.batch_sharding(run.mesh)
  )
  table_V = byte_table(prepared.tokenizer, run.model.cfg.vocab_size)

  def run_eval(params, step):
    batches = loader.eval_batches(
      prepared, seq_len, tc.batch_size, lc.eval_batches, jax.process_index(), jax.process_count()
    )
    result = evaluate(
      eval_step, params, batches, table_V, lambda b: sharding.global_batch(b, run.mesh)
    )
    writer.write(step, 'eval', result)
    log.info(
      'eval step %d | loss %.4f | ppl %.2f | bits/byte %.4f',
      step,
      result['loss'],
      result['perplexity'],
      result['bits_per_byte'],
    )
    return result

  return run_eval


def byte_table(tokenizer, vocab_size):
  return jnp.asarray(tokenizer.byte_lengths(vocab_size), jnp.float32)


def classification_loss_and_accuracy(logits_NxC, labels_N) -> dict:
  logits_NxC = np.asarray(logits_NxC, np.float64)
  logz_N = np.log(np.exp(logits_NxC - logits_NxC.max(-1, keepdims=True)).sum(-1)) + logits_NxC.max(
    -1
  )
  nll_N = logz_N - logits_NxC[np.arange(len(labels_N)), labels_N]
  return {
    'loss': float(nll_N.mean()),
    'accuracy': float((logits_NxC.argmax(-1) == labels_N).mean()),
  }


def classification_report(labels_N, predicted_N, names: list[str]) -> dict:
  """Accuracy (± standard error), per-class precision, recall and F1, and the confusion
  matrix (rows: true class, columns: predicted)."""
  labels_N, predicted_N = np.asarray(labels_N), np.asarray(predicted_N)
  c = len(names)
  confusion = np.zeros((c, c), np.int64)
  np.add.at(confusion, (labels_N, predicted_N), 1)
  per_class = {}
  for i, name in enumerate(names):
    tp = confusion[i, i]
    precision = tp / max(confusion[:, i].sum(), 1)
    recall = tp / max(confusion[i].sum(), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    per_class[name] = {
      'precision': float(precision),
      'recall': float(recall),
      'f1': float(f1),
      'support': int(confusion[i].sum()),
    }
  n = len(labels_N)
  accuracy = float((labels_N == predicted_N).mean()) if n else 0.0
  return {
    'accuracy': accuracy,
    'accuracy_stderr': math.sqrt(accuracy * (1 - accuracy) / (n - 1)) if n > 1 else 0.0,
    'macro_f1': float(np.mean([v['f1'] for v in per_class.values()])),
    'examples': n,
    'per_class': per_class,
    'confusion': confusion.tolist(),
  }
