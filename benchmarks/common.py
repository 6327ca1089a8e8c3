"""Shared pieces of the benchmarks: a config from the default experiment, timing, tables."""

import json
import statistics
import time

import jax

from experiments import default
from jaxgpt import model as model_lib
from jaxgpt import sharding
from jaxgpt import runstate
from jaxgpt.data import synthetic


def model_config(layers, heads, width, seq_len, batch, vocab=8192, **model):
  """The default experiment with another model shape, on one device."""
  c = default.get_config()
  c.model.num_layers, c.model.num_heads, c.model.d_model = layers, heads, width
  c.model.seq_len, c.train.batch_size = seq_len, batch
  c.data.tokenizer.vocab_size = vocab
  c.mesh.shape.data = 1
  for k, v in model.items():
    c['execution' if k in c.execution else 'model'][k] = v
  return c


def setup(config, devices=None):
  devices = devices or jax.devices()[:1]
  mesh = sharding.make_mesh(config.mesh, devices)
  cfg = model_lib.ModelConfig.from_config(config, config.data.tokenizer.vocab_size)
  return runstate.pretraining(config, cfg, mesh)


def random_batch(config, vocab, seed=0):
  """A batch of config's shape (see synthetic.random_batch)."""
  return synthetic.random_batch(config.train.batch_size, config.model.seq_len, vocab, seed)


def time_calls(fn, repeats, warmup=2):
  """Median and all wall times of fn() (which must block), after warmup calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def matmul_peak(sizes=(1024, 2048), repeats=10) -> float:
  """Best float32 FLOP/s over square matmuls: the denominator of MFU here."""
  best = 0.0
  for n in sizes:
    a = jax.numpy.ones((n, n), jax.numpy.float32)
    f = jax.jit(lambda x: x @ x)
    med, _ = time_calls(lambda: f(a).block_until_ready(), repeats)
    best = max(best, 2 * n**3 / med)
  return best


def print_table(rows, columns):
  widths = [max(len(str(c)), *(len(str(r[c])) for r in rows)) for c in columns]
  print(' | '.join(f'{c:>{w}}' for c, w in zip(columns, widths)))
  print('-+-'.join('-' * w for w in widths))
  for r in rows:
    print(' | '.join(f'{str(r[c]):>{w}}' for c, w in zip(columns, widths)))


def write_json(path, payload):
  with open(path, 'w') as f:
    json.dump(payload, f, indent=2)
  print(f'wrote {path}')
