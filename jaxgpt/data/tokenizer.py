"""Tokenizers: SentencePiece ones trained on the corpus, or GPT-2's (bpe.py); both
round-trip any UTF-8 text exactly.

SentencePiece's defaults are made for prose: they normalise text, collapse runs of spaces
and treat newlines as sentence breaks. The default corpus is code, whose indentation is its
meaning, so we train on whole documents (cut at line breaks into pieces SentencePiece
accepts) with identity normalisation, no dummy prefix, kept whitespace, newline and tab as
pieces of their own, and byte fallback for characters outside the vocabulary.
SentencePiece also writes a space as U+2581; a literal U+2581 in the text is escaped so
that it survives too.
"""

import hashlib
import io
import os
import re

import numpy as np
import sentencepiece as spm

from jaxgpt.data import bpe
from jaxgpt.errors import UserError

PAD_ID, UNK_ID, EOD_ID = 0, 1, 2  # EOD (SentencePiece's eos) separates documents
_SPACE = '\u2581'
_ESC = '\ue000'  # a private-use character introduces the escapes below
_ESCAPES = {_SPACE: _ESC + 's', _ESC: _ESC + 'e'}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}
_CHUNK_CHARS = 2048  # SentencePiece skips training "sentences" longer than its limit


def _escape(text: str) -> str:
  if _SPACE not in text and _ESC not in text:
    return text
  return re.sub(f'[{_SPACE}{_ESC}]', lambda m: _ESCAPES[m.group()], text)


def _unescape(text: str) -> str:
  if _ESC not in text:
    return text
  return re.sub(f'{_ESC}([se])', lambda m: _UNESCAPES[m.group(1)], text)


class Tokenizer:
  """Encode/decode with the special ids jaxgpt relies on."""

  kind = 'sentencepiece'

  def __init__(self, proto: bytes):
    self.proto = proto
    self.sp = spm.SentencePieceProcessor(model_proto=proto)
    self.eod_id = EOD_ID
    self.pad_id = PAD_ID

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  @property
  def sha256(self) -> str:
    return hashlib.sha256(self.proto).hexdigest()

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(_escape(text))

  def encode_batch(self, texts: list[str], threads: int = 0) -> list[list[int]]:
    return self.sp.encode([_escape(t) for t in texts], num_threads=threads or os.cpu_count() or 1)

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
    return _unescape(self.sp.decode(ids))

  def byte_lengths(self, padded_size: int) -> np.ndarray:
    """UTF-8 bytes each id stands for (0 for special and padding ids): for bits per byte."""
    out = np.zeros(max(padded_size, self.vocab_size), np.int32)
    for i in range(self.vocab_size):
      if self.sp.is_byte(i):
        out[i] = 1
      elif not (self.sp.is_control(i) or self.sp.is_unknown(i)):
        out[i] = len(self.sp.id_to_piece(i).replace(_SPACE, ' ').encode('utf-8'))
    return out

  def save(self, path: str):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
      f.write(self.proto)
    os.replace(tmp, path)


def training_chunks(texts, limit: int) -> list[str]:
  """Documents cut at line breaks into pieces of about _CHUNK_CHARS; evenly subsampled."""
  chunks = []
  for text in texts:
    text = _escape(text)
    start = 0
    while start < len(text):
      end = text.find('\n', start + _CHUNK_CHARS)
      end = len(text) if end < 0 else end + 1
      chunks.append(text[start:end])
      start = end
  if limit and len(chunks) > limit:
    keep = np.linspace(0, len(chunks) - 1, limit).astype(int)
    chunks = [chunks[i] for i in keep]
  return chunks


def from_bytes(proto: bytes):
  """A saved tokenizer (its `proto`), of whichever kind it is."""
  return bpe.Gpt2Tokenizer(proto) if bpe.is_gpt2(proto) else Tokenizer(proto)


def load(path: str):
  """A tokenizer file as `save` wrote it (or a SentencePiece .model)."""
  if not os.path.isfile(path):
    raise UserError(
      f'data.tokenizer.model_path: {path!r} does not exist; '
      'name a SentencePiece .model file or leave it empty to train one'
    )
  with open(path, 'rb') as f:
    return from_bytes(f.read())


KINDS = ('bpe', 'unigram', 'char', 'gpt2')


def check_kind(cfg):
  if cfg.kind not in KINDS:
    raise UserError(
      f"data.tokenizer.kind={cfg.kind!r}: use 'bpe', 'unigram' or 'char' (SentencePiece, "
      "trained on the corpus) or 'gpt2' (GPT-2's files, data.tokenizer.vocab_path and merges_path)"
    )


def needs_training(cfg) -> bool:
  """Whether config.data.tokenizer makes a tokenizer from the corpus (else it reads files)."""
  return cfg.kind != 'gpt2' and not cfg.model_path


def train(texts, cfg) -> Tokenizer:
  """Trains on `texts` (the training split only); cfg is config.data.tokenizer."""
  check_kind(cfg)
  if cfg.kind == 'gpt2':
    raise UserError("data.tokenizer.kind='gpt2' is GPT-2's fixed vocabulary: read, not trained")
  minimum = 256 + 8 if cfg.byte_fallback else 16
  if cfg.vocab_size < minimum:
    raise UserError(
      f'data.tokenizer.vocab_size={cfg.vocab_size} is too small: byte fallback '
      f'alone needs 256 ids; use at least {minimum}'
    )
  chunks = training_chunks(texts, cfg.train_chunks)
  if not chunks:
    raise UserError('no training text for the tokenizer: the corpus is empty after cleaning')
  model = io.BytesIO()
  try:
    _train_sentencepiece(chunks, model, cfg)
  except RuntimeError as e:
    most = re.search(r'value <= (\d+)', str(e))
    if not most:
      raise
    raise UserError(
      f'data.tokenizer.vocab_size={cfg.vocab_size} is more than this corpus '
      f'supports; use at most {most.group(1)}'
    ) from None
  return Tokenizer(model.getvalue())


def _train_sentencepiece(chunks, model, cfg):
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(chunks),
    model_writer=model,
    model_type=cfg.kind,
    vocab_size=cfg.vocab_size,
    hard_vocab_limit=cfg.kind != 'char',
    normalization_rule_name='identity',
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    allow_whitespace_only_pieces=True,
    split_digits=False,
    user_defined_symbols=['\n', '\t'],
    byte_fallback=cfg.byte_fallback,
    character_coverage=0.9995 if cfg.byte_fallback else 1.0,
    max_sentence_length=1 << 20,
    input_sentence_size=0,
    pad_id=PAD_ID,
    unk_id=UNK_ID,
    eos_id=EOD_ID,
    bos_id=-1,
    num_threads=os.cpu_count() or 1,
    minloglevel=2,
  )


def train_or_load(texts, cfg):
  check_kind(cfg)
  if cfg.kind == 'gpt2':
    return bpe.from_files(cfg.vocab_path, cfg.merges_path)
  if cfg.model_path:
    return load(cfg.model_path)
  return train(texts, cfg)
