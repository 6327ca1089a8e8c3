import builtins
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import base
from jaxgpt.data import loader
from jaxgpt.data import pipeline
from tests.helpers import tiny_config


@pytest.fixture(scope='module')
def prepared(corpus_dir, tmp_path_factory):
  return pipeline.prepare(tiny_config(corpus_dir).data, str(tmp_path_factory.mktemp('run')))


def _tokens(prepared, split):
  return np.concatenate(
    [np.fromfile(s['path'], np.uint16)[s['start'] : s['end']] for s in prepared.shards(split)]
  )


def test_store_manifest_and_card(prepared):
  m = prepared.manifest
  read = m['stages']['files']['steps']['read']
  assert read['documents'] == 40 and m['stages']['files']['steps']['basic']['documents'] == 40
  assert m['documents']['train'] + m['documents']['val'] == 40 and m['documents']['val'] > 0
  assert m['tokenizer']['sha256'] == prepared.tokenizer.sha256
  train = _tokens(prepared, 'train')
  assert train.size == m['tokens']['train']
  assert (train == prepared.tokenizer.eod_id).sum() == m['documents']['train']
  first_doc = prepared.tokenizer.decode(train[: np.argmax(train == prepared.tokenizer.eod_id)])
  assert first_doc.startswith('# module ')
  card = (pathlib.Path(prepared.directory) / 'card.md').read_text()
  assert '| read | 40 |' in card and '| files | train |' in card
  for png in ('doc_chars.png', 'doc_tokens.png'):
    assert (pathlib.Path(prepared.directory) / png).read_bytes()[:4] == b'\x89PNG'
  assert not os.path.exists(os.path.join(prepared.directory, 'work'))


def test_store_reopens_without_opening_the_sources(corpus_dir, tmp_path, monkeypatch):
  cfg = tiny_config(corpus_dir).data
  first = pipeline.prepare(cfg, str(tmp_path))
  stamp = os.stat(first.shards('train')[0]['path']).st_mtime_ns
  opened = []
  real_open = builtins.open
  monkeypatch.setattr(
    builtins, 'open', lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k)
  )
  start = time.time()
  again = pipeline.prepare(cfg, str(tmp_path))
  assert time.time() - start < 2
  monkeypatch.undo()
  assert not [f for f in opened if f.startswith(str(corpus_dir))], opened
  assert os.stat(again.shards('train')[0]['path']).st_mtime_ns == stamp
  assert again.manifest == first.manifest
  cfg.tokenizer.vocab_size = 320
  rebuilt = pipeline.prepare(cfg, str(tmp_path))
  assert rebuilt.manifest['fingerprint'] != first.manifest['fingerprint']


def test_a_changed_source_file_rebuilds(corpus_dir, tmp_path):
  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  for f in sorted(pathlib.Path(corpus_dir).iterdir())[:12]:
    (corpus / f.name).write_text(f.read_text())
  cfg = tiny_config(str(corpus)).data
  first = pipeline.prepare(cfg, str(tmp_path / 'run'))
  (corpus / 'doc_000.py').write_text((corpus / 'doc_000.py').read_text() + '# more\n')
  second = pipeline.prepare(cfg, str(tmp_path / 'run'))
  assert second.manifest['data_fingerprint'] != first.manifest['data_fingerprint']


def test_windows_over_token_ranges(tmp_path):
  a, b = np.arange(100, dtype=np.uint16), np.arange(1000, 1050, dtype=np.uint16)
  a.tofile(tmp_path / 'a.bin')
  b.tofile(tmp_path / 'b.bin')
  ranges = [
    {'path': str(tmp_path / 'a.bin'), 'start': 10, 'end': 100},
    {'path': str(tmp_path / 'b.bin'), 'start': 0, 'end': 50},
  ]
  source = loader.TokenWindows(ranges, 16, np.uint16)
  assert len(source) == (89 // 16) + (49 // 16)  # windows never cross a shard
  np.testing.assert_array_equal(source[1]['inputs'], a[26:42])
  np.testing.assert_array_equal(source[1]['targets'], a[27:43])
  np.testing.assert_array_equal(source[5]['inputs'], b[0:16])
  assert 'a.bin' in repr(source) and str(tmp_path) not in repr(source)


def _take(it, n):
  return [next(it)['inputs'].copy() for _ in range(n)]


def test_loader_is_deterministic_from_seed(prepared):
  a = _take(iter(loader.train_loader(prepared, 32, 8, seed=1)), 5)
  b = _take(iter(loader.train_loader(prepared, 32, 8, seed=1)), 5)
  c = _take(iter(loader.train_loader(prepared, 32, 8, seed=2)), 5)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))
  assert a[0].shape == (8, 32)


def test_processes_read_their_rows_of_the_same_global_batches(prepared):
  single = _take(iter(loader.train_loader(prepared, 32, 8, 0)), 3)
  parts = [_take(iter(loader.train_loader(prepared, 32, 8, 0, p, 2)), 3) for p in range(2)]
  for step in range(3):
    assert parts[0][step].shape == (4, 32)
    np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), single[step])


def test_loader_state_round_trips_through_orbax(prepared, tmp_path):
  it = iter(loader.train_loader(prepared, 32, 8, seed=0))
  _take(it, 3)
  with ocp.CheckpointManager(str(tmp_path / 'ckpt')) as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _take(it, 4)
    fresh = iter(loader.train_loader(prepared, 32, 8, seed=0))
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert all(np.array_equal(x, y) for x, y in zip(_take(fresh, 4), expected))


def test_eval_batches_pad_with_zero_weights(prepared):
  source = loader.windows(prepared, 'val', 32)
  batches = list(loader.eval_batches(prepared, 32, 8))
  assert len(batches) == -(-len(source) // 8)
  assert sum(b['weights'].sum() for b in batches) == len(source) * 32
  # The manifest is plain JSON: it survives a round trip unchanged (no tuples, numpy scalars).
  assert json.loads(json.dumps(prepared.manifest)) == prepared.manifest


def test_explicit_validation_source_and_tokenizer_sees_train_only(corpus_dir, tmp_path):
  val_file = tmp_path / 'held_out.txt'
  val_file.write_text(''.join(f'\u03a9{i} = omega(\u03a9, {i})\n' for i in range(40)))  # new char
  cfg = tiny_config(corpus_dir).data
  cfg.val_paths = (str(val_file),)
  prepared = pipeline.prepare(cfg, str(tmp_path / 'run'))
  assert prepared.manifest['documents'] == {'train': 40, 'val': 1}
  assert prepared.manifest['per_source']['validation']['val']['documents'] == 1
  tok = prepared.tokenizer
  assert tok.sp.piece_to_id('\u03a9') == tok.sp.unk_id()  # not learned from validation
  val = _tokens(prepared, 'val')
  assert tok.decode(val[:-1]) == val_file.read_text()  # still round-trips, as bytes


def test_one_big_document_is_split_by_position(tmp_path):
  text = ''.join(f'value_{i} = compute({i}, {i * 7 % 13})\n' for i in range(400))
  (tmp_path / 'one.py').write_text(text)
  cfg = tiny_config(str(tmp_path / 'one.py')).data
  prepared = pipeline.prepare(cfg, str(tmp_path / 'run'))
  train, val = _tokens(prepared, 'train'), _tokens(prepared, 'val')
  assert 0.05 < val.size / (train.size + val.size) < 0.15
  assert prepared.tokenizer.decode(np.concatenate([train, val])[:-1]) == text


def _mixture_corpus(tmp_path, letter, n):
  folder = tmp_path / letter
  folder.mkdir()
  rng = np.random.default_rng(ord(letter))
  for i in range(n):  # distinct documents of one letter and a few others
    words = [letter + ''.join(rng.choice(list('xyz'), 4)) for _ in range(60)]
    (folder / f'{i}.txt').write_text(' '.join(words))
  return str(folder)


def test_mixture_weights_are_realised_by_the_loader(tmp_path):
  cfg = tiny_config(str(tmp_path)).data
  with cfg.unlocked():
    for name, weight, n in (('a', 3.0, 20), ('b', 1.0, 40)):
      cfg.mixture[name] = base.source_config(
        source='files', paths=(_mixture_corpus(tmp_path, name, n),), profile='code', weight=weight
      )
  prepared = pipeline.prepare(cfg, str(tmp_path / 'run'))
  assert prepared.manifest['mixture']['weights'] == {'a': 3.0, 'b': 1.0}
  assert prepared.manifest['documents']['train'] + prepared.manifest['documents']['val'] == 60
  assert loader.realised_mixture([3.0, 1.0], ['a', 'b'], 1000) == {'a': 0.75, 'b': 0.25}
  a_id = prepared.tokenizer.sp.piece_to_id('a')
  batches = _take(iter(loader.train_loader(prepared, 16, 8, seed=0)), 250)
  rows = np.concatenate(batches)
  from_a = (rows == a_id).any(axis=1).mean()
  assert abs(from_a - 0.75) < 0.03, from_a
  card = (pathlib.Path(prepared.directory) / 'card.md').read_text()
  assert '| a | 3.0 |' in card
  assert len(prepared.shards('train')) >= 2  # one per source at least
  parts = [_take(iter(loader.train_loader(prepared, 16, 8, 0, p, 2)), 3) for p in range(2)]
  for step in range(3):  # each process reads its rows of the same global batches
    np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), batches[step])


def _processes_naming(text: str) -> list[int]:
  out = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        if text.encode() in f.read():
          out.append(int(pid))
    except OSError:
      pass
  return out


def test_a_killed_preparation_resumes_from_its_finished_tasks(corpus_dir, tmp_path):
  cfg = tiny_config(corpus_dir).data
  cfg.prep.unit_mb, cfg.prep.workers = 0.0005, 1  # a task per file, one at a time
  directory = tmp_path / 'run' / 'data'
  directory.mkdir(parents=True)
  (tmp_path / 'config.json').write_text(cfg.to_json())
  proc = subprocess.Popen(
    [sys.executable, '-m', 'jaxgpt.data.build', str(directory), str(tmp_path / 'config.json')],
    cwd=os.path.dirname(os.path.dirname(__file__)),
  )
  completions = directory / 'logs' / 'curate' / 'completions'
  deadline = time.time() + 60
  while time.time() < deadline and len(list(completions.glob('*'))) < 5:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  deadline = time.time() + 10  # its workers die with it: none goes on writing the store
  while time.time() < deadline and _processes_naming(str(directory)):
    time.sleep(0.05)
  assert not _processes_naming(str(directory))
  finished = len(list(completions.glob('*')))
  assert 5 <= finished < 40 and not (directory / 'manifest.json').exists()
  resumed = pipeline.prepare(cfg, str(tmp_path / 'run'))
  log = (directory / 'logs' / 'datatrove.log').read_text()
  assert f'Skipping {finished} already completed tasks' in log
  fresh = pipeline.prepare(cfg, str(tmp_path / 'fresh'))
  for split in ('train', 'val'):
    np.testing.assert_array_equal(_tokens(resumed, split), _tokens(fresh, split))
