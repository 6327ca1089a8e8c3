"""Normalisation, quality filters, exact dedup and the train/validation split.

Each filter is a small predicate; `clean` applies them in order and counts what each
removed, and those counts go to the console and into the token store's manifest.
"""
import collections
import hashlib
import unicodedata
from typing import Iterable

from jaxgpt.data.corpus import Document


def content_hash(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def text_fraction(text: str) -> float:
  """Share of characters that are printable or ordinary whitespace."""
  if not text:
    return 0.0
  good = sum(ch.isprintable() or ch in '\n\t\r' for ch in text)
  return good / len(text)


def repeated_line_fraction(text: str) -> float:
  """Share of non-blank lines that repeat an earlier line of the same document."""
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if not lines:
    return 0.0
  return 1.0 - len(set(lines)) / len(lines)


def filters(cfg) -> list[tuple[str, callable]]:
  """(name, keep?) pairs in the order they run; cfg is config.data.clean."""
  out = [('too_short', lambda t: len(t) >= cfg.min_chars)]
  if cfg.max_chars:
    out.append(('too_long', lambda t: len(t) <= cfg.max_chars))
  out.append(('not_text', lambda t: text_fraction(t) >= cfg.min_text_fraction))
  out.append(('repetitive', lambda t: repeated_line_fraction(t) <= cfg.max_repeated_line_fraction))
  return out


def clean(docs: Iterable[Document], cfg) -> tuple[list[Document], dict[str, int]]:
  """Normalises, filters and dedups; returns the kept documents and removal counts."""
  checks = filters(cfg)
  counts = collections.Counter({name: 0 for name, _ in checks})
  counts['duplicate'] = 0
  seen, kept, total = set(), [], 0
  for doc in docs:
    total += 1
    text = unicodedata.normalize(cfg.normalize, doc.text) if cfg.normalize else doc.text
    failed = next((name for name, keep in checks if not keep(text)), None)
    if failed:
      counts[failed] += 1
      continue
    if cfg.dedup:
      digest = content_hash(text)
      if digest in seen:
        counts['duplicate'] += 1
        continue
      seen.add(digest)
    kept.append(Document(doc.name, text))
  return kept, {'input': total, **counts, 'kept': len(kept)}


def split_by_hash(docs: list[Document],
                  val_fraction: float) -> tuple[list[Document], list[Document]]:
  """Assigns each document by its content hash, so the split never depends on order.

  A corpus too small to give both sides a document (one big file, say) is split by
  position instead: the last `val_fraction` of its characters, cut at a line break.
  """
  train, val = [], []
  for doc in docs:
    bucket = int(content_hash(doc.text)[:8], 16) / 0x1_0000_0000
    (val if bucket < val_fraction else train).append(doc)
  if train and val:
    return train, val
  return split_by_position(docs, val_fraction)


def split_by_position(docs: list[Document], val_fraction: float):
  total = sum(len(d.text) for d in docs)
  cut = int(total * (1 - val_fraction))
  train, val, pos = [], [], 0
  for doc in docs:
    end = pos + len(doc.text)
    if end <= cut:
      train.append(doc)
    elif pos >= cut:
      val.append(doc)
    else:  # the cut falls inside this document: break it at a line boundary
      at = doc.text.rfind('\n', 0, cut - pos) + 1 or cut - pos
      train.append(Document(doc.name + '[train]', doc.text[:at]))
      val.append(Document(doc.name + '[val]', doc.text[at:]))
    pos = end
  return [d for d in train if d.text], [d for d in val if d.text]
