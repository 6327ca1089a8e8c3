"""Near-duplicate detection through the real stages, on planted pairs of known similarity."""

import json
import os

import numpy as np
import pytest
from datatrove.data import Document

from jaxgpt.data.synthetic import Prose, planted_pairs
from configs import base
from jaxgpt.data import dedup


def _removed(tmp_path, tasks: list[list[str]], cfg) -> dict:
  """{(task, doc): EXACT or NEAR} for documents split over tasks, after all stages."""
  sigs, pairs, out = (str(tmp_path / d) for d in ('sigs', 'pairs', 'remove'))
  for rank, texts in enumerate(tasks):
    step = dedup.Signatures(sigs, cfg)
    list(step((Document(t, str(i)) for i, t in enumerate(texts)), rank, len(tasks)))
  buckets = dedup.minhash_config(cfg).num_buckets
  for b in range(buckets):
    dedup.buckets_step(sigs, pairs, cfg)(None, b, buckets)
  list(dedup.Cluster(sigs, pairs, out, cfg)())
  removed = {}
  for rank in range(len(tasks)):
    path = os.path.join(out, f'{rank:05d}.remove')
    if os.path.exists(path):
      for doc, how in np.fromfile(path, np.uint32).reshape(-1, 2).tolist():
        removed[(rank, doc)] = how
  return removed


@pytest.fixture(scope='module')
def pairs():
  return planted_pairs(Prose(), 240, seed=1)


def test_recall_and_false_positives_on_planted_pairs(pairs, tmp_path):
  # Originals in task 0, copies in task 1: the copy of a detected pair is removed.
  removed = _removed(
    tmp_path, [[a for a, _, _ in pairs], [b for _, b, _ in pairs]], base.data_config().dedup
  )
  caught = np.array([(1, i) in removed for i in range(len(pairs))])
  similarity = np.array([j for _, _, j in pairs])
  high, low = similarity >= 0.8, similarity < 0.5
  assert high.sum() >= 60 and low.sum() >= 60
  assert caught[high].mean() >= 0.95, caught[high].mean()
  assert caught[low].mean() < 0.01, caught[low].mean()
  assert not any(task == 0 for task, _ in removed)  # the first of each pair stays


def test_exact_duplicates_are_told_apart_from_near_ones(pairs, tmp_path):
  a, b, j = next(p for p in pairs if 0.85 < p[2] < 1)
  other = pairs[-1][0]
  removed = _removed(tmp_path, [[a, other], [a, b]], base.data_config().dedup)
  assert removed == {(1, 0): dedup.EXACT, (1, 1): dedup.NEAR}
  # a against its copy and against b: each pair counted once, though the exact copy is
  # listed by every band and by the content bucket
  counts = json.loads((tmp_path / 'remove' / 'counts.json').read_text())
  assert counts == {'candidate_pairs': 2, 'verified_pairs': 2}


def test_exact_only_and_the_threshold_is_config(pairs, tmp_path):
  cfg = base.data_config().dedup
  cfg.near = False
  a, b, _ = next(p for p in pairs if 0.85 < p[2] < 1)
  removed = _removed(tmp_path / 'exact', [[a, b, a]], cfg)
  assert removed == {(0, 2): dedup.EXACT}
  cfg.near, cfg.threshold = True, 0.99
  assert _removed(tmp_path / 'strict', [[a, b]], cfg) == {}


def test_band_layout_probabilities():
  cfg = base.data_config().dedup
  p = dedup.candidate_probability([0.5, 0.7, 0.8], cfg.bands, cfg.rows)
  assert p[2] > 0.999 and p[1] > 0.97 and p[0] < 0.5
  assert dedup.minhash_config(cfg).num_buckets == cfg.bands + 1  # the bands, exact content
