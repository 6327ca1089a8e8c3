import pytest
from datatrove.data import Document

from configs import base
from jaxgpt.data import clean

GOOD_CODE = 'x = compute(value)\ny = other(x)\nreturn y\n'
MODULE = (
  'import os\n\n\ndef load(path):\n    with open(path) as f:\n        return {\n'
  '            "name": os.path.basename(path), "text": f.read()}\n'
)
# Prose that passes every 'web' rule: English, enough words and sentences, each line ending
# in terminal punctuation.
GOOD_PROSE = '\n'.join(
  [
    'The river town was quiet in the early morning, and the bakers were the first to wake.',
    'They lit the ovens before the sun came up over the hills to the east of the valley.',
    "By six o'clock the smell of fresh bread had reached the market square and the harbour.",
    'Fishermen who had been out all night stopped there to buy a loaf on their way home.',
    'Most of them said that it was the best part of the day, and that they would not trade it.',
    'Children walked to the school with their parents, talking about the holidays to come.',
  ]
)


def _cfg(**kw):
  c = base.data_config().clean
  c.min_chars = 10
  for k, v in kw.items():
    c[k] = v
  return c


def _run(profile, texts, cfg=None):
  """The kept texts and every step's counts, through the real chain for `profile`."""
  chain = clean.steps(profile, cfg or _cfg())
  docs = (Document(t, str(i)) for i, t in enumerate(texts))
  for step in chain:
    docs = step(docs)
  kept = [d.text for d in docs]
  counts = {}
  for step in chain:
    for k, v in step.stats.stats.items():
      counts[f'{step.name}.{k}'] = counts.get(f'{step.name}.{k}', 0) + v.total
  return kept, counts


def test_too_short_and_too_long():
  kept, counts = _run('code', ['tiny', GOOD_CODE, GOOD_CODE * 50], _cfg(max_chars=500))
  assert kept == [GOOD_CODE]
  assert counts['basic.dropped_too_short'] == 1 and counts['basic.dropped_too_long'] == 1
  assert counts['read.documents'] == 3 and counts['basic.documents'] == 1
  assert counts['basic.bytes'] == len(GOOD_CODE)


def test_mostly_non_text_and_repetitive_lines():
  binary = ''.join(chr(c) for c in range(1, 31)) * 4
  spam = 'buy now\n' * 20 + 'ok\n'
  kept, counts = _run('code', [binary, spam, GOOD_CODE])
  assert kept == [GOOD_CODE]
  assert counts['basic.dropped_not_text'] == 1 and counts['basic.dropped_repetitive'] == 1


def test_unicode_normalisation():
  kept, _ = _run('code', ['cafe\u0301 = 1\nprint(cafe)\n'])
  assert kept == ['caf\u00e9 = 1\nprint(cafe)\n']
  kept, _ = _run('code', ['cafe\u0301 = 1\nprint(cafe)\n'], _cfg(normalize=''))
  assert kept == ['cafe\u0301 = 1\nprint(cafe)\n']


def test_web_profile_keeps_prose_and_drops_what_each_rule_names():
  french = GOOD_PROSE.replace('\n', ' ')
  french = (
    'La ville était calme au petit matin, et les boulangers étaient les premiers à se '
    'lever. Ils allumaient les fours avant que le soleil ne se lève sur les collines. ' * 4
  )
  few_words = 'The end of the story, and the start of the next one.'
  no_stop_words = '\n'.join(
    f'Fresh {w}s grow slowly in warm gardens near quiet rivers, so farmers pick them early.'
    for w in ('apple', 'melon', 'grape', 'lemon', 'peach', 'mango')
  )
  bullets = '\n'.join(f'- item {line}' for line in GOOD_PROSE.splitlines())
  lorem = GOOD_PROSE + '\nLorem ipsum dolor sit amet, and the rest of it is here.'
  braces = GOOD_PROSE + '\nThe function returns {x} to the caller of the function.'
  kept, counts = _run(
    'web', [GOOD_PROSE, french, few_words, no_stop_words, bullets, lorem, braces, MODULE]
  )
  assert kept == [GOOD_PROSE]
  assert counts['language.dropped_language_fr'] == 1
  assert counts['gopher_quality.dropped_gopher_short_doc'] >= 1
  assert counts['gopher_quality.dropped_gopher_enough_stop_words'] == 1
  assert counts['c4.dropped_lorem_ipsum'] == 1
  assert counts['c4.dropped_curly_bracket'] == 1
  kept, _ = _run('code', [MODULE])
  assert kept == [MODULE]  # the code profile keeps what prose rules drop


def test_c4_drops_lines_without_terminal_punctuation():
  menu = 'Home | About | Contact'
  kept, _ = _run('web', [menu + '\n' + GOOD_PROSE])
  assert kept == [GOOD_PROSE]


def test_language_threshold_and_languages_are_config():
  cfg = _cfg()
  cfg.language.languages = ('fr',)
  kept, counts = _run('web', [GOOD_PROSE], cfg)
  assert kept == [] and counts['language.dropped_language_en'] == 1
  cfg.language.languages = ()
  kept, _ = _run('web', [GOOD_PROSE], cfg)
  assert kept == [GOOD_PROSE]  # no language ID at all


def test_regex_words_split_words_and_punctuation():
  assert clean.WORDS.word_tokenize("It's 3.5 km, isn't it?") == [
    "It's",
    '3.5',
    'km',
    ',',
    "isn't",
    'it',
    '?',
  ]
  assert clean.WORDS.sent_tokenize('One here. Two "there!" Three') == [
    'One here.',
    'Two "there!"',
    'Three',
  ]


@pytest.mark.parametrize('text', ['a' * 200, 'héllo wörld ' * 30])
def test_val_bucket_is_a_function_of_the_text(text):
  assert clean.val_bucket(text) == clean.val_bucket(str(text))
  assert 0 <= clean.val_bucket(text) < 1
