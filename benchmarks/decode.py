"""Decode throughput with and without the KV cache, at 128, 512 and 1024 new tokens.

    python benchmarks/decode.py [--batch=4] [--repeats=3] [--json=benchmarks/decode.json]

The model is the default experiment's (4 layers, width 256, vocab 8192) with a context of
1088 tokens, so a 32-token prompt and 1024 new tokens fit in one window. Without the cache
every new token runs the model over the whole prefix (padded to a multiple of 64); with
it, a prefill and then one token per row per step. Both draw the same tokens (temperature
1, a fixed seed, no end-of-document stop), and the compilations happen before timing.
The last column is the cached path of the same model with scan_layers=True (the large
presets' setting), whose layers update one stacked cache.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxgpt import hugepages  # noqa: E402

hugepages.ensure()  # before jax loads; see jaxgpt/hugepages.py

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from jaxgpt import generate  # noqa: E402

NEW_TOKENS = (128, 512, 1024)
PROMPT, CONTEXT = 32, 1088


def _timed(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times)), out


def _warm_up(gen, batch):
  """Compiles the uncached forward for every window width it will meet, and the cached
  prefill and decode loop, so that no compile time lands in a measurement."""
  for width in range(64, CONTEXT + 1, 64):
    tokens = gen._global(np.zeros((batch, width), np.int32))
    last = gen._global(np.zeros(batch, np.int32))
    gen._forward(gen.params, tokens, last, 0).block_until_ready()
  gen.generate([[5] * PROMPT] * batch)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', default=os.path.join(os.path.dirname(__file__), 'decode.json'))
  args = parser.parse_args()

  config = common.model_config(4, 4, 256, CONTEXT, args.batch)
  s = common.setup(config)
  params = s.init_state(0).params
  scanned = common.setup(common.model_config(4, 4, 256, CONTEXT, args.batch, scan_layers=True))
  scanned_params = scanned.init_state(0).params
  prompts = np.random.default_rng(0).integers(3, 8192, (args.batch, PROMPT)).tolist()
  rows = []
  for n in NEW_TOKENS:
    settings = generate.Sampling(max_new_tokens=n, temperature=1.0, seed=0)
    gen = generate.Generator(s.model, params, s.mesh, settings, eod_id=-1, pad_id=0)
    if not rows:
      _warm_up(gen, args.batch)
    cached_s, cached = _timed(lambda: gen.generate(prompts), args.repeats)
    # Recomputation grows quadratically: one run is enough at 512 and 1024 tokens.
    uncached_s, uncached = _timed(
      lambda: gen.generate_uncached(prompts), args.repeats if n <= 128 else 1
    )
    assert cached == uncached, 'the cached and uncached paths drew different tokens'
    gen_scan = generate.Generator(
      scanned.model, scanned_params, scanned.mesh, settings, eod_id=-1, pad_id=0
    )
    gen_scan.generate(prompts)  # compiles
    scan_s, _ = _timed(lambda: gen_scan.generate(prompts), args.repeats)
    tokens = n * args.batch
    rows.append(
      {
        'new_tokens': n,
        'batch': args.batch,
        'cached_tok_s': round(tokens / cached_s, 1),
        'uncached_tok_s': round(tokens / uncached_s, 1),
        'cached_ms_per_step': round(1e3 * cached_s / n, 2),
        'uncached_ms_per_step': round(1e3 * uncached_s / n, 2),
        'speedup': round(uncached_s / cached_s, 1),
        'scan_cached_ms_per_step': round(1e3 * scan_s / n, 2),
      }
    )
    print(rows[-1], flush=True)
  print(
    f'\n{jax.devices()[0].device_kind}, model 4L/256w/4h, context {CONTEXT}, prompt '
    f'{PROMPT} tokens, batch {args.batch}; medians of {args.repeats} runs (uncached at 512 '
    'and 1024: one run)'
  )
  common.print_table(rows, list(rows[0]))
  common.write_json(
    args.json,
    {'rows': rows, 'context': CONTEXT, 'prompt': PROMPT, 'device': jax.devices()[0].device_kind},
  )


if __name__ == '__main__':
  main()
