"""The grain loader over a prepared store's token shards.

Record i of a split is a window of seq_len + 1 tokens (inputs and shifted targets) cut at
fixed offsets inside one shard. Training windows are shuffled from the seed per source and,
for a mixture, interleaved by the sources' weights; each process reads only its rows of
each global batch, and the iterator's state is saved in checkpoints, so a resumed run sees
exactly the batches it would have seen.
"""

import bisect
import logging
import os

import grain
import numpy as np

from jaxgpt.data import shards as shards_lib
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')
_MIXTURE_REPORT_WINDOWS = 100_000


class TokenWindows(grain.sources.RandomAccessDataSource):
  """Windows of seq_len + 1 tokens over token ranges {path, start, end} of flat shards."""

  def __init__(self, ranges: list[dict], seq_len: int, dtype):
    self.ranges, self.seq_len, self.dtype = ranges, seq_len, np.dtype(dtype)
    counts = [max(0, (r['end'] - r['start'] - 1) // seq_len) for r in ranges]
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()
    self._maps = {}

  def __len__(self):
    return self._starts[-1]

  def __repr__(self):
    # grain checks a restored iterator against repr(source): keep it free of the workdir's
    # location so that a moved run directory still resumes.
    names = [os.path.basename(r['path']) for r in self.ranges[:2]]
    return (
      f'TokenWindows({names}{"..." if len(self.ranges) > 2 else ""}, '
      f'seq_len={self.seq_len}, windows={len(self)})'
    )

  def __getitem__(self, index):
    index = int(index)
    shard = bisect.bisect_right(self._starts, index) - 1
    r = self.ranges[shard]
    if shard not in self._maps:  # opened lazily so the source pickles cheaply
      self._maps[shard] = np.memmap(r['path'], dtype=self.dtype, mode='r')
    start = r['start'] + (index - self._starts[shard]) * self.seq_len
    window = np.asarray(self._maps[shard][start : start + self.seq_len + 1], np.int32)
    return {
      'inputs': window[:-1],
      'targets': window[1:],
      'weights': np.ones(self.seq_len, np.float32),
    }

  def __getstate__(self):
    return {**self.__dict__, '_maps': {}}


def windows(prepared, split: str, seq_len: int, source: str | None = None) -> TokenWindows:
  dtype = shards_lib.token_dtype(prepared.manifest['tokenizer']['vocab_size'])
  return TokenWindows(prepared.shards(split, source), seq_len, dtype)


def check_batch(global_batch: int, process_count: int):
  if global_batch % process_count:
    raise UserError(
      f'train.batch_size={global_batch} does not divide over {process_count} '
      'processes; use a multiple of the process count'
    )


def train_loader(
  prepared,
  seq_len: int,
  global_batch: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
) -> grain.IterDataset:
  """Shuffled, endlessly repeating batches: this process's rows of each global batch.

  Every process draws the same sequence of global batches (window indices, reshuffled each
  epoch from the seed) and reads only its own slice of rows, so the global batch at a step
  is the same whatever the number of processes, and a resumed run continues the sequence.
  """
  check_batch(global_batch, process_count)
  weights = prepared.manifest['mixture']['weights']
  sources = {name: windows(prepared, 'train', seq_len, name) for name in weights}
  total = sum(len(s) for s in sources.values())
  if total < global_batch:
    raise UserError(
      f'the training split has {total} windows of {seq_len} tokens, fewer than '
      f'one batch ({global_batch}); use more text or a smaller seq_len/batch'
    )
  empty = [name for name, s in sources.items() if not len(s)]
  if empty:
    raise UserError(
      f'mixture source(s) {empty} hold no training window of {seq_len} tokens; '
      'give them more text or remove them from data.mixture'
    )
  if len(sources) == 1:
    (source,) = sources.values()
    return batch_loader(source, global_batch, seed, process_index, process_count)
  return _mixture_loader(sources, weights, global_batch, seed, process_index, process_count)


def _mixture_loader(sources, weights, global_batch, seed, process_index, process_count):
  names = sorted(sources)
  parts = [
    grain.MapDataset.range(len(sources[n]))
    .shuffle(seed=seed + i)
    .repeat(None)
    .map(lambda j, i=i: (i, j))
    for i, n in enumerate(names)
  ]
  mixed = grain.MapDataset.mix(parts, [weights[n] for n in names])
  log.info(
    'mixture: weights %s; realised over the first %d windows %s',
    {n: weights[n] for n in names},
    _MIXTURE_REPORT_WINDOWS,
    realised_mixture([weights[n] for n in names], names, _MIXTURE_REPORT_WINDOWS),
  )
  local = global_batch // process_count
  mine = slice(process_index * local, (process_index + 1) * local)

  def read_rows(pairs):
    rows = [sources[names[i]][j] for i, j in pairs[mine]]
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

  return (
    mixed.batch(global_batch, drop_remainder=True, batch_fn=np.asarray)
    .map(read_rows)
    .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  )


def realised_mixture(weights, names, n: int) -> dict:
  """Share of each source among the first n windows that grain's mix of them draws."""
  # Which source a position draws from depends on the weights alone, not on the elements.
  parts = [grain.MapDataset.range(1).repeat(None).map(lambda _, i=i: i) for i in range(len(names))]
  mixed = grain.MapDataset.mix(parts, weights)
  counts = np.bincount([mixed[k] for k in range(n)], minlength=len(names))
  return {name: round(float(c) / n, 4) for name, c in zip(names, counts)}


def batch_loader(
  source, global_batch: int, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
  """Shuffled, repeating global batches of a random-access source; this process's rows."""
  local = global_batch // process_count
  mine = slice(process_index * local, (process_index + 1) * local)

  def read_rows(indices_B):
    rows = [source[i] for i in indices_B[mine]]
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

  return (
    grain.MapDataset.range(len(source))
    .shuffle(seed=seed)
    .repeat(None)
    .batch(global_batch, drop_remainder=True)
    .map(read_rows)
    .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  )


def check_validation(prepared, seq_len: int):
  """The validation windows, if there is at least one (checked before training starts)."""
  source = windows(prepared, 'val', seq_len)
  if len(source) == 0:
    raise UserError(
      f'the validation split holds fewer than {seq_len + 1} tokens; raise '
      'data.val_fraction or lower model.seq_len'
    )
  return source


def eval_batches(
  prepared,
  seq_len: int,
  global_batch: int,
  max_batches: int = 0,
  process_index: int = 0,
  process_count: int = 1,
):
  """Validation windows in order; the last batch is padded with zero weights."""
  source = check_validation(prepared, seq_len)
  return ordered_batches(source, global_batch, max_batches, process_index, process_count)


def ordered_batches(
  source, global_batch: int, max_batches: int = 0, process_index: int = 0, process_count: int = 1
):
  """A source's rows in order, this process's part of each global batch; the last batch is
  padded with copies of row 0 that carry zero weights."""
  n_batches = -(-len(source) // global_batch)
  if max_batches:
    n_batches = min(n_batches, max_batches)
  local = global_batch // process_count
  for b in range(n_batches):
    rows = []
    for r in range(process_index * local, (process_index + 1) * local):
      i = b * global_batch + r
      if i < len(source):
        rows.append(source[i])
      else:
        pad = source[0]
        rows.append({**pad, 'weights': np.zeros_like(pad['weights'])})
    yield {k: np.stack([row[k] for row in rows]) for k in rows[0]}
