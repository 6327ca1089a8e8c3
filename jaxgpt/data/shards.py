"""What the preparation stages write: curated documents between stages, and token shards.

Token shards are flat arrays of token ids (uint16 below 65,536 ids, else uint32),
documents joined by the end-of-document id, one file per curation task and split:
`shards/{source}/{split}-{task:05d}.bin`. Each is written under a temporary name and renamed
when whole, and the manifest lists only finished shards, so a half-written shard is never
read. The loader reads windows straight from them with `np.memmap`.
"""

import json
import os

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from jaxgpt.data import clean
from jaxgpt.data import tokenizer as tokenizer_lib

# Document lengths are histogrammed in powers of two: bin i holds [2**i, 2**(i+1)).
HIST_BINS = 32
_ENCODE_BATCH = 256


def token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def write_json(path: str, value):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


class CuratedWriter(PipelineStep):
  """Writes each task's curated documents (one JSON string per line), and passes them on.

  It also keeps a hash-chosen sample of the training documents for the tokenizer, at the
  rate that makes about `data.tokenizer.sample_mb` of the whole corpus.
  """

  type = 'jaxgpt'
  name = 'curated documents'

  def __init__(
    self,
    folder: str,
    sample_folder: str,
    sample_rate: float,
    val_fraction: float,
    val_tasks: frozenset,
  ):
    super().__init__()
    self.folder, self.sample_folder = folder, sample_folder
    self.sample_rate, self.val_fraction, self.val_tasks = sample_rate, val_fraction, val_tasks

  def run(self, data, rank=0, world_size=1):
    path = os.path.join(self.folder, f'{rank:05d}.jsonl')
    sample_path = os.path.join(self.sample_folder, f'{rank:05d}.jsonl')
    os.makedirs(self.folder, exist_ok=True)
    os.makedirs(self.sample_folder, exist_ok=True)
    with open(path + '.tmp', 'w') as out, open(sample_path + '.tmp', 'w') as sample:
      for doc in data:
        line = json.dumps(doc.text) + '\n'
        out.write(line)
        if rank not in self.val_tasks and self._sampled(doc.text):
          sample.write(line)
        yield doc
    os.replace(path + '.tmp', path)
    os.replace(sample_path + '.tmp', sample_path)

  def _sampled(self, text: str) -> bool:
    split, sample = clean.buckets(text)
    # a validation document (split below val_fraction): the tokenizer never sees it
    return split >= self.val_fraction and sample < self.sample_rate


def read_curated(folder: str, rank: int):
  with open(os.path.join(folder, f'{rank:05d}.jsonl')) as f:
    for i, line in enumerate(f):
      yield Document(json.loads(line), str(i))


class CuratedReader(PipelineStep):
  type = 'jaxgpt'
  name = 'curated reader'

  def __init__(self, folder: str):
    super().__init__()
    self.folder = folder

  def run(self, data=None, rank=0, world_size=1):
    yield from read_curated(self.folder, rank)


def read_sample(folder: str):
  for name in sorted(os.listdir(folder)):
    if name.endswith('.jsonl'):
      with open(os.path.join(folder, name)) as f:
        for line in f:
          yield json.loads(line)


class TokenShards(PipelineStep):
  """Splits documents into train and validation by content hash, encodes them, and writes
  this task's shards and its counts (documents, tokens, length histograms)."""

  type = 'jaxgpt'
  name = 'token shards'

  def __init__(
    self,
    tokenizer_path: str,
    directory: str,
    counts_folder: str,
    task_sources: list[str],
    val_tasks: frozenset,
    val_fraction: float,
    threads: int,
  ):
    super().__init__()
    self.tokenizer_path, self.directory = tokenizer_path, directory
    self.counts_folder, self.task_sources = counts_folder, task_sources
    self.val_tasks, self.val_fraction, self.threads = val_tasks, val_fraction, threads

  def run(self, data, rank=0, world_size=1):
    tok = tokenizer_lib.load(self.tokenizer_path)
    dtype = token_dtype(tok.vocab_size)
    source = self.task_sources[rank]
    folder = os.path.join(self.directory, 'shards', source)
    os.makedirs(folder, exist_ok=True)
    names = {s: os.path.join('shards', source, f'{s}-{rank:05d}.bin') for s in ('train', 'val')}
    files = {s: open(os.path.join(self.directory, n) + '.tmp', 'wb') for s, n in names.items()}
    counts = {
      s: {
        'documents': 0,
        'tokens': 0,
        'bytes': 0,
        'chars_hist': [0] * HIST_BINS,
        'tokens_hist': [0] * HIST_BINS,
      }
      for s in names
    }
    batch = []
    for doc in data:
      batch.append(doc.text)
      if len(batch) == _ENCODE_BATCH:
        self._write(tok, dtype, batch, rank, files, counts)
        batch = []
    self._write(tok, dtype, batch, rank, files, counts)
    for s, f in files.items():
      f.close()
      os.replace(
        os.path.join(self.directory, names[s]) + '.tmp', os.path.join(self.directory, names[s])
      )
    os.makedirs(self.counts_folder, exist_ok=True)
    write_json(
      os.path.join(self.counts_folder, f'{rank:05d}.json'),
      {'source': source, 'shards': names, 'splits': counts},
    )
    return
    yield

  def _write(self, tok, dtype, texts, rank, files, counts):
    if not texts:
      return
    ids = tok.encode_batch(texts, self.threads)
    for text, doc_ids in zip(texts, ids):
      split = (
        'val' if rank in self.val_tasks or clean.val_bucket(text) < self.val_fraction else 'train'
      )
      arr = np.asarray(doc_ids + [tok.eod_id], dtype)
      files[split].write(arr.tobytes())
      c = counts[split]
      c['documents'] += 1
      c['tokens'] += arr.size
      c['bytes'] += len(text.encode('utf-8'))
      c['chars_hist'][min(max(len(text), 1).bit_length() - 1, HIST_BINS - 1)] += 1
      c['tokens_hist'][min(arr.size.bit_length() - 1, HIST_BINS - 1)] += 1
