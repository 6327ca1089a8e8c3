from configs import base
from jaxgpt.data import clean
from jaxgpt.data.corpus import Document


def _cfg(**kw):
  c = base.data_config().clean
  c.min_chars = 10
  for k, v in kw.items():
    c[k] = v
  return c


def _docs(*texts):
  return [Document(f'd{i}', t) for i, t in enumerate(texts)]


GOOD = 'x = compute(value)\ny = other(x)\nreturn y\n'


def test_too_short_and_too_long():
  kept, counts = clean.clean(_docs('tiny', GOOD, GOOD * 50), _cfg(max_chars=500))
  assert [d.text for d in kept] == [GOOD]
  assert counts['too_short'] == 1 and counts['too_long'] == 1 and counts['kept'] == 1


def test_mostly_non_text():
  binary = ''.join(chr(c) for c in range(1, 31)) * 4
  kept, counts = clean.clean(_docs(binary, GOOD), _cfg())
  assert counts['not_text'] == 1 and [d.text for d in kept] == [GOOD]


def test_very_repetitive_lines():
  spam = 'buy now\n' * 20 + 'ok\n'
  kept, counts = clean.clean(_docs(spam, GOOD), _cfg())
  assert counts['repetitive'] == 1 and [d.text for d in kept] == [GOOD]


def test_exact_duplicates_after_normalisation():
  composed, decomposed = 'caf\u00e9 = 1\nprint(cafe)\n', 'cafe\u0301 = 1\nprint(cafe)\n'
  kept, counts = clean.clean(_docs(composed, decomposed, GOOD, GOOD), _cfg())
  assert counts['duplicate'] == 2 and len(kept) == 2
  assert kept[0].text == composed  # NFC
  kept, counts = clean.clean(_docs(composed, decomposed), _cfg(normalize='', dedup=True))
  assert counts['duplicate'] == 0


def test_split_by_hash_is_order_independent():
  docs = _docs(*[f'{GOOD}# {i}\n' for i in range(200)])
  train, val = clean.split_by_hash(docs, 0.2)
  train2, val2 = clean.split_by_hash(docs[::-1], 0.2)
  assert {d.text for d in val} == {d.text for d in val2}
  assert 20 < len(val) < 60 and len(train) + len(val) == 200


def test_single_document_is_split_by_position():
  text = ''.join(f'line {i}\n' for i in range(100))
  train, val = clean.split_by_hash(_docs(text), 0.1)
  assert train[0].text + val[0].text == text
  assert val[0].text.startswith('line 9') and len(val[0].text) < 0.15 * len(text)
