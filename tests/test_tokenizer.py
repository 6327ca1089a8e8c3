import ml_collections
import pytest

from jaxgpt.data import tokenizer as tokenizer_lib
from jaxgpt.errors import UserError

TRICKY = [
  '    def f(x):\n\treturn  x   \n\n\n',
  'trailing spaces   ',
  ' leading space',
  '\r\n windows\r\n',
  'héllo wörld 世界 🎉 \x00\x7f',
  'a literal \u2581 and \ue000s escape',
  '',
]


def _cfg(kind, vocab):
  return ml_collections.ConfigDict(
    dict(kind=kind, vocab_size=vocab, byte_fallback=True, train_chunks=10_000, model_path='')
  )


@pytest.fixture(scope='module')
def texts(corpus_dir):
  import pathlib

  return [p.read_text() for p in sorted(pathlib.Path(corpus_dir).glob('*.py'))]


@pytest.mark.parametrize('kind,vocab', [('bpe', 350), ('unigram', 350), ('char', 300)])
def test_round_trip_any_text(texts, kind, vocab):
  tok = tokenizer_lib.train(texts, _cfg(kind, vocab))
  for text in TRICKY + texts[:5]:
    assert tok.decode(tok.encode(text)) == text
  assert tok.eod_id == 2 and tok.sp.id_to_piece(tok.eod_id) == '</s>'
  assert tok.eod_id not in tok.encode(texts[0])


def test_bpe_learns_merges_from_training_text(texts):
  tok = tokenizer_lib.train(texts, _cfg('bpe', 350))
  assert len(tok.encode(texts[0])) < 0.6 * len(texts[0])


def test_byte_lengths_count_utf8_bytes(texts):
  tok = tokenizer_lib.train(texts, _cfg('bpe', 350))
  table = tok.byte_lengths(512)
  for text in TRICKY[:5] + texts[:3]:
    assert table[tok.encode(text)].sum() == len(text.encode('utf-8'))
  assert table[tok.eod_id] == 0 and table[450] == 0


def test_saved_model_file_can_be_named_instead(texts, tmp_path):
  tok = tokenizer_lib.train(texts, _cfg('bpe', 350))
  path = str(tmp_path / 'tok.model')
  tok.save(path)
  cfg = _cfg('bpe', 999)
  cfg.model_path = path
  loaded = tokenizer_lib.train_or_load(['unused'], cfg)
  assert loaded.sha256 == tok.sha256 and loaded.encode(texts[1]) == tok.encode(texts[1])


def test_bad_tokenizer_settings(texts, tmp_path):
  with pytest.raises(UserError, match='byte fallback alone needs 256 ids'):
    tokenizer_lib.train(texts, _cfg('bpe', 100))
  with pytest.raises(
    UserError,
    match=r'vocab_size=5000 is more than this corpus supports; '
    r'use at most \d+',
  ):
    tokenizer_lib.train(texts, _cfg('bpe', 5000))
  with pytest.raises(UserError, match="use 'bpe', 'unigram' or 'char'"):
    tokenizer_lib.train(texts, _cfg('wordpiece', 400))
  cfg = _cfg('bpe', 350)
  cfg.model_path = str(tmp_path / 'missing.model')
  with pytest.raises(UserError, match='does not exist'):
    tokenizer_lib.train_or_load(texts, cfg)
