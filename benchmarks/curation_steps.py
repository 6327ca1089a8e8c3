"""The curation steps' rates on one core, ours beside datatrove's where both exist.

    python benchmarks/curation_steps.py [--docs=2000] [--repeats=3]

Documents of generated English-like prose (jaxgpt/data/synthetic.py, 1-8 kB each) go through
each step alone, in one process with one BLAS thread; the table gives the median MB/s of
`repeats` passes and, for the Gopher and C4 rules, checks that both implementations keep
the same documents. SentencePiece's encode rate (one thread, a tokenizer trained on the same
documents) is the yardstick of the preparation's target.
"""

import argparse
import os
import random
import statistics
import sys
import time

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datatrove.data import Document  # noqa: E402
from datatrove.pipeline.filters.c4_filters import C4QualityFilter  # noqa: E402
from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter  # noqa: E402

from jaxgpt.data import synthetic  # noqa: E402
from configs import base  # noqa: E402
from jaxgpt.data import clean, codepoints, dedup, rules  # noqa: E402
from jaxgpt.data import tokenizer as tokenizer_lib  # noqa: E402


def _rate(fn, texts, repeats):
  """Median MB/s of fn over all texts, and its results of the last pass."""
  mb = sum(len(t.encode('utf-8')) for t in texts) / 1e6
  times, out = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn(texts)
    times.append(time.perf_counter() - start)
  return mb / statistics.median(times), out


def _filter(step):
  return lambda texts: [step.filter(Document(t, str(i))) is True for i, t in enumerate(texts)]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--docs', type=int, default=2000)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  prose, rng = synthetic.Prose(), random.Random(0)
  texts = [prose.document(rng, rng.randint(10, 80)) for _ in range(args.docs)]
  cfg = base.data_config()
  clean.language_identifier()
  codepoints.table()
  tok = tokenizer_lib.train(texts[:500], cfg.tokenizer)
  signatures = dedup.Signatures('/tmp/unused', cfg.dedup)
  language = clean.LanguageFilter(cfg.clean.language)
  steps = [
    ('language ID (fastText lid.176, first 1,000 chars)', _filter(language)),
    ('Gopher quality, datatrove', _filter(GopherQualityFilter(language=clean.WORDS))),
    ('Gopher quality, rules.py', _filter(rules.GopherQuality())),
    ('C4 rules, datatrove', _filter(C4QualityFilter(language=clean.WORDS))),
    ('C4 rules, rules.py', _filter(rules.C4Quality(clean.WORDS))),
    ('MinHash signature (20 x 5)', lambda ts: [signatures.signature(t) for t in ts]),
    ('SentencePiece encode (1 thread)', lambda ts: tok.encode_batch(ts, 1)),
  ]
  rows, kept = [], {}
  for name, fn in steps:
    rate, out = _rate(fn, texts, args.repeats)
    rows.append({'step': name, 'mb_per_s': round(rate, 2), 'ms_per_mb': round(1000 / rate, 1)})
    kept[name] = out
    print(rows[-1], flush=True)
  for family in ('Gopher quality', 'C4 rules'):
    theirs, ours = kept[f'{family}, datatrove'], kept[f'{family}, rules.py']
    assert theirs == ours, f'{family}: the two implementations keep different documents'
    print(f'{family}: both keep the same {sum(ours)} of {len(ours)} documents')
  from benchmarks.common import print_table, write_json

  print_table(rows, ['step', 'mb_per_s', 'ms_per_mb'])
  write_json(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'curation_steps.json'),
    {
      'machine': f'{os.cpu_count()} cores, one used',
      'docs': args.docs,
      'rows': rows,
      'date': time.strftime('%Y-%m-%d'),
    },
  )


if __name__ == '__main__':
  main()
