import gzip
import json
import pathlib
import sysconfig

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds
import zstandard

from configs import base
from jaxgpt.data import corpus
from jaxgpt.errors import UserError


def test_stdlib_corpus_skips_tests_and_site_packages():
  files = corpus.stdlib_files()
  root = pathlib.Path(sysconfig.get_paths()['stdlib'])
  parts = {part for f in files for part in f.relative_to(root).parts[:-1]}
  assert len(files) > 300 and all(f.suffix == '.py' for f in files)
  assert not parts & {'test', 'tests', 'site-packages', 'idle_test'}
  assert root / 'json' / 'decoder.py' in files


def _src(**kw):
  return corpus.Source('s', 'files', **kw)


def _read(paths, bad=None, **kw):
  src = _src(paths=tuple(map(str, paths)), **kw)
  bad = bad or corpus.BadRecords(skip=False)
  units = corpus.units(src, corpus.identify(src), 1 << 30)
  return [d.text for u in units for d in corpus.unit_documents(u, src, bad)]


def test_files_directories_and_globs(tmp_path):
  (tmp_path / 'a').mkdir()
  (tmp_path / 'a' / 'one.txt').write_text('first document')
  (tmp_path / 'a' / 'skip.bin').write_text('not listed')
  (tmp_path / 'two.txt').write_text('second document')
  (tmp_path / 'three.md').write_text('third document')
  texts = _read([tmp_path / 'a', tmp_path / '*.txt', tmp_path / 'three.md'], extensions=('.txt',))
  assert texts == ['first document', 'second document', 'third document']
  with pytest.raises(
    UserError,
    match=r'holds no file ending in one of '
    r"data.extensions=\('.txt.gz',\)",
  ):
    _read([tmp_path / 'a'], extensions=('.txt.gz',))


def test_shard_formats_read_the_same_documents(tmp_path):
  records = [{'text': f'document {i}', 'id': i} for i in range(5)]
  lines = ''.join(json.dumps(r) + '\n' for r in records).encode()
  (tmp_path / 'a.jsonl').write_bytes(lines)
  with gzip.open(tmp_path / 'b.jsonl.gz', 'wb') as f:
    f.write(lines)
  (tmp_path / 'c.jsonl.zst').write_bytes(zstandard.ZstdCompressor().compress(lines))
  pq.write_table(pa.table({'text': [r['text'] for r in records]}), tmp_path / 'd.parquet')
  expected = [r['text'] for r in records]
  for name in ('a.jsonl', 'b.jsonl.gz', 'c.jsonl.zst', 'd.parquet'):
    assert _read([tmp_path / name]) == expected, name


def test_bad_records_stop_naming_file_and_line_or_are_counted(tmp_path):
  path = tmp_path / 'docs.jsonl'
  path.write_bytes(
    b'{"text": "ok"}\nnot json\n{"body": "no text"}\n{"text": "caf\xe9"}\n{"text": "fine"}\n'
  )
  with pytest.raises(UserError) as e:
    _read([path])
  assert str(e.value).startswith(f'{path}:2: not valid JSON (Expecting value); fix or remove')
  assert str(e.value).endswith(
    'or set --config.data.prep.skip_bad_records=True to skip and count such records'
  )
  bad = corpus.BadRecords(skip=True)
  assert _read([path], bad) == ['ok', 'fine']
  assert bad.counts == {'not valid JSON': 1, "no 'text' field": 1, 'not UTF-8': 1}
  assert [n.split(': ')[0] for n in bad.names] == [f'{path}:2', f'{path}:3', f'{path}:4']


def test_a_corrupt_shard_is_named(tmp_path):
  lines = ''.join(json.dumps({'text': f'doc {i}'}) + '\n' for i in range(2000)).encode()
  data = gzip.compress(lines)
  (tmp_path / 'cut.jsonl.gz').write_bytes(data[: len(data) // 2])
  with pytest.raises(UserError, match=r'cut.jsonl.gz:\d+: a corrupt shard'):
    _read([tmp_path / 'cut.jsonl.gz'])
  bad = corpus.BadRecords(skip=True)
  texts = _read([tmp_path / 'cut.jsonl.gz'], bad)
  assert 0 < len(texts) < 2000 and list(bad.counts) == ['a corrupt shard']


def test_units_group_files_and_identity_needs_no_reading(tmp_path):
  for i in range(6):
    (tmp_path / f'{i}.txt').write_text('x' * 100)
  src = _src(paths=(str(tmp_path),))
  identity = corpus.identify(src)
  units = corpus.units(src, identity, 250)
  assert [len(u.files) for u in units] == [2, 2, 2]  # never past 250 bytes
  assert [len(u.files) for u in corpus.units(src, identity, 300)] == [3, 3]
  assert [size for _, size, _ in identity['files']] == [100] * 6


@pytest.mark.parametrize('unit_bytes', [7, 40, 97, 500])
def test_a_big_jsonl_file_is_cut_into_byte_ranges_at_line_starts(tmp_path, unit_bytes):
  texts = [f'document {i} ' + 'x' * (i % 13) for i in range(40)]
  path = tmp_path / 'big.jsonl'
  path.write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts))
  src = _src(paths=(str(path),))
  units = corpus.units(src, corpus.identify(src), unit_bytes)
  assert len(units) == -(-path.stat().st_size // unit_bytes)
  assert units[0].start == 0 and units[-1].stop == path.stat().st_size
  bad = corpus.BadRecords(skip=False)
  got = [d.text for u in units for d in corpus.unit_documents(u, src, bad)]
  assert got == texts  # every line once, in order, wherever the cuts fall


def test_a_bad_record_in_a_byte_range_is_named_by_its_line_in_the_file(tmp_path):
  lines = [json.dumps({'text': f'document {i}'}) for i in range(30)]
  lines[22] = '{"text": broken'
  path = tmp_path / 'big.jsonl'
  path.write_text('\n'.join(lines) + '\n')
  src = _src(paths=(str(path),))
  units = corpus.units(src, corpus.identify(src), 100)
  bad = corpus.BadRecords(skip=True)
  docs = [d for u in units for d in corpus.unit_documents(u, src, bad)]
  assert len(docs) == 29 and bad.counts == {'not valid JSON': 1}
  assert bad.names[0].startswith(f'{path}:23: not valid JSON')


def test_paths_with_the_stdlib_source_is_an_error():
  cfg = base.data_config()
  cfg.paths = ('corpus/*.txt',)
  with pytest.raises(
    UserError, match="data.source is 'stdlib', which ignores it; add --config.data.source=files"
  ):
    corpus.sources(cfg)


def test_mixture_and_validation_sources():
  cfg = base.data_config()
  cfg.val_paths = ('held_out.txt',)
  cfg.mixture.web = base.source_config(source='files', paths=('web/*.jsonl',), weight=0.7)
  cfg.mixture.code = base.source_config(source='stdlib', weight=0.3, profile='code')
  srcs = corpus.sources(cfg)
  assert [(s.name, s.kind, s.weight, s.profile, s.split) for s in srcs] == [
    ('code', 'stdlib', 0.3, 'code', 'auto'),
    ('web', 'files', 0.7, 'web', 'auto'),
    ('validation', 'files', 1.0, 'web', 'val'),
  ]


def test_tfds_dataset_through_data_source():
  cfg = base.data_config()
  cfg.source, cfg.tfds_name = 'tfds', 'tiny_shakespeare'
  (src,) = corpus.sources(cfg)
  bad = corpus.BadRecords(skip=False)
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    identity = corpus.identify(src)
    units = corpus.units(src, identity, 1 << 20)
    docs = [d for u in units for d in corpus.unit_documents(u, src, bad)]
  assert identity['records'] == 4
  assert len(docs) == 4 and all(isinstance(d.text, str) and d.text for d in docs)
  assert docs[0].id == 'tiny_shakespeare/train/0'
