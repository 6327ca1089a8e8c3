"""GPT-2 124M training throughput and MFU with each attention path, in bfloat16.

    python benchmarks/attention_paths.py                       # on a GPU or TPU host
    python benchmarks/attention_paths.py --preset=tiny --batch=2   # a CPU smoke run

Each path (`model.attention_impl`) that runs on this platform is compiled into the real
train step (step.py) on all local devices, timed over rounds of steps on random token
batches (the loss read back at the end of each round), and its tokens/s and MFU printed
against the device kind's bf16 peak (configs/devices.py; on CPU a measured float32
matmul). Writes benchmarks/attention_paths.json.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from experiments import gpt2  # noqa: E402
from jaxgpt import metrics  # noqa: E402
from jaxgpt import sharding  # noqa: E402
from jaxgpt import step as step_lib  # noqa: E402

PATHS = {'gpu': ('einsum', 'cudnn', 'reference'), 'tpu': ('einsum', 'splash', 'reference')}


def config_for(preset, impl, batch, seq_len):
  c = gpt2.get_config('124m').copy_and_resolve_references()
  if preset == 'tiny':  # a shape a CPU runs in seconds, the same code path
    c.model.num_layers, c.model.num_heads, c.model.d_model = 2, 4, 64
  c.model.seq_len = seq_len
  c.model.attention_impl = impl
  c.model.dtype = 'bfloat16'
  c.train.batch_size = batch
  return c


def measure(config, rounds, steps):
  run = common.setup(config, jax.devices())
  state = run.init_state(0)
  vocab = config.data.tokenizer.vocab_size
  batches = [
    sharding.global_batch(common.random_batch(config, vocab, seed), run.mesh) for seed in range(4)
  ]
  with run.context():
    step = step_lib.jit_train_step(run, config)
    state, m = step(state, batches[0])  # compile
    float(m['loss'])
    rates = []
    for _ in range(rounds):
      start = time.perf_counter()
      for i in range(steps):
        state, m = step(state, batches[i % len(batches)])
      float(m['loss'])
      tokens = config.train.batch_size * config.model.seq_len * steps
      rates.append(tokens / (time.perf_counter() - start))
  tokens_per_s = statistics.median(rates)
  peak, peak_of = metrics.peak_flops(0.0, jax.devices()[0])
  mfu = tokens_per_s * run.flops_per_token / (peak * len(jax.devices()))
  return {
    'attention': run.model.cfg.attention,
    'tokens_per_s': round(tokens_per_s),
    'mfu_pct': round(100 * mfu, 1),
    'mfu_of': metrics.PEAKS[peak_of],
    'rates': [round(r) for r in rates],
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--preset', default='124m', choices=('124m', 'tiny'))
  parser.add_argument('--batch', type=int, default=0, help='0: 8 rows per device')
  parser.add_argument('--seq_len', type=int, default=0, help="0: the preset's 1024")
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--impls', default='', help='comma-separated; default: those of the platform')
  parser.add_argument(
    '--json', default=os.path.join(os.path.dirname(__file__), 'attention_paths.json')
  )
  args = parser.parse_args()
  platform = jax.devices()[0].platform
  impls = args.impls.split(',') if args.impls else PATHS.get(platform, ('einsum', 'reference'))
  batch = args.batch or 8 * len(jax.devices())
  print(f'{len(jax.devices())} x {jax.devices()[0].device_kind}; jax {jax.__version__}')
  seq_len = args.seq_len or gpt2.get_config('124m').model.seq_len
  rows = []
  for impl in impls:
    config = config_for(args.preset, impl, batch, seq_len)
    row = {'impl': impl, **measure(config, args.rounds, args.steps)}
    print(row, flush=True)
    rows.append(row)
  common.print_table(rows, ['impl', 'attention', 'tokens_per_s', 'mfu_pct', 'mfu_of'])
  common.write_json(
    args.json,
    {
      'device': jax.devices()[0].device_kind,
      'devices': len(jax.devices()),
      'preset': args.preset,
      'batch': batch,
      'seq_len': seq_len,
      'rows': rows,
    },
  )


if __name__ == '__main__':
  main()
