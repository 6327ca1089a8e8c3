"""Text as an array of code points, for word rules and word hashes computed in numpy.

Splitting a document into words and testing each word in Python cost more than the rest
of the `web` profile together; here a document is one uint32 array, each code point's
classes come from one table lookup, and per-word answers (length, has a letter, hash) come
from cumulative sums over the characters. Words are exactly those of `clean.RegexWords`
(`words`) and of the dedup shingles (`letter_runs`); the tests hold both to the regexes.
"""

import re

import numpy as np
from datatrove.utils.text import PUNCTUATION_SET

WORD = 1  # \w
SPACE = 2  # \s
LETTER = 4  # [^\W\d_]: a letter for the dedup shingles
DECIMAL = 8  # \d
ALPHA = 16  # str.isalpha
PUNCT = 32  # in datatrove's PUNCTUATION_SET: a word of these alone is a symbol
JOINER = 64  # ' ’ . -: joins the word characters on either side into one word
OTHER = 128  # neither a word character nor space: punctuation and symbols

_TABLE = []
_POWERS = {}
# An odd multiplier and its inverse modulo 2**64, for position-free substring hashes.
_BASE = 0x100000001B3
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)


def table() -> np.ndarray:
  """Flags per code point (0x110000 of them), built once per process in about 0.3 s."""
  if not _TABLE:
    chars = ''.join(map(chr, range(0x110000)))
    flags = np.zeros(0x110000, np.uint8)
    for flag, pattern in (
      (WORD, r'\w'),
      (SPACE, r'\s'),
      (LETTER, r'[^\W\d_]'),
      (DECIMAL, r'\d'),
      (JOINER, r"['’.-]"),
    ):
      flags[[m.start() for m in re.finditer(pattern, chars)]] |= flag
    flags[np.fromiter(map(str.isalpha, chars), bool, len(chars))] |= ALPHA
    flags[[ord(c) for c in PUNCTUATION_SET]] |= PUNCT
    flags[(flags & (WORD | SPACE)) == 0] |= OTHER
    _TABLE.append(flags)
  return _TABLE[0]


def array(text: str) -> np.ndarray:
  # surrogatepass: a JSON '\ud800' escape decodes to a lone surrogate, a code point too
  return np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), np.uint32)


def runs(kind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Starts and ends of the maximal runs of equal nonzero values of `kind`."""
  padded = np.zeros(kind.size + 2, kind.dtype)
  padded[1:-1] = kind
  edges = np.flatnonzero(padded[1:] != padded[:-1])
  starts, ends = edges[:-1], edges[1:]
  keep = kind[starts] != 0
  return starts[keep], ends[keep]


def words(cp: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Starts and ends of clean.RegexWords's words: runs of word characters (with single
  joiners between them), and runs of characters that are neither word nor space."""
  kind = flags & (WORD | OTHER)  # WORD, OTHER, or 0 for space
  joiners = np.flatnonzero(flags[1:-1] & JOINER) + 1
  joiners = joiners[(kind[joiners - 1] == WORD) & (kind[joiners + 1] == WORD)]
  kind[joiners] = WORD
  return runs(kind)


def counts(mask: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
  """How many characters of each [start, end) span are set in mask."""
  total = np.zeros(mask.size + 1, np.int64)
  np.cumsum(mask, out=total[1:])
  return total[ends] - total[starts]


def _powers(base: int, n: int) -> np.ndarray:
  arr = _POWERS.get(base)
  if arr is None or arr.size < n:
    arr = np.full(max(n, 1 << 16, 2 * (0 if arr is None else arr.size)), base, np.uint64)
    arr[0] = 1
    arr = np.cumprod(arr, dtype=np.uint64)  # wraps modulo 2**64, as the hash means to
    _POWERS[base] = arr
  return arr[:n]


def hashes(cp: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
  """A 64-bit hash of each span's characters that does not depend on where it starts:
  the polynomial sum c_j * BASE**(j - start), from one prefix sum over the document."""
  prefix = np.zeros(cp.size + 1, np.uint64)
  np.cumsum(cp.astype(np.uint64) * _powers(_BASE_INVERSE, cp.size), out=prefix[1:])
  return mix((prefix[ends] - prefix[starts]) * _powers(_BASE, cp.size)[starts])


def mix(x: np.ndarray) -> np.ndarray:
  """MurmurHash3's 64-bit finaliser: every output bit depends on every input bit."""
  x = x ^ (x >> np.uint64(33))
  x = x * np.uint64(0xFF51AFD7ED558CCD)
  x = x ^ (x >> np.uint64(33))
  x = x * np.uint64(0xC4CEB9FE1A85EC53)
  return x ^ (x >> np.uint64(33))
