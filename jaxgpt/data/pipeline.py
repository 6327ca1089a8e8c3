"""The prepared token store on disk and the grain loader that reads it.

`prepare` runs corpus -> clean -> split -> tokenizer -> tokens once and writes
`train.bin`, `val.bin` (flat token arrays, documents joined by the end-of-document id),
`tokenizer.model` and `manifest.json` recording what made them. A later run with the same
data config and the same cleaned documents reuses the store.

`train_loader` yields windows of seq_len + 1 tokens cut at fixed offsets and shuffled by
grain from the seed; each process reads only its rows of each global batch, and the
iterator's state is saved in checkpoints, so a resumed run sees exactly the batches it
would have seen.
"""
import dataclasses
import hashlib
import json
import logging
import os
import time

import grain
import numpy as np

from jaxgpt.data import clean as clean_lib
from jaxgpt.data import corpus
from jaxgpt.data import tokenizer as tokenizer_lib
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')

MANIFEST_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Prepared:
  directory: str
  tokenizer: tokenizer_lib.Tokenizer
  manifest: dict

  @property
  def train_path(self):
    return os.path.join(self.directory, 'train.bin')

  @property
  def val_path(self):
    return os.path.join(self.directory, 'val.bin')


def _read_documents(cfg, validation=False):
  stats = corpus.ReadStats()
  docs = list(corpus.documents(cfg, stats, validation=validation))
  if cfg.max_docs and not validation:
    docs = docs[:cfg.max_docs]
  return docs, stats


def _data_fingerprint(cfg, train_docs, val_docs) -> str:
  """What the cleaned documents are: the cleaning config and every document's hash."""
  h = hashlib.sha256()
  h.update(json.dumps({'version': MANIFEST_VERSION, 'clean': cfg.clean.to_dict()},
                      sort_keys=True).encode())
  for tag, docs in (('train', train_docs), ('val', val_docs)):
    h.update(tag.encode())
    for doc in docs:
      h.update(clean_lib.content_hash(doc.text).encode())
  return h.hexdigest()


def _fingerprint(data_fingerprint: str, tokenizer_cfg) -> str:
  tokenizer = json.dumps(tokenizer_cfg.to_dict(), sort_keys=True)
  return hashlib.sha256((data_fingerprint + tokenizer).encode()).hexdigest()


def _reusable(manifest_path, fingerprint, data_fingerprint, tokenizer) -> dict | None:
  """The existing manifest, if its store is what this call would build."""
  if not os.path.exists(manifest_path):
    return None
  with open(manifest_path) as f:
    manifest = json.load(f)
  if tokenizer is None and manifest.get('fingerprint') == fingerprint:
    return manifest
  if (tokenizer is not None and manifest.get('data_fingerprint') == data_fingerprint
      and manifest['tokenizer']['sha256'] == tokenizer.sha256):
    return manifest
  return None


def _write_tokens(path, tokenizer, docs) -> int:
  dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
  parts = []
  for ids in tokenizer.encode_batch([d.text for d in docs]):
    parts.append(np.asarray(ids + [tokenizer.eod_id], dtype))
  tokens = np.concatenate(parts) if parts else np.zeros(0, dtype)
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    tokens.tofile(f)
  os.replace(tmp, path)  # a killed run never leaves a half-written store behind
  return int(tokens.size)


def clean_and_split(cfg):
  """The cleaned train and validation documents and the manifest's counts."""
  docs, stats = _read_documents(cfg)
  train_docs, counts = clean_lib.clean(docs, cfg.clean)
  counts['bad_files'] = stats.bad_files
  if not train_docs:
    raise UserError(f'the corpus is empty after cleaning ({counts}); point data.paths at '
                    'more text or relax data.clean (e.g. --config.data.clean.min_chars=1)')
  if corpus.has_validation_source(cfg):
    val_raw, _ = _read_documents(cfg, validation=True)
    val_docs, val_counts = clean_lib.clean(val_raw, cfg.clean)
    counts = {'train': counts, 'val': val_counts}
  else:
    train_docs, val_docs = clean_lib.split_by_hash(train_docs, cfg.val_fraction)
  if not val_docs:
    raise UserError('the validation split is empty; raise data.val_fraction or set data.val_paths')
  return train_docs, val_docs, counts


def prepare(cfg, workdir: str, tokenizer: tokenizer_lib.Tokenizer | None = None,
            for_eval: bool = False) -> Prepared:
  """Builds (or reuses) the token store for config.data `cfg` in WORKDIR/data.

  With `tokenizer` (a checkpoint's own), the documents are encoded with it rather than a
  newly trained one. `for_eval` never writes the training store: a store that does not
  match goes to WORKDIR/eval_data instead.
  """
  directories = [cfg.cache_dir or os.path.join(workdir, 'data')]
  if for_eval:
    directories.append(os.path.join(workdir, 'eval_data'))
  start = time.time()
  train_docs, val_docs, counts = clean_and_split(cfg)
  log.info('cleaning (documents removed by each filter): %s', counts)
  log.info('split: %d training and %d validation documents', len(train_docs), len(val_docs))
  data_fingerprint = _data_fingerprint(cfg, train_docs, val_docs)
  fingerprint = _fingerprint(data_fingerprint, cfg.tokenizer)
  for directory in directories:
    manifest = _reusable(os.path.join(directory, 'manifest.json'), fingerprint,
                         data_fingerprint, tokenizer)
    if manifest is not None:
      log.info('reusing the token store in %s', directory)
      return Prepared(directory, tokenizer or tokenizer_lib.Tokenizer.load(
          os.path.join(directory, 'tokenizer.model')), manifest)
  directory = directories[-1]
  os.makedirs(directory, exist_ok=True)
  manifest_path = os.path.join(directory, 'manifest.json')
  if os.path.exists(manifest_path):  # a rebuild killed midway must not look like the old store
    os.remove(manifest_path)
  tokenizer = tokenizer or tokenizer_lib.train_or_load([d.text for d in train_docs],
                                                       cfg.tokenizer)
  tokenizer.save(os.path.join(directory, 'tokenizer.model'))
  manifest = {
      'fingerprint': fingerprint,
      'data_fingerprint': data_fingerprint,
      'source': {'source': cfg.source, 'paths': list(cfg.paths), 'val_paths': list(cfg.val_paths),
                 'tfds_name': cfg.tfds_name},
      'filters': cfg.clean.to_dict(),
      'cleaning': counts,
      'tokenizer': {'sha256': tokenizer.sha256, 'vocab_size': tokenizer.vocab_size,
                    'kind': cfg.tokenizer.kind, 'model_path': cfg.tokenizer.model_path},
      'documents': {'train': len(train_docs), 'val': len(val_docs)},
      'tokens': {split: _write_tokens(os.path.join(directory, f'{split}.bin'), tokenizer, docs)
                 for split, docs in (('train', train_docs), ('val', val_docs))},
      'seconds': round(time.time() - start, 2),
  }
  tmp = manifest_path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(manifest, f, indent=2)
  os.replace(tmp, manifest_path)  # written last: its presence means the store is whole
  return Prepared(directory, tokenizer, manifest)


class TokenWindows(grain.sources.RandomAccessDataSource):
  """Record i is tokens[i*L : i*L + L + 1] of a flat token file: inputs and shifted targets."""

  def __init__(self, path: str, seq_len: int, dtype=None):
    self.path, self.seq_len = path, seq_len
    self.dtype = dtype or _dtype_of(path)
    self._tokens = None
    n = os.path.getsize(path) // np.dtype(self.dtype).itemsize
    self._len = max(0, (n - 1) // seq_len)

  def __len__(self):
    return self._len

  def __repr__(self):
    # grain checks a restored iterator against repr(source): keep it free of the workdir's
    # location so that a moved run directory still resumes.
    name = os.path.basename(self.path)
    return f'TokenWindows({name}, seq_len={self.seq_len}, windows={self._len})'

  def __getitem__(self, index):
    if self._tokens is None:  # opened lazily so the source pickles cheaply
      self._tokens = np.memmap(self.path, dtype=self.dtype, mode='r')
    start = int(index) * self.seq_len
    window = np.asarray(self._tokens[start:start + self.seq_len + 1], np.int32)
    return {'inputs': window[:-1], 'targets': window[1:],
            'weights': np.ones(self.seq_len, np.float32)}

  def __getstate__(self):
    return {**self.__dict__, '_tokens': None}


def _dtype_of(path):
  manifest = os.path.join(os.path.dirname(path), 'manifest.json')
  with open(manifest) as f:
    vocab = json.load(f)['tokenizer']['vocab_size']
  return np.uint16 if vocab <= 1 << 16 else np.uint32


def check_batch(global_batch: int, process_count: int):
  if global_batch % process_count:
    raise UserError(f'train.batch_size={global_batch} does not divide over {process_count} '
                    'processes; use a multiple of the process count')


def train_loader(prepared: Prepared, seq_len: int, global_batch: int, seed: int,
                 process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Shuffled, endlessly repeating batches: this process's rows of each global batch.

  Every process draws the same sequence of global batches (window indices, reshuffled each
  epoch from the seed) and reads only its own slice of rows, so the global batch at a step
  is the same whatever the number of processes, and a resumed run continues the sequence.
  """
  check_batch(global_batch, process_count)
  source = TokenWindows(prepared.train_path, seq_len)
  if len(source) < global_batch:
    raise UserError(f'the training split has {len(source)} windows of {seq_len} tokens, fewer '
                    f'than one batch ({global_batch}); use more text or a smaller seq_len/batch')
  return batch_loader(source, global_batch, seed, process_index, process_count)


def batch_loader(source, global_batch: int, seed: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """Shuffled, repeating global batches of a random-access source; this process's rows."""
  local = global_batch // process_count
  mine = slice(process_index * local, (process_index + 1) * local)

  def read_rows(indices_B):
    rows = [source[i] for i in indices_B[mine]]
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

  return (grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(None)
          .batch(global_batch, drop_remainder=True).map(read_rows)
          .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def eval_batches(prepared: Prepared, seq_len: int, global_batch: int, max_batches: int = 0,
                 process_index: int = 0, process_count: int = 1):
  """Validation windows in order; the last batch is padded with zero weights."""
  source = TokenWindows(prepared.val_path, seq_len)
  if len(source) == 0:
    raise UserError(f'the validation split holds fewer than {seq_len + 1} tokens; raise '
                    'data.val_fraction or lower model.seq_len')
  return ordered_batches(source, global_batch, max_batches, process_index, process_count)


def ordered_batches(source, global_batch: int, max_batches: int = 0, process_index: int = 0,
                    process_count: int = 1):
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
