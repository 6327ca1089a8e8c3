"""Gopher's quality rules and C4's line and page rules, decision for decision datatrove's.

datatrove's `GopherQualityFilter` and `C4QualityFilter` are the published rules (Rae et al.
2021, appendix A; Raffel et al. 2020, section 2.2), but they test words and lines one
character at a time in Python, which made them most of the `web` profile's time. These
filters make the same decisions, with the same reasons and line counts: Gopher's from
numpy over the document's code points (codepoints.py), C4's from str methods that run in
C. tests/test_rules.py holds both to datatrove's on crafted documents and generated prose.
"""

import re

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.pipeline.filters.gopher_quality_filter import STOP_WORDS

from jaxgpt.data import codepoints

_POLICY = re.compile('|'.join(map(re.escape, POLICY_SUBSTRINGS)))
_BULLETS = ('•', '-')
_ELLIPSES = ('...', '…')


class GopherQuality(BaseFilter):
  """Word count, mean word length, '#' and ellipses per word, bullet and ellipsis lines,
  words with a letter, and stop words; each threshold None or 0 turns its rule off. Words
  are clean.RegexWords's."""

  name = 'gopher_quality'

  def __init__(
    self,
    min_doc_words=50,
    max_doc_words=100_000,
    min_avg_word_length=3,
    max_avg_word_length=10,
    max_symbol_word_ratio=0.1,
    max_bullet_lines_ratio=0.9,
    max_ellipsis_lines_ratio=0.3,
    min_alpha_words_ratio=0.8,
    min_stop_words=2,
  ):
    super().__init__()
    self.min_words, self.max_words = min_doc_words, max_doc_words
    self.min_mean, self.max_mean = min_avg_word_length, max_avg_word_length
    self.max_symbols = max_symbol_word_ratio
    self.max_bullets, self.max_ellipsis_lines = max_bullet_lines_ratio, max_ellipsis_lines_ratio
    self.min_alpha, self.min_stop_words = min_alpha_words_ratio, min_stop_words
    self.longest_stop_word = max(map(len, STOP_WORDS))
    self.stop_words = np.unique(
      _short_word_codes(
        codepoints.array(' '.join(STOP_WORDS)), *_spans(STOP_WORDS), self.longest_stop_word
      )
    )

  def filter(self, doc: Document):
    text = doc.text
    cp = codepoints.array(text)
    flags = codepoints.table()[cp]
    starts, ends = codepoints.words(cp, flags)
    n_words = starts.size
    # a word is a symbol when every character is punctuation
    lengths = (ends - starts)[codepoints.counts((flags & codepoints.PUNCT) == 0, starts, ends) > 0]
    if self.min_words and lengths.size < self.min_words:
      return False, 'gopher_short_doc'
    if self.max_words and lengths.size > self.max_words:
      return False, 'gopher_long_doc'
    mean = lengths.sum() / lengths.size if lengths.size else float('nan')
    if self.min_mean and mean < self.min_mean:
      return False, 'gopher_below_avg_threshold'
    if self.max_mean and mean > self.max_mean:
      return False, 'gopher_above_avg_threshold'
    if self.max_symbols and text.count('#') / n_words > self.max_symbols:
      return False, 'gopher_too_many_hashes'
    if self.max_symbols and (text.count('...') + text.count('…')) / n_words > self.max_symbols:
      return False, 'gopher_too_many_ellipsis'
    lines = text.splitlines()
    if self.max_bullets and (
      sum(s.lstrip().startswith(_BULLETS) for s in lines) / len(lines) > self.max_bullets
    ):
      return False, 'gopher_too_many_bullets'
    if self.max_ellipsis_lines and (
      sum(s.rstrip().endswith(_ELLIPSES) for s in lines) / len(lines) > self.max_ellipsis_lines
    ):
      return False, 'gopher_too_many_end_ellipsis'
    alpha = codepoints.counts((flags & codepoints.ALPHA) != 0, starts, ends) > 0
    if self.min_alpha and alpha.sum() / n_words < self.min_alpha:
      return False, 'gopher_below_alpha_threshold'
    if self.min_stop_words and self._stop_words(cp, starts, ends) < self.min_stop_words:
      return False, 'gopher_enough_stop_words'
    return True

  def _stop_words(self, cp, starts, ends) -> int:
    """How many different stop words the document has."""
    codes = _short_word_codes(cp, starts, ends, self.longest_stop_word)
    return sum(bool((codes == s).any()) for s in self.stop_words)


def _spans(words):
  ends = np.cumsum([len(w) + 1 for w in words]) - 1
  return ends - [len(w) for w in words], ends


def _short_word_codes(cp, starts, ends, longest):
  """One exact integer per word of at most `longest` (<= 7) Latin-1 characters: its
  length and its code points, a byte each; words longer or not Latin-1 are left out."""
  lengths = ends - starts
  short = lengths <= longest
  starts, lengths = starts[short], lengths[short]
  chars = np.concatenate([cp, np.zeros(longest, cp.dtype)])[
    starts[:, None] + np.arange(longest)
  ].astype(np.uint64)
  chars[np.arange(longest) >= lengths[:, None]] = 0
  latin = (chars < 256).all(axis=1)
  shifts = np.arange(longest, dtype=np.uint64) * np.uint64(8)
  return ((chars << shifts).sum(axis=1) | (lengths.astype(np.uint64) << np.uint64(56)))[latin]


class C4Quality(BaseFilter):
  """Keeps the lines that end in terminal punctuation, have enough words, no overlong word,
  no 'javascript' and no cookie or terms-of-use phrase; drops the page for 'lorem ipsum', a
  curly bracket, or too few sentences in the lines kept (-1 turns a number rule off)."""

  name = 'c4'

  def __init__(
    self,
    words,
    min_num_sentences=5,
    min_words_per_line=3,
    max_word_length=1000,
    filter_no_terminal_punct=True,
    filter_lorem_ipsum=True,
    filter_javascript=True,
    filter_curly_bracket=True,
    filter_policy=True,
  ):
    super().__init__()
    self.words = words
    self.min_sentences, self.min_words = min_num_sentences, min_words_per_line
    self.max_word_length = max_word_length
    self.terminal, self.lorem = filter_no_terminal_punct, filter_lorem_ipsum
    self.javascript, self.curly = filter_javascript, filter_curly_bracket
    self.policy = filter_policy

  def filter(self, doc: Document):
    sentences, kept = 0, []
    counts = dict.fromkeys(
      (
        'line-total',
        'line-filter-too_long_word',
        'line-filter-no_terminal_punc',
        'line-filter-too_few_words',
        'line-filter-javascript',
        'line-filter-policy',
        'line-kept',
      ),
      0,
    )
    try:
      for line in doc.text.splitlines():
        line = line.strip()
        words = line.split()
        counts['line-total'] += 1
        if self.max_word_length != -1 and words and max(map(len, words)) > self.max_word_length:
          counts['line-filter-too_long_word'] += 1
          continue
        if '[' in line:
          line = CITATION_REGEX.sub('', line)
        if self.terminal and (not line.endswith(END_PUNCTUATION) or line.endswith('...')):
          counts['line-filter-no_terminal_punc'] += 1
          continue
        if len(words) < self.min_words:
          counts['line-filter-too_few_words'] += 1
          continue
        lower = line.lower()
        if self.lorem and 'lorem ipsum' in lower:
          return False, 'lorem_ipsum'
        if self.javascript and 'javascript' in lower:
          counts['line-filter-javascript'] += 1
          continue
        if self.curly and '{' in line:
          return False, 'curly_bracket'
        if self.policy and _POLICY.search(lower):
          counts['line-filter-policy'] += 1
          continue
        if self.min_sentences != -1:
          sentences += max(len(self.words.span_tokenize(line)), 1)
        kept.append(line)
        counts['line-kept'] += 1
    finally:
      for key, value in counts.items():
        if value:
          self.stat_update(key, value=value)
    if sentences < self.min_sentences:
      return False, 'too_few_sentences'
    doc.text = '\n'.join(kept).strip()
    return True
