"""GPT-2's byte-level BPE tokenizer (`data.tokenizer.kind='gpt2'`), run by tiktoken.

The vocabulary comes from local files, never from the network: OpenAI's `encoder.json` +
`vocab.bpe`, or Hugging Face's `vocab.json` + `merges.txt` (the same two files renamed).
tiktoken ranks merges by token id, which GPT-2's files satisfy: the 256 byte tokens, then
one token per merge in merge order, then `<|endoftext|>`; files that are not laid out that
way are refused with the reason. The files themselves travel with the tokenizer (its
`proto`, saved in the data directory and in every checkpoint), so an exported run can write
them back for Hugging Face.

Text is encoded as ordinary text: a literal "<|endoftext|>" inside a document is not a
document boundary. `<|endoftext|>` ends documents (eod) and pads (GPT-2 has no pad token).
"""

import functools
import hashlib
import json
import os

import numpy as np
import tiktoken

from jaxgpt.errors import UserError

EOT = '<|endoftext|>'
# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, runs of whitespace
# (tiktoken's r50k_base pattern; Hugging Face's ByteLevel pre-tokenizer splits the same way).
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.cache
def byte_decoder() -> dict[str, int]:
  """GPT-2's map from the printable character standing for each byte back to the byte:
  printable Latin-1 bytes stand for themselves, the others for chr(256 + n) in order."""
  printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != ' ']
  others = [b for b in range(256) if b not in printable]
  table = {chr(b): b for b in printable}
  table.update({chr(256 + n): b for n, b in enumerate(others)})
  return table


class Gpt2Tokenizer:
  """Encode/decode with GPT-2's vocabulary; the interface of tokenizer.Tokenizer."""

  kind = 'gpt2'

  def __init__(self, proto: bytes):
    self.proto = proto
    files = json.loads(proto)
    self.encoder, self.merges = files['encoder'], files['merges']
    if EOT not in self.encoder:
      raise UserError(f"the GPT-2 vocabulary has no {EOT} token; use GPT-2's encoder.json")
    self.eod_id = self.pad_id = self.encoder[EOT]
    specials = {k: v for k, v in self.encoder.items() if k in (EOT, '<|startoftext|>')}
    self.enc = tiktoken.Encoding(
      'jaxgpt-gpt2',
      pat_str=PATTERN,
      mergeable_ranks=_ranks(self.encoder, self.merges),
      special_tokens=specials,
    )

  @property
  def vocab_size(self) -> int:
    return self.enc.n_vocab

  @property
  def sha256(self) -> str:
    return hashlib.sha256(self.proto).hexdigest()

  def encode(self, text: str) -> list[int]:
    return self.enc.encode_ordinary(text)

  def encode_batch(self, texts: list[str], threads: int = 0) -> list[list[int]]:
    return self.enc.encode_ordinary_batch(list(texts), num_threads=threads or os.cpu_count() or 1)

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
    return self.enc.decode_bytes(ids).decode('utf-8', errors='replace')

  def byte_lengths(self, padded_size: int) -> np.ndarray:
    """UTF-8 bytes each id stands for (0 for <|endoftext|> and padding): for bits per byte."""
    out = np.zeros(max(padded_size, self.vocab_size), np.int32)
    special = set(self.enc.special_tokens_set)
    for token, i in self.encoder.items():
      if token not in special:
        out[i] = len(token)  # one character per byte in GPT-2's files
    return out

  def save(self, path: str):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
      f.write(self.proto)
    os.replace(tmp, path)

  def hf_files(self) -> dict[str, str]:
    """The files Hugging Face's GPT2TokenizerFast reads: vocab.json and merges.txt."""
    return {
      'vocab.json': json.dumps(self.encoder, ensure_ascii=False),
      'merges.txt': '#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in self.merges),
    }


def _ranks(encoder: dict, merges: list) -> dict[bytes, int]:
  """tiktoken's mergeable ranks (token bytes -> id), checked against the merge order."""
  decode = byte_decoder()
  try:
    ranks = {bytes(decode[c] for c in k): v for k, v in encoder.items() if not k.startswith('<|')}
  except KeyError:
    raise UserError(
      "the vocabulary is not byte-level (a token has a character outside GPT-2's byte "
      "alphabet); data.tokenizer.kind='gpt2' reads GPT-2's encoder.json/vocab.json"
    ) from None
  for n, (a, b) in enumerate(merges):
    token = a + b
    if encoder.get(token) != 256 + n:
      raise UserError(
        f'merge {n} ({a!r} + {b!r}) has id {encoder.get(token)} in the vocabulary, not '
        f"{256 + n}: tiktoken needs GPT-2's layout (256 byte tokens, then one token per "
        'merge in merge order); use files from the same GPT-2 release'
      )
  return ranks


def from_files(vocab_path: str, merges_path: str) -> Gpt2Tokenizer:
  """The tokenizer of encoder.json (or vocab.json) and vocab.bpe (or merges.txt)."""
  for field, path in (('vocab_path', vocab_path), ('merges_path', merges_path)):
    if not path or not os.path.isfile(path):
      raise UserError(
        f"data.tokenizer.{field}={path!r} is not a file: data.tokenizer.kind='gpt2' reads "
        'encoder.json (or vocab.json) and vocab.bpe (or merges.txt) from local paths'
      )
  try:
    with open(vocab_path, encoding='utf-8') as f:
      encoder = json.load(f)
    with open(merges_path, encoding='utf-8') as f:
      lines = f.read().split('\n')
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{vocab_path} or {merges_path} does not read as GPT-2's files: {e}") from None
  merges = [tuple(line.split(' ')) for line in lines if line and not line.startswith('#version')]
  bad = next((line for line in merges if len(line) != 2), None)
  if not isinstance(encoder, dict) or bad is not None:
    raise UserError(
      f'{vocab_path} must be a JSON object of token -> id and {merges_path} lines of two '
      f'tokens (found {" ".join(bad) if bad else type(encoder).__name__!r})'
    )
  proto = json.dumps({'encoder': encoder, 'merges': merges}, ensure_ascii=False).encode()
  return Gpt2Tokenizer(proto)


def is_gpt2(proto: bytes) -> bool:
  """Whether a saved tokenizer is this kind (a JSON object) rather than SentencePiece's."""
  return proto[:1] == b'{'
