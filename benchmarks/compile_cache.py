"""What the persistent compilation cache saves a new process: --mode=eval, --mode=sample
and a resumed run of the default experiment, each with the cache off and with it warm.

    python benchmarks/compile_cache.py [--steps=20] [--repeats=3] [--json=...]

One short run of the default experiment is trained first (its first half with a cold cache,
which fills it). Then each command runs in a new process, as a user would run it, `repeats`
times each way: with `--compilation_cache=off`, and with the cache the training filled. A
resume runs on a fresh copy of the half-trained workdir each time. Wall seconds of the
whole process (start-up, data, compile, work), median.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, cache):
  start = time.perf_counter()
  proc = subprocess.run(
    [
      sys.executable,
      'run.py',
      '--config=experiments/default.py',
      *args,
      f'--compilation_cache={cache}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  if proc.returncode:
    sys.exit(f'{" ".join(args)} failed:\n{proc.stderr[-3000:]}')
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=20, help='the run: steps in all (half first)')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', default=os.path.join(ROOT, 'benchmarks', 'compile_cache.json'))
  a = parser.parse_args()
  root = tempfile.mkdtemp(prefix='compile-cache-bench-')
  cache, workdir = os.path.join(root, 'cache'), os.path.join(root, 'run')
  train = [f'--config.train.steps={a.steps}', '--config.loop.log_every=5']
  half = [*train, f'--config.loop.run_steps={a.steps // 2}']
  print(f'training the first half of the run (cold cache: {cache}) ...', flush=True)
  cold = _run([f'--workdir={workdir}', *half], cache)
  half_dir = os.path.join(root, 'half')
  shutil.copytree(workdir, half_dir)
  _run([f'--workdir={workdir}', *train], cache)  # the rest: the run is complete

  def resume(cache_dir):
    copy = os.path.join(root, 'resumed')
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(half_dir, copy)
    return _run([f'--workdir={copy}', *train], cache_dir)

  commands = {
    'eval': lambda c: _run([f'--workdir={workdir}', '--mode=eval'], c),
    'sample': lambda c: _run([f'--workdir={workdir}', '--mode=sample', '--prompt=import os'], c),
    'resume': resume,
  }
  rows = []
  for name, fn in commands.items():
    times = {way: [] for way in ('off', 'warm')}
    for _ in range(a.repeats):  # interleaved, so that the machine's load falls on both
      times['off'].append(fn('off'))
      times['warm'].append(fn(cache))
    off, warm = (statistics.median(times[w]) for w in ('off', 'warm'))
    rows.append(
      {
        'command': name,
        'off_s': round(off, 2),
        'warm_s': round(warm, 2),
        'speedup': round(off / warm, 2),
        'times': times,
      }
    )
  entries = sum(f.endswith('-cache') for f in os.listdir(cache))
  print(f'\nfirst half of the training, cold cache: {cold:.1f} s; {entries} programs cached')
  print(f'{"command":>8} | cache off s | warm s | speedup')
  for r in rows:
    print(f'{r["command"]:>8} | {r["off_s"]:>11.1f} | {r["warm_s"]:>6.1f} | {r["speedup"]:>6.2f}x')
  result = {
    'date': time.strftime('%Y-%m-%d'),
    'machine': f'{os.cpu_count()} cores',
    'steps': a.steps,
    'repeats': a.repeats,
    'cold_first_half_s': round(cold, 2),
    'programs_cached': entries,
    'rows': rows,
  }
  with open(a.json, 'w') as f:
    json.dump(result, f, indent=1)
  print(f'wrote {a.json}')
  shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  main()
