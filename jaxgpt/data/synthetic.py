"""Generated text and token batches for tests and benchmarks, made on this machine: no download.

`Prose` is a word bigram model of the standard library's docstrings (English prose with
stop words and sentences), so its documents pass the 'web' profile's rules; every document
is distinct. `planted_pairs` makes documents and near copies of known word 5-gram Jaccard
similarity, for measuring near-duplicate detection.
"""

import ast
import collections
import json
import os
import random

import numpy as np
from datatrove.utils.text import simplify_text

from jaxgpt.data import corpus


def _parse(source: str, tries: int = 3):
  """ast.parse, again after CPython 3.11's spurious "AST constructor recursion depth
  mismatch" (python/cpython#106905: the depth counter is shared with other threads parsing
  at the same time, as a library's background thread may be)."""
  for attempt in range(tries):
    try:
      return ast.parse(source)
    except SystemError:
      if attempt == tries - 1:
        raise


class Prose:
  """Sentences drawn from a bigram model of the standard library's docstrings."""

  def __init__(self, max_files: int = 400):
    follows = collections.defaultdict(list)
    for path in corpus.stdlib_files()[:max_files]:
      try:
        tree = _parse(path.read_text(encoding='utf-8'))
      except (SyntaxError, UnicodeDecodeError):
        continue
      for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)):
          doc = ast.get_docstring(node)
          words = [w for w in (doc or '').split() if w.isalpha() and len(w) < 15]
          for a, b in zip(['.'] + words, words):
            follows[a.lower()].append(b.lower())
    self.follows = {k: v for k, v in follows.items() if v}
    self.starts = sorted(self.follows)

  def sentence(self, rng: random.Random) -> str:
    word = rng.choice(self.follows['.'])
    words = [word.capitalize()]
    for _ in range(rng.randint(8, 20)):
      word = rng.choice(self.follows.get(word) or self.starts)
      words.append(word)
    return ' '.join(words) + '.'

  def document(self, rng: random.Random, sentences: int) -> str:
    lines, line = [], []
    for _ in range(sentences):
      line.append(self.sentence(rng))
      if rng.random() < 0.3:
        lines.append(' '.join(line))
        line = []
    lines.append(' '.join(line))
    return '\n'.join(x for x in lines if x)


def _write_shard(args):
  path, prose, nbytes, seed = args
  rng, written = random.Random(seed), 0
  with open(path, 'w') as f:
    while written < nbytes:
      line = json.dumps({'text': prose.document(rng, rng.randint(10, 80))}) + '\n'
      f.write(line)
      written += len(line)
  return path


def write_jsonl_shards(
  folder: str, prose: Prose, total_bytes: int, shard_bytes: int, seed: int = 0
) -> list[str]:
  """Distinct documents of 1-8 kB in JSONL shards of shard_bytes, total_bytes in all; the
  shards are written in parallel, each from its own seed."""
  import multiprocessing

  os.makedirs(folder, exist_ok=True)
  n = -(-total_bytes // shard_bytes)
  jobs = [
    (
      os.path.join(folder, f'shard-{i:05d}.jsonl'),
      prose,
      min(shard_bytes, total_bytes - i * shard_bytes),
      seed * 100_003 + i,
    )
    for i in range(n)
  ]
  with multiprocessing.get_context('fork').Pool(os.cpu_count()) as pool:
    return pool.map(_write_shard, jobs)


def shingle_set(text: str, n: int = 5) -> set:
  """Word n-grams as datatrove's MinHash sees them (jaxgpt.data.dedup.shingles hashes the
  same words)."""
  words = simplify_text(text).split()
  return {' '.join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str, n: int = 5) -> float:
  sa, sb = shingle_set(a, n), shingle_set(b, n)
  return len(sa & sb) / len(sa | sb)


def near_copy(text: str, changes: int, rng: random.Random, vocabulary) -> str:
  """`text` with `changes` of its words replaced by others."""
  words = text.split(' ')
  for i in rng.sample(range(len(words)), min(changes, len(words))):
    words[i] = rng.choice(vocabulary)
  return ' '.join(words)


def planted_pairs(prose: Prose, n_pairs: int, seed: int = 0):
  """[(original, copy, jaccard)]: copies from nearly identical to mostly rewritten."""
  rng = random.Random(seed)
  out = []
  for i in range(n_pairs):
    doc = prose.document(rng, 12)
    changes = rng.choice([1, 2, 3, 4, 6, 10, 20, 30, 45, 60])
    copy = near_copy(doc, changes, rng, prose.starts)
    out.append((doc, copy, jaccard(doc, copy)))
  return out


def random_batch(batch: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
  """A (batch, seq_len) next-token batch of random ids from 3 (past the special ids), all
  weighted."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, (batch, seq_len + 1), dtype=np.int32)
  return {
    'inputs': tokens[:, :-1],
    'targets': tokens[:, 1:],
    'weights': np.ones((batch, seq_len), np.float32),
  }


def write_gpt2_files(texts, directory: str, merges: int = 500) -> dict:
  """A byte-level BPE vocabulary trained on `texts` (by Hugging Face tokenizers), written in
  GPT-2's layout and under both of its names: encoder.json + vocab.bpe (OpenAI's) and
  vocab.json + merges.txt (Hugging Face's). Ids: the 256 bytes in GPT-2's order, one token
  per merge in merge order, then <|endoftext|>, as in GPT-2's own files."""
  from tokenizers import Tokenizer, models, trainers
  from tokenizers.pre_tokenizers import ByteLevel

  from jaxgpt.data import bpe

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
  alphabet = ByteLevel.alphabet()
  trainer = trainers.BpeTrainer(
    vocab_size=256 + merges, initial_alphabet=alphabet, show_progress=False
  )
  tok.train_from_iterator(texts, trainer)
  pairs = json.loads(tok.to_str())['model']['merges']
  pairs = [p if isinstance(p, list) else p.split(' ') for p in pairs]
  encoder = {c: i for i, c in enumerate(bpe.byte_decoder())}
  for a, b in pairs:
    encoder[a + b] = len(encoder)
  encoder[bpe.EOT] = len(encoder)
  os.makedirs(directory, exist_ok=True)
  paths = {}
  for vocab_name, merges_name in (('encoder.json', 'vocab.bpe'), ('vocab.json', 'merges.txt')):
    paths[vocab_name] = os.path.join(directory, vocab_name)
    paths[merges_name] = os.path.join(directory, merges_name)
    with open(paths[vocab_name], 'w', encoding='utf-8') as f:
      json.dump(encoder, f, ensure_ascii=False)
    with open(paths[merges_name], 'w', encoding='utf-8') as f:
      f.write('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in pairs))
  return paths
