"""Our Gopher and C4 rules decide as datatrove's do: same kept documents, reasons, text and
line counts, on crafted documents that trip each rule and on mutated generated prose."""

import random

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters.c4_filters import C4QualityFilter
from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter

from jaxgpt.data.synthetic import Prose
from jaxgpt.data import clean
from jaxgpt.data import rules

LINE = 'The bakers were the first to wake, and they lit the ovens before the sun came up.'
CRAFTED = [
  LINE,  # too few words
  '\n'.join([LINE] * 8),
  '\n'.join([LINE] * 8) + '\n' + 'word ' * 200_000,  # too many words
  '\n'.join(['Supercalifragilisticexpialidocious antidisestablishmentarianism.'] * 30),
  '\n'.join(['A b c d e f g h i j k l m n o p q r s t u v w x y z.'] * 10),
  '\n'.join([LINE + ' #tag #tag #tag #tag'] * 8),
  '\n'.join([LINE + ' and so on...'] * 8),
  '\n'.join([' '.join(w + '...' for w in LINE.split()[:-1]) + ' up.'] * 8),
  '\n'.join([LINE + ' and so on…'] * 8),
  '\n'.join(['- ' + LINE] * 10 + [LINE]),
  '\n'.join(['• ' + LINE] * 10),
  '\n'.join([LINE + ' 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20'] * 8),
  '\n'.join(['Fresh apples grow slowly in warm gardens near quiet rivers, so pick them.'] * 8),
  '\n'.join([LINE] * 8 + ['Lorem ipsum dolor sit amet, consectetur adipiscing elit.']),
  '\n'.join([LINE] * 8 + ['Please enable JavaScript to view this page properly.']),
  '\n'.join([LINE] * 8 + ['The function returns {x} to its caller, as it should.']),
  '\n'.join([LINE] * 8 + ['This site uses cookies to improve your experience here.']),
  '\n'.join([LINE] * 8 + ['Read our Privacy Policy for the details of it all.']),
  '\n'.join([LINE] * 8 + ['Home | About | Contact', 'A ' + 'x' * 1200 + ' word.']),
  '\n'.join([LINE + '[1] It was said[citation needed] before[edit].'] * 8),
  '\n'.join(['Too short.', 'Two words!', LINE, LINE, '"Quoted end."', "'Single end.'"]),
  '  \n\n'.join([LINE + ' One more. And more! Really? Yes.'] * 2),
  '### #### ##### ...... \n' * 30,
]


def _prose_variants(n=150, seed=0):
  prose, rng = Prose(max_files=60), random.Random(seed)
  out = []
  for i in range(n):
    lines = prose.document(rng, rng.randint(2, 30)).split('\n')
    for j in range(len(lines)):
      r = rng.random()
      if r < 0.1:
        lines[j] = rng.choice(['- ', '• ', '  * ']) + lines[j]
      elif r < 0.15:
        lines[j] = lines[j].rstrip('.') + rng.choice(['...', '…', '', ' #x', ' {y}'])
      elif r < 0.2:
        lines[j] = rng.choice(['Contact us', 'We use cookies.', 'javascript: void.'])
    out.append('\n'.join(lines))
  return out


def _decide(step, text):
  doc = Document(text, '0')
  result = step.filter(doc)
  return result, doc.text


@pytest.mark.parametrize('settings', [{}, {'min_doc_words': 10, 'max_symbol_word_ratio': 0.5}])
def test_gopher_quality_decides_as_datatrove(settings):
  theirs = GopherQualityFilter(language=clean.WORDS, **settings)
  ours = rules.GopherQuality(**settings)
  texts = CRAFTED + _prose_variants()
  decisions = [_decide(ours, t) for t in texts]
  assert decisions == [_decide(theirs, t) for t in texts]
  assert sum(r is True for r, _ in decisions) > 20
  if not settings:  # the crafted documents trip every rule
    assert {r[1] for r, _ in decisions if r is not True} == {
      'gopher_short_doc',
      'gopher_long_doc',
      'gopher_above_avg_threshold',
      'gopher_below_avg_threshold',
      'gopher_too_many_hashes',
      'gopher_too_many_ellipsis',
      'gopher_too_many_bullets',
      'gopher_too_many_end_ellipsis',
      'gopher_below_alpha_threshold',
      'gopher_enough_stop_words',
    }


@pytest.mark.parametrize(
  'settings',
  [{}, {'min_num_sentences': 2, 'filter_curly_bracket': False, 'filter_no_terminal_punct': False}],
)
def test_c4_decides_as_datatrove(settings):
  theirs = C4QualityFilter(language=clean.WORDS, **settings)
  ours = rules.C4Quality(clean.WORDS, **settings)
  texts = CRAFTED + _prose_variants(seed=1)
  decisions = [_decide(ours, t) for t in texts]
  assert decisions == [_decide(theirs, t) for t in texts]
  assert {k: v.total for k, v in ours.stats.stats.items()} == {
    k: v.total for k, v in theirs.stats.stats.items()
  }
  assert sum(r is True for r, _ in decisions) > 20
  assert {r[1] for r, _ in decisions if r is not True} >= (
    {'lorem_ipsum', 'too_few_sentences'} | ({'curly_bracket'} if not settings else set())
  )
