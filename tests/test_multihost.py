"""Two processes on localhost, 4 CPU devices each, train like one process with 8."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(corpus_dir, workdir, *extra):
  return [
    sys.executable,
    'run.py',
    f'--config=tests/tiny_experiment.py:{corpus_dir}',
    f'--workdir={workdir}',
    '--config.train.steps=3',
    '--config.loop.checkpoint_every=2',
    '--config.mesh.shape.data=2',
    '--config.mesh.shape.fsdp=2',
    '--config.mesh.shape.tensor=2',
    *extra,
  ]


def _env(devices):
  return {
    **os.environ,
    'JAX_PLATFORMS': 'cpu',
    'JAX_NUM_CPU_DEVICES': str(devices),
    'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
  }


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_two_processes_match_one(corpus_dir, tmp_path):
  one = subprocess.run(
    _command(corpus_dir, tmp_path / 'one'),
    cwd=ROOT,
    env=_env(8),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert one.returncode == 0, one.stderr[-3000:]

  port = _free_port()
  procs = [
    subprocess.Popen(
      _command(
        corpus_dir,
        tmp_path / 'two',
        f'--coordinator=127.0.0.1:{port}',
        '--num_processes=2',
        f'--process_id={i}',
      ),
      cwd=ROOT,
      env=_env(4),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]

  single, multi = _records(tmp_path / 'one'), _records(tmp_path / 'two')
  losses = lambda rs: [r['loss'] for r in rs if r['kind'] == 'train']
  assert len(losses(multi)) == 3  # written once, by process 0
  np.testing.assert_allclose(losses(multi), losses(single), rtol=0, atol=1e-5)
  # Only process 0 logs progress; both wrote their part of each checkpoint.
  assert 'step      3/3' in outputs[0][1] and 'step      3/3' not in outputs[1][1]
  steps = sorted(os.listdir(tmp_path / 'two' / 'checkpoints'))
  assert steps == ['2', '3']
  data_items = os.listdir(tmp_path / 'two' / 'checkpoints' / '3' / 'data')
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(data_items)
