"""Exact and near-duplicate removal: MinHash LSH with verification, on disk, in stages.

1. `Signatures` (one task per curation task): each document's MinHash signature over word
   n-grams (`data.dedup.ngram`), cut into `bands` buckets of `rows` values, plus one bucket
   holding the exact content hash; and the full signature row, for verification.
2. datatrove's `MinhashDedupBuckets` (one task per bucket): a merge of the sorted bucket
   files that emits candidate pairs, those equal in some bucket.
3. `Cluster` (one task): each candidate pair is verified against the full signatures (exact
   content, or estimated Jaccard >= `data.dedup.threshold`); verified pairs are joined into
   clusters, and all but one document of each cluster is listed for removal.
4. `DropDuplicates`, run in the tokenization stage, skips the listed documents.

Memory is bounded by one task's signatures and by the duplicate pairs, never the corpus.
"""

import json
import os
import re
import struct

import numpy as np
import xxhash
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
from datatrove.utils.hashing import HashConfig

from jaxgpt.data import clean
from jaxgpt.data import codepoints
from jaxgpt.errors import UserError

_PRIME = np.uint64((1 << 61) - 1)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # combines word hashes into n-gram hashes
WORDS = re.compile(r'[^\W\d_]+|\d+')  # what word_runs finds, as a regex (for the tests)
_NUMBER = np.uint64(xxhash.xxh64_intdigest(b'0'))
_CHUNK = 4096  # shingles per block of the signature's (shingles x permutations) product
EXACT, NEAR = 1, 2


def minhash_config(cfg) -> MinhashConfig:
  """datatrove's layout: the MinHash bands, then (with `exact`) one content-hash bucket."""
  if cfg.near and (cfg.bands < 1 or cfg.rows < 1 or cfg.ngram < 1):
    raise UserError(
      f'data.dedup: bands={cfg.bands}, rows={cfg.rows}, ngram={cfg.ngram} must all be at least 1'
    )
  if cfg.near and not 0 < cfg.threshold <= 1:
    raise UserError(f'data.dedup.threshold={cfg.threshold} is a Jaccard similarity in (0, 1]')
  bands = (cfg.bands if cfg.near else 0) + bool(cfg.exact)
  return MinhashConfig(
    n_grams=cfg.ngram,
    num_buckets=bands,
    hashes_per_bucket=cfg.rows,
    seed=cfg.seed,
    hash_config=HashConfig(precision=64, hash_fc='xxhash'),
  )


def candidate_probability(similarity, bands: int, rows: int):
  """Chance that documents of this Jaccard similarity share at least one bucket."""
  return 1 - (1 - np.asarray(similarity) ** rows) ** bands


def word_runs(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The code points of the text in lower case, and the starts and ends of its words:
  runs of letters or of digits (`WORDS`, without punctuation)."""
  cp = codepoints.array(text.lower())
  flags = codepoints.table()[cp]
  kind = np.where(flags & codepoints.LETTER, 1, np.where(flags & codepoints.DECIMAL, 2, 0))
  return (cp, *codepoints.runs(kind.astype(np.int8)))


def shingles(text: str, n: int) -> np.ndarray:
  """Hashes of the word n-grams of the text in lower case, without punctuation, every
  number the same word (what datatrove's simplify_text does), computed in numpy."""
  cp, starts, ends = word_runs(text)
  if starts.size < n:
    return np.zeros(0, np.uint64)
  h = codepoints.hashes(cp, starts, ends)
  h[(codepoints.table()[cp[starts]] & codepoints.DECIMAL) != 0] = _NUMBER
  out = h[: len(h) - n + 1].copy()
  for j in range(1, n):
    out = out * _MIX + h[j : len(h) - n + 1 + j]
  return out


class Signatures(PipelineStep):
  """Stage 1: writes bucket signatures (sorted, datatrove's format) and full rows."""

  type = 'jaxgpt'
  name = 'dedup signatures'

  def __init__(self, folder: str, cfg):
    super().__init__()
    self.folder, self.cfg = folder, cfg
    self.config = minhash_config(cfg)
    self.num_perm = cfg.bands * cfg.rows if cfg.near else 0
    # Permutation i maps a shingle hash x to a_i * x + b_i modulo 2**64 (a_i odd, so it is
    # a bijection), compared by its high bits: multiply-shift hashing, with no division.
    gen = np.random.RandomState(cfg.seed)
    size = (1, max(self.num_perm, 1))
    self.a = gen.randint(0, 1 << 63, dtype=np.uint64, size=size) * np.uint64(2) + np.uint64(1)
    self.b = gen.randint(0, 1 << 63, dtype=np.uint64, size=size)

  def signature(self, text: str) -> np.ndarray | None:
    sh = shingles(text, self.cfg.ngram)
    if not sh.size:
      return None
    out = np.full(self.num_perm, np.iinfo(np.uint64).max, np.uint64)
    for i in range(0, sh.size, _CHUNK):
      np.minimum(out, (sh[i : i + _CHUNK, None] * self.a + self.b).min(axis=0), out=out)
    return out >> np.uint64(4)  # below 2**61 - 1: datatrove's merge ignores values from it up

  def run(self, data, rank=0, world_size=1):
    rows, bands = self.cfg.rows, self.config.num_buckets
    record = struct.Struct(f'<{rows}QI')
    paths = [
      os.path.join(self.folder, f'bucket_{b:03d}', f'{rank:05d}.minhash.sig') for b in range(bands)
    ]
    for p in paths:
      os.makedirs(os.path.dirname(p), exist_ok=True)
    files = [open(p, 'wb') for p in paths]
    full = open(os.path.join(self.folder, f'{rank:05d}.rows'), 'wb')
    for idx, doc in enumerate(clean.in_runs(data)):
      # below the prime: datatrove's merge ignores bucket values from 2**61 - 1 up
      exact = xxhash.xxh64_intdigest(doc.text.encode('utf-8', 'surrogatepass')) % int(_PRIME)
      sig = self.signature(doc.text) if self.num_perm else None
      if sig is not None:
        for b in range(self.cfg.bands):
          files[b].write(record.pack(*sig[b * rows : (b + 1) * rows].tolist(), idx))
      if self.cfg.exact:
        files[-1].write(record.pack(exact, *([0] * (rows - 1)), idx))
      row = np.zeros(1 + self.num_perm, np.uint64)
      row[0] = exact
      if sig is not None:
        row[1:] = sig
      full.write(row.tobytes())
    for f in files + [full]:
      f.close()
    dtype = np.dtype([(f'h{i}', '<u8') for i in range(rows)] + [('doc', '<u4')])
    for p in paths:  # datatrove's merge reads each bucket file in signature order
      records = np.fromfile(p, dtype)
      records.sort(order=dtype.names)
      records.tofile(p)
    return
    yield


def buckets_step(folder: str, out: str, cfg) -> MinhashDedupBuckets:
  return MinhashDedupBuckets(input_folder=folder, output_folder=out, config=minhash_config(cfg))


class Cluster(PipelineStep):
  """Stage 3: verified candidate pairs joined into clusters; lists what to remove per task."""

  type = 'jaxgpt'
  name = 'dedup clusters'

  def __init__(self, sig_folder: str, pairs_folder: str, out: str, cfg):
    super().__init__()
    self.sig_folder, self.pairs_folder, self.out, self.cfg = sig_folder, pairs_folder, out, cfg
    self.width = 1 + (cfg.bands * cfg.rows if cfg.near else 0)

  def _row(self, rows_cache, task, doc):
    if task not in rows_cache:
      path = os.path.join(self.sig_folder, f'{task:05d}.rows')
      rows_cache[task] = np.memmap(path, np.uint64, 'r').reshape(-1, self.width)
    return rows_cache[task][doc]

  def verified(self, rows_cache, a, b) -> int:
    """EXACT, NEAR or 0 for a candidate pair of (task, doc) keys."""
    ra, rb = self._row(rows_cache, *a), self._row(rows_cache, *b)
    if ra[0] == rb[0]:
      return EXACT
    if self.width > 1 and np.mean(ra[1:] == rb[1:]) >= self.cfg.threshold:
      return NEAR
    return 0

  def run(self, data=None, rank=0, world_size=1):
    parent, rows_cache = {}, {}

    def find(x):
      root = x
      while parent.get(root, root) != root:
        root = parent[root]
      while parent.get(x, x) != root:  # path compression
        parent[x], x = root, parent[x]
      return root

    counts = {'candidate_pairs': 0, 'verified_pairs': 0}
    seen = set()  # a pair alike in several bands is listed by each: counted and verified once
    for name in sorted(os.listdir(self.pairs_folder)):
      if not name.endswith('.dups'):
        continue
      pairs = np.fromfile(os.path.join(self.pairs_folder, name), np.uint32).reshape(-1, 4)
      for f1, d1, f2, d2 in pairs.tolist():
        key = (min((f1, d1), (f2, d2)), max((f1, d1), (f2, d2)))
        if key in seen:
          continue
        seen.add(key)
        counts['candidate_pairs'] += 1
        if not self.verified(rows_cache, (f1, d1), (f2, d2)):
          continue
        counts['verified_pairs'] += 1
        ra, rb = find((f1, d1)), find((f2, d2))
        if ra != rb:  # a cluster's root is its first document, which stays
          parent[max(ra, rb)] = min(ra, rb)
    removals = {}
    for node in list(parent):
      root = find(node)
      if root != node:
        how = EXACT if self.verified(rows_cache, node, root) == EXACT else NEAR
        removals.setdefault(node[0], []).append((node[1], how))
    os.makedirs(self.out, exist_ok=True)
    for task, docs in removals.items():
      arr = np.array(sorted(docs), np.uint32).reshape(-1, 2)
      arr.tofile(os.path.join(self.out, f'{task:05d}.remove'))
    with open(os.path.join(self.out, 'counts.json'), 'w') as f:
      json.dump(counts, f)
    return
    yield


class DropDuplicates(PipelineStep):
  """Stage 4: passes through all but the documents Cluster listed for this task."""

  type = 'jaxgpt'
  name = 'dedup drop'

  def __init__(self, folder: str | None, counts_folder: str):
    super().__init__()
    self.folder, self.counts_folder = folder, counts_folder

  def run(self, data, rank=0, world_size=1):
    path = self.folder and os.path.join(self.folder, f'{rank:05d}.remove')
    removal = (
      np.fromfile(path, np.uint32).reshape(-1, 2)
      if path and os.path.exists(path)
      else np.zeros((0, 2), np.uint32)
    )
    drops = dict(removal.tolist())
    counts = {'exact_duplicates': 0, 'near_duplicates': 0, 'duplicate_bytes': 0}
    for idx, doc in enumerate(data):
      how = drops.get(idx)
      if how is None:
        yield doc
        continue
      counts['exact_duplicates' if how == EXACT else 'near_duplicates'] += 1
      counts['duplicate_bytes'] += len(doc.text.encode('utf-8'))
    os.makedirs(self.counts_folder, exist_ok=True)
    with open(os.path.join(self.counts_folder, f'{rank:05d}.json'), 'w') as f:
      json.dump(counts, f)
