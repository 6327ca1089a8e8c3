import json
import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxgpt.data import pipeline
from tests.helpers import tiny_config


@pytest.fixture(scope='module')
def prepared(corpus_dir, tmp_path_factory):
  return pipeline.prepare(tiny_config(corpus_dir).data, str(tmp_path_factory.mktemp('run')))


def test_store_and_manifest(prepared):
  m = prepared.manifest
  assert m['cleaning']['input'] == 40 and m['cleaning']['kept'] == 40
  assert m['documents']['train'] + m['documents']['val'] == 40 and m['documents']['val'] > 0
  assert m['tokenizer']['sha256'] == prepared.tokenizer.sha256
  train = np.fromfile(prepared.train_path, np.uint16)
  assert train.size == m['tokens']['train']
  assert (train == prepared.tokenizer.eod_id).sum() == m['documents']['train']
  first_doc = prepared.tokenizer.decode(train[:np.argmax(train == prepared.tokenizer.eod_id)])
  assert first_doc.startswith('# module ')


def test_store_is_reused_and_rebuilt_when_config_changes(corpus_dir, tmp_path):
  cfg = tiny_config(corpus_dir).data
  first = pipeline.prepare(cfg, str(tmp_path))
  stamp = os.stat(first.train_path).st_mtime_ns
  again = pipeline.prepare(cfg, str(tmp_path))
  assert os.stat(again.train_path).st_mtime_ns == stamp
  assert again.manifest == first.manifest
  cfg.tokenizer.vocab_size = 320
  rebuilt = pipeline.prepare(cfg, str(tmp_path))
  assert rebuilt.manifest['fingerprint'] != first.manifest['fingerprint']
  assert os.stat(rebuilt.train_path).st_mtime_ns != stamp


def _take(it, n):
  return [next(it)['inputs'].copy() for _ in range(n)]


def test_windows_are_inputs_and_shifted_targets(prepared):
  source = pipeline.TokenWindows(prepared.train_path, 32)
  tokens = np.fromfile(prepared.train_path, np.uint16)
  rec = source[3]
  np.testing.assert_array_equal(rec['inputs'], tokens[96:128])
  np.testing.assert_array_equal(rec['targets'], tokens[97:129])
  assert len(source) == (tokens.size - 1) // 32


def test_loader_is_deterministic_from_seed(prepared):
  a = _take(iter(pipeline.train_loader(prepared, 32, 8, seed=1)), 5)
  b = _take(iter(pipeline.train_loader(prepared, 32, 8, seed=1)), 5)
  c = _take(iter(pipeline.train_loader(prepared, 32, 8, seed=2)), 5)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))
  assert a[0].shape == (8, 32)


def test_processes_read_their_rows_of_the_same_global_batches(prepared):
  single = _take(iter(pipeline.train_loader(prepared, 32, 8, 0)), 3)
  parts = [_take(iter(pipeline.train_loader(prepared, 32, 8, 0, p, 2)), 3) for p in range(2)]
  for step in range(3):
    assert parts[0][step].shape == (4, 32)
    np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), single[step])


def test_loader_state_round_trips_through_orbax(prepared, tmp_path):
  it = iter(pipeline.train_loader(prepared, 32, 8, seed=0))
  _take(it, 3)
  with ocp.CheckpointManager(str(tmp_path / 'ckpt')) as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _take(it, 4)
    fresh = iter(pipeline.train_loader(prepared, 32, 8, seed=0))
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert all(np.array_equal(x, y) for x, y in zip(_take(fresh, 4), expected))


def test_eval_batches_pad_with_zero_weights(prepared):
  source = pipeline.TokenWindows(prepared.val_path, 32)
  batches = list(pipeline.eval_batches(prepared, 32, 8))
  assert len(batches) == -(-len(source) // 8)
  assert sum(b['weights'].sum() for b in batches) == len(source) * 32
  assert json.dumps(prepared.manifest)  # the manifest is plain JSON


def test_explicit_validation_source_and_tokenizer_sees_train_only(corpus_dir, tmp_path):
  val_file = tmp_path / 'held_out.txt'
  val_file.write_text(''.join(f'\u03a9{i} = omega(\u03a9, {i})\n' for i in range(40)))  # new char
  cfg = tiny_config(corpus_dir).data
  cfg.val_paths = (str(val_file),)
  prepared = pipeline.prepare(cfg, str(tmp_path / 'run'))
  assert prepared.manifest['documents'] == {'train': 40, 'val': 1}
  assert prepared.manifest['cleaning']['val']['kept'] == 1
  tok = prepared.tokenizer
  assert tok.sp.piece_to_id('\u03a9') == tok.sp.unk_id()  # not learned from validation
  val = np.fromfile(prepared.val_path, np.uint16)
  assert tok.decode(val[:-1]) == val_file.read_text()  # still round-trips, as bytes
