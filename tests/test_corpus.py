import json
import pathlib
import sysconfig

import pytest
import tensorflow_datasets as tfds

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


def test_files_directories_and_globs(tmp_path):
  (tmp_path / 'a').mkdir()
  (tmp_path / 'a' / 'one.txt').write_text('first document')
  (tmp_path / 'a' / 'skip.bin').write_text('not listed')
  (tmp_path / 'two.txt').write_text('second document')
  (tmp_path / 'three.md').write_text('third document')
  docs = list(corpus.file_documents([str(tmp_path / 'a'), str(tmp_path / '*.txt'),
                                     str(tmp_path / 'three.md')], extensions=('.txt',)))
  assert [d.text for d in docs] == ['first document', 'second document', 'third document']


def test_jsonl_text_field(tmp_path):
  path = tmp_path / 'docs.jsonl'
  path.write_text('\n'.join(json.dumps({'body': f'doc {i}', 'id': i}) for i in range(3)) + '\n')
  docs = list(corpus.file_documents([str(path)], text_field='body'))
  assert [d.text for d in docs] == ['doc 0', 'doc 1', 'doc 2']
  with pytest.raises(UserError, match="docs.jsonl:1 has no 'text' field; set data.text_field"):
    list(corpus.file_documents([str(path)]))
  path.write_text('{"text": "ok"}\nnot json\n')
  with pytest.raises(UserError, match=r'docs.jsonl:2 is not valid JSON'):
    list(corpus.file_documents([str(path)]))


def test_tfds_dataset_through_data_source():
  cfg = base.data_config()
  cfg.source, cfg.tfds_name = 'tfds', 'tiny_shakespeare'
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    docs = list(corpus.documents(cfg))
  assert len(docs) == 4 and all(isinstance(d.text, str) and d.text for d in docs)
  assert docs[0].name == 'tiny_shakespeare/train/0'
