"""Eight emulated CPU devices, set before jax starts a backend, and small shared fixtures."""

import json
import os

os.environ['JAX_PLATFORMS'] = 'cpu'

import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)

import pytest  # noqa: E402

from tests.helpers import tiny_config, write_corpus  # noqa: E402,F401


@pytest.fixture(scope='session')
def corpus_dir(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp('corpus'))


@pytest.fixture(scope='session')
def base_run(corpus_dir, tmp_path_factory):
  """A tiny pretrained run (30 steps) that the fine-tuning tests start from; read only."""
  from jaxgpt import train

  workdir = str(tmp_path_factory.mktemp('base'))
  train.train_and_evaluate(tiny_config(corpus_dir, steps=30, eval_batches=1), workdir)
  return workdir


# The slow marker, from measured durations: a test whose setup, call and teardown took
# SLOW_SECONDS or more in the last recording (tests/durations.json) is `slow`, so that
# `pytest -m "not slow"` stays quick. `pytest --record-durations` measures and rewrites it.
DURATIONS = os.path.join(os.path.dirname(__file__), 'durations.json')
SLOW_SECONDS = 1.5
_measured = {}


def pytest_addoption(parser):
  parser.addoption(
    '--record-durations',
    action='store_true',
    help='write the seconds each test took to tests/durations.json (it sets the slow marker)',
  )


def pytest_collection_modifyitems(config, items):
  if not os.path.exists(DURATIONS):
    return
  with open(DURATIONS) as f:
    durations = json.load(f)
  for item in items:
    if durations.get(item.nodeid, 0.0) >= SLOW_SECONDS:
      item.add_marker(pytest.mark.slow)


def pytest_runtest_logreport(report):
  _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
  if not session.config.getoption('record_durations') or not _measured:
    return
  durations = {}
  if os.path.exists(DURATIONS):
    with open(DURATIONS) as f:
      durations = json.load(f)
  durations.update({k: round(v, 2) for k, v in _measured.items()})
  with open(DURATIONS, 'w') as f:
    json.dump(dict(sorted(durations.items())), f, indent=1)
    f.write('\n')
