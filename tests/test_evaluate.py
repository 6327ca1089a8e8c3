"""Evaluating checkpoints, on whatever mesh this machine has, long after training."""

import json
import os
import subprocess
import sys

import jax
import pytest

from jaxgpt import inference, train
from jaxgpt.errors import UserError
from tests.helpers import tiny_config

# One pytest-xdist worker runs this file's tests: the run trained on 8 devices is made once.
pytestmark = pytest.mark.xdist_group('trained_on_8')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(corpus_dir, data, fsdp, tensor, **train_overrides):
  c = tiny_config(corpus_dir, steps=4, checkpoint_every=2, eval_batches=0, **train_overrides)
  c.mesh.shape.data, c.mesh.shape.fsdp, c.mesh.shape.tensor = data, fsdp, tensor
  return c


@pytest.fixture(scope='module')
def trained_on_8(corpus_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run8'))
  return workdir, train.train_and_evaluate(_config(corpus_dir, 2, 2, 2), workdir)


def test_checkpoint_from_8_devices_evaluates_on_1_and_on_8(corpus_dir, trained_on_8):
  workdir, trained = trained_on_8
  on_one = inference.evaluate_checkpoint(
    _config(corpus_dir, 1, 1, 1), workdir, devices=jax.devices()[:1]
  )
  on_eight = inference.evaluate_checkpoint(_config(corpus_dir, 1, 8, 1), workdir)
  assert on_one['devices'] == 1 and on_eight['mesh'] == {'data': 1, 'fsdp': 8, 'tensor': 1}
  for result in (on_one, on_eight):
    assert result['step'] == 4
    assert result['loss'] == pytest.approx(trained['loss'], abs=1e-5)
    assert result['bits_per_byte'] == pytest.approx(trained['bits_per_byte'], abs=1e-5)
  with open(os.path.join(workdir, 'eval-step4.json')) as f:
    assert json.load(f)['loss'] == pytest.approx(trained['loss'], abs=1e-5)
  assert not os.path.exists(os.path.join(workdir, 'eval_data'))  # the run's store was reused


def _run_py(corpus_dir, workdir, devices, *flags):
  proc = subprocess.run(
    [
      sys.executable,
      'run.py',
      f'--config=tests/tiny_experiment.py:{corpus_dir}',
      f'--workdir={workdir}',
      '--config.train.steps=4',
      '--config.loop.eval_batches=0',
      '--config.mesh.shape.data=-1',
      *flags,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_NUM_CPU_DEVICES': str(devices)},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.slow
def test_checkpoint_from_1_device_evaluates_on_8(corpus_dir, tmp_path):
  _run_py(corpus_dir, tmp_path, 1)  # trained in a process that has one device
  with open(tmp_path / 'metrics.jsonl') as f:
    trained = [r for r in map(json.loads, f) if r['kind'] == 'eval'][-1]
  result = inference.evaluate_checkpoint(_config(corpus_dir, 2, 2, 2), str(tmp_path))
  assert result['devices'] == 8 and result['step'] == 4
  assert result['loss'] == pytest.approx(trained['loss'], abs=1e-5)


def test_an_earlier_step_and_a_missing_one(corpus_dir, trained_on_8):
  workdir, trained = trained_on_8
  early = inference.evaluate_checkpoint(_config(corpus_dir, 2, 2, 2), workdir, step=2)
  assert early['step'] == 2 and early['loss'] > trained['loss']
  with pytest.raises(UserError, match=r'no checkpoint at step 3 in .*saved steps: \[2, 4\]'):
    inference.evaluate_checkpoint(_config(corpus_dir, 2, 2, 2), workdir, step=3)


def _cached_programs(directory):
  return sorted(f for f in os.listdir(directory) if f.endswith('-cache'))


@pytest.mark.slow
def test_run_py_eval_mode_on_another_device_count_loads_its_programs_the_second_time(
  corpus_dir, trained_on_8, tmp_path
):
  """--mode=eval in a new process, twice, with a compilation cache of its own: the first
  writes its programs there, the second finds every one and writes none."""
  workdir, trained = trained_on_8
  cache = tmp_path / 'compiled'
  results, programs = [], []
  for _ in range(2):
    out = _run_py(corpus_dir, workdir, 2, '--mode=eval', f'--compilation_cache={cache}')
    results.append(json.loads(out[out.index('{') :]))
    programs.append(_cached_programs(cache))
  assert programs[0] and programs[1] == programs[0]
  for result in results:
    assert result['devices'] == 2 and result['step'] == 4
    assert result['loss'] == pytest.approx(trained['loss'], abs=1e-5)


def test_another_dataset_is_tokenized_aside_with_the_checkpoint_tokenizer(
  corpus_dir, trained_on_8, tmp_path
):
  workdir, _ = trained_on_8
  with open(os.path.join(workdir, 'data', 'manifest.json')) as f:
    before = json.load(f)
  other = tmp_path / 'other.txt'
  other.write_text(''.join(f'def other_{i}(x):\n    return x * {i}\n' for i in range(60)))
  config = _config(corpus_dir, 2, 2, 2)
  config.data.val_paths = (str(other),)
  result = inference.evaluate_checkpoint(config, workdir)
  with open(os.path.join(workdir, 'eval_data', 'manifest.json')) as f:
    aside = json.load(f)
  with open(os.path.join(workdir, 'data', 'manifest.json')) as f:
    assert json.load(f) == before  # the training run's store is untouched
  assert aside['tokenizer']['sha256'] == before['tokenizer']['sha256']
  assert aside['documents']['val'] == 1 and result['tokens'] > 0
