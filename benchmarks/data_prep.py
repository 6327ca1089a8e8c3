"""Preparing corpora of growing size on this machine's cores: time, memory, reopening.

    python benchmarks/data_prep.py [--runs=web:100,web:400,web:1600,code:100]
        [--dir=/tmp/jaxgpt-data-bench]

Each corpus (MB) is JSONL shards of distinct English-like documents made from the standard
library's docstrings (jaxgpt/data/synthetic.py; nothing is downloaded), prepared with a
profile ('web': language ID, Gopher and C4 rules; 'code': the basic filters only; both with
exact and near dedup) by `python -m jaxgpt.data.build`, the process `--mode=prepare`
starts. Peak memory is the
largest sum of resident memory over that process and its workers, sampled every 0.2 s.
The table also gives SentencePiece's own encode rate on the same cores, the time to reopen
the finished store, and near-duplicate detection on planted pairs.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from jaxgpt.data import synthetic  # noqa: E402
from configs import base  # noqa: E402
from jaxgpt.data import pipeline  # noqa: E402
from jaxgpt.data import tokenizer as tokenizer_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_config(paths, profile):
  c = base.data_config()
  c.source, c.paths, c.profile = 'files', tuple(paths), profile
  return c


def _tree_rss(pid: int) -> int:
  """Resident bytes of pid and all its descendants."""
  children = {}
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
      except (OSError, ValueError, IndexError):
        pass
  total, stack = 0, [pid]
  while stack:
    p = stack.pop()
    stack.extend(children.get(p, ()))
    try:
      with open(f'/proc/{p}/status') as f:
        total += next(int(line.split()[1]) for line in f if line.startswith('VmRSS')) * 1024
    except (OSError, StopIteration):
      pass
  return total


def prepare_measured(cfg, directory) -> tuple[float, int]:
  """Wall seconds and peak tree RSS of building the store in `directory`."""
  os.makedirs(directory, exist_ok=True)
  config_path = os.path.join(directory, 'bench_config.json')
  with open(config_path, 'w') as f:
    f.write(cfg.to_json())
  start = time.time()
  proc = subprocess.Popen(
    [sys.executable, '-m', 'jaxgpt.data.build', directory, config_path],
    cwd=ROOT,
    env={**os.environ, 'PYTHONPATH': ROOT},
  )
  peak = 0
  while proc.poll() is None:
    peak = max(peak, _tree_rss(proc.pid))
    time.sleep(0.2)
  if proc.returncode:
    raise SystemExit(f'preparation failed with exit {proc.returncode}')
  return time.time() - start, peak


def encode_rate(tokenizer_path, paths, sample_bytes=32 << 20) -> float:
  """SentencePiece's encode MB/s on all cores, on the first sample_bytes of the corpus."""
  tok = tokenizer_lib.load(tokenizer_path)
  texts, size = [], 0
  for path in paths:
    with open(path) as f:
      for line in f:
        texts.append(json.loads(line)['text'])
        size += len(texts[-1].encode())
        if size >= sample_bytes:
          break
    if size >= sample_bytes:
      break
  best = 0.0
  for _ in range(3):
    start = time.perf_counter()
    tok.encode_batch(texts)
    best = max(best, size / (time.perf_counter() - start) / 1e6)
  return best


def reopen_seconds(cfg, workdir) -> float:
  start = time.perf_counter()
  pipeline.prepare(cfg, workdir)
  return time.perf_counter() - start


def dedup_quality(prose, n_pairs=600):
  """Recall on planted pairs of Jaccard >= 0.8 and removals among pairs below 0.5."""
  from tests.test_dedup import _removed
  import pathlib
  import tempfile

  pairs = synthetic.planted_pairs(prose, n_pairs, seed=7)
  with tempfile.TemporaryDirectory() as tmp:
    removed = _removed(
      pathlib.Path(tmp),
      [[a for a, _, _ in pairs], [b for _, b, _ in pairs]],
      base.data_config().dedup,
    )
  caught = np.array([(1, i) in removed for i in range(len(pairs))])
  similarity = np.array([j for _, _, j in pairs])
  high, low = similarity >= 0.8, similarity < 0.5
  return {
    'pairs_high': int(high.sum()),
    'recall_high': round(float(caught[high].mean()), 4),
    'pairs_low': int(low.sum()),
    'removed_low': round(float(caught[low].mean()), 4),
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--runs', default='web:100,web:400,web:1600,code:100')
  parser.add_argument('--dir', default='/tmp/jaxgpt-data-bench')
  parser.add_argument('--shard_mb', type=int, default=32)
  args = parser.parse_args()
  prose = synthetic.Prose()
  rows = []
  for run in args.runs.split(','):
    profile, size_mb = run.split(':')[0], int(run.split(':')[1])
    corpus_dir = os.path.join(args.dir, f'corpus-{size_mb}mb')
    if not os.path.exists(os.path.join(corpus_dir, 'done')):
      shutil.rmtree(corpus_dir, ignore_errors=True)
      start = time.time()
      synthetic.write_jsonl_shards(
        corpus_dir, prose, size_mb << 20, args.shard_mb << 20, seed=size_mb
      )
      open(os.path.join(corpus_dir, 'done'), 'w').close()
      print(f'made the {size_mb} MB corpus in {time.time() - start:.0f} s', flush=True)
    paths = sorted(
      os.path.join(corpus_dir, p) for p in os.listdir(corpus_dir) if p.endswith('.jsonl')
    )
    cfg = data_config(paths, profile)
    workdir = os.path.join(args.dir, f'run-{profile}-{size_mb}mb')
    shutil.rmtree(workdir, ignore_errors=True)
    seconds, peak = prepare_measured(cfg, os.path.join(workdir, 'data'))
    with open(os.path.join(workdir, 'data', 'manifest.json')) as f:
      manifest = json.load(f)
    nbytes = sum(os.path.getsize(p) for p in paths)
    rows.append(
      {
        'profile': profile,
        'corpus_mb': round(nbytes / 1e6),
        'seconds': round(seconds, 1),
        'mb_per_s': round(nbytes / 1e6 / seconds, 2),
        'encode_mb_per_s': round(
          encode_rate(os.path.join(workdir, 'data', 'tokenizer.model'), paths), 2
        ),
        'peak_rss_mb': round(peak / 1e6),
        'tokens': manifest['tokens']['train'] + manifest['tokens']['val'],
        'kept_docs': sum(manifest['documents'].values()),
        'reopen_s': round(reopen_seconds(cfg, workdir), 4),
      }
    )
    rows[-1]['vs_encode'] = round(rows[-1]['mb_per_s'] / rows[-1]['encode_mb_per_s'], 2)
    with open(os.path.join(workdir, 'data', 'logs', 'seconds.json')) as f:
      rows[-1]['stage_seconds'] = json.load(f)
    print(json.dumps(rows[-1]), flush=True)
  from benchmarks.common import print_table, write_json

  print_table(rows, [k for k in rows[0] if k != 'stage_seconds'])
  for r in rows:
    print(f'{r["profile"]} {r["corpus_mb"]} MB, seconds per stage: {r["stage_seconds"]}')
  quality = dedup_quality(prose)
  print('near-duplicate detection on planted pairs:', quality)
  write_json(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data_prep.json'),
    {
      'machine': f'{os.cpu_count()} cores',
      'rows': rows,
      'dedup': quality,
      'date': time.strftime('%Y-%m-%d'),
    },
  )


if __name__ == '__main__':
  random.seed(0)
  main()
