"""Compile time against depth (with and without scan_layers), temporary memory per remat
policy, and gradient accumulation keeping memory flat.

    python benchmarks/compile_memory.py [--json=benchmarks/compile_memory.json]

Everything is read off the compiled train step (`memory_analysis`), on one CPU device.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxgpt import hugepages  # noqa: E402

hugepages.ensure()  # before jax loads; see jaxgpt/hugepages.py

from benchmarks import common  # noqa: E402
from jaxgpt import plan  # noqa: E402

MIB = 1 << 20


def compiled(config):
  s = common.setup(config)
  start = time.perf_counter()
  exe = plan.compile_train_step(config, s)
  return exe, time.perf_counter() - start


def compile_times(layers=(4, 12, 24, 48)):
  rows = []
  for n in layers:
    row = {'layers': n}
    for scan in (False, True):
      _, seconds = compiled(common.model_config(n, 4, 128, 64, 8, scan_layers=scan))
      row['scan' if scan else 'unrolled'] = f'{seconds:.1f} s'
    rows.append(row)
  return rows


def remat_memory():
  rows = []
  for policy in ('none', 'dots', 'dots_no_batch', 'full'):
    exe, _ = compiled(common.model_config(12, 4, 256, 256, 8, remat=policy, scan_layers=True))
    mem = exe.memory_analysis()
    rows.append(
      {
        'remat': policy,
        'temp_MiB': round(mem.temp_size_in_bytes / MIB, 1),
        'xla_gflop': round(exe.cost_analysis().get('flops', 0) / 1e9, 2),
      }
    )
  return rows


def accumulation_memory(micro_batch=4):
  rows = []
  for m in (1, 2, 4, 8):
    acc = common.model_config(6, 4, 256, 256, micro_batch * m)
    acc.execution.micro_batches = m
    whole = common.model_config(6, 4, 256, 256, micro_batch * m)
    rows.append(
      {
        'global_batch': micro_batch * m,
        'micro_batches': m,
        'temp_MiB_accumulated': round(
          compiled(acc)[0].memory_analysis().temp_size_in_bytes / MIB, 1
        ),
        'temp_MiB_one_batch': round(
          compiled(whole)[0].memory_analysis().temp_size_in_bytes / MIB, 1
        ),
      }
    )
  return rows


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument(
    '--json', default=os.path.join(os.path.dirname(__file__), 'compile_memory.json')
  )
  args = parser.parse_args()
  results = {}
  print('compile time of the train step (4 heads, width 128, 64 tokens, batch 8)')
  results['compile'] = compile_times()
  common.print_table(results['compile'], ['layers', 'unrolled', 'scan'])
  print('\ntemporary memory per remat policy (12 layers, width 256, 256 tokens, batch 8, scan)')
  results['remat'] = remat_memory()
  common.print_table(results['remat'], ['remat', 'temp_MiB', 'xla_gflop'])
  print('\ngradient accumulation: micro-batches of 4 sequences (6 layers, width 256, 256 tokens)')
  results['accumulation'] = accumulation_memory()
  common.print_table(
    results['accumulation'],
    ['global_batch', 'micro_batches', 'temp_MiB_accumulated', 'temp_MiB_one_batch'],
  )
  common.write_json(args.json, results)


if __name__ == '__main__':
  main()
