"""The words found in numpy are exactly the regexes' words, and their hashes are a function
of the word alone."""

import random

import numpy as np
import pytest

from jaxgpt.data.synthetic import Prose
from jaxgpt.data import clean
from jaxgpt.data import codepoints
from jaxgpt.data import dedup

TRICKY = [
  '',
  ' ',
  'a',
  "It's 3.5 km, isn't it? e.g. well-known -- x.-y a..b 'quoted' end.",
  'snake_case __init__ ＡＢＣ１２３ x²y 3.14 ½ İstanbul ΣΊΣΥΦΟΣ 中文字符 naïve café',
  'tab\there\r\nline\x0bfeed\x85next\u2028sep  \u00a0nbsp',
  'emoji 🙂🙂 ok!!! ?!',
  '...',
  "don’t rock’n’roll o'clock 'tis x- -y",
  'lone \ud800 surrogate \udfff here',
  'mixed123abc 456 def7',
  '#hashtag @user http://example.com/a-b.c?d=e',
]


def _prose():
  prose, rng = Prose(max_files=40), random.Random(3)
  return '\n'.join(prose.document(rng, rng.randint(1, 20)) for _ in range(100))


@pytest.mark.parametrize('text', TRICKY + [_prose()])
def test_words_are_regex_words(text):
  cp = codepoints.array(text)
  starts, ends = codepoints.words(cp, codepoints.table()[cp])
  assert [text[a:b] for a, b in zip(starts, ends)] == clean.WORDS.word_tokenize(text)


@pytest.mark.parametrize('text', TRICKY + [_prose()])
def test_dedup_words_are_its_regex_words(text):
  cp, starts, ends = dedup.word_runs(text)
  lower = text.lower()
  assert [lower[a:b] for a, b in zip(starts, ends)] == dedup.WORDS.findall(lower)


def test_hashes_depend_on_the_word_not_its_place():
  text = 'apple pear apple plum pear apples appl'
  cp = codepoints.array(text)
  starts, ends = codepoints.words(cp, codepoints.table()[cp])
  h = codepoints.hashes(cp, starts, ends).tolist()
  assert h[0] == h[2] and h[1] == h[4]
  assert len({h[0], h[1], h[3], h[5], h[6]}) == 5
  alone = codepoints.hashes(codepoints.array('apple'), np.array([0]), np.array([5]))
  assert alone[0] == h[0]
