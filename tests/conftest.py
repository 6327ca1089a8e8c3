"""Eight emulated CPU devices, set before jax starts a backend; one compilation cache for
the suite run; small shared fixtures."""

import json
import os
import re
import shutil
import tempfile

os.environ['JAX_PLATFORMS'] = 'cpu'
# XLA:CPU's code generation without LLVM's optimisations: the tiny models' programs compile
# in half the time (a train step on 8 devices: 8.4 s -> 3.9 s here) and their steps run no
# slower, since matrix products are library calls. Subprocesses inherit it; real runs and
# the benchmarks keep the default.
_FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_FAST_COMPILE}'.strip()

import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)

import pytest  # noqa: E402

from jaxgpt import compile_cache  # noqa: E402
from tests.helpers import tiny_config, write_corpus  # noqa: E402,F401


def pytest_configure(config):
  """One persistent compilation cache for this suite run, made empty by the first process
  (pytest-xdist's controller) and handed to its workers and to every subprocess a test
  starts (run.py reads JAXGPT_COMPILATION_CACHE), so that the tiny models' programs compile
  once per run. A JAXGPT_COMPILATION_CACHE already set (a directory, or off) is used as is.

  Unbounded, so without jax's lock: its directory scan at every write took over half the
  suite's time once thousands of programs were in. Two processes writing one program at
  once write the same bytes; one that reads a program still being written gets a warning
  and compiles it itself."""
  if not hasattr(config, 'workerinput') and compile_cache.ENV not in os.environ:
    os.environ[compile_cache.ENV] = tempfile.mkdtemp(prefix='jaxgpt-test-compilation-')
    config._jaxgpt_cache_made = os.environ[compile_cache.ENV]
    os.environ.setdefault(compile_cache.ENV_BYTES, '-1')
  compile_cache.enable(os.environ[compile_cache.ENV], compile_cache.max_bytes())


def pytest_unconfigure(config):
  made = getattr(config, '_jaxgpt_cache_made', None)
  if made:
    shutil.rmtree(made, ignore_errors=True)
    del os.environ[compile_cache.ENV]


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


def _test_id(nodeid: str) -> str:
  """The node id without the '@group' that pytest-xdist's --dist loadgroup appends."""
  return re.sub(r'@[\w-]+$', '', nodeid)


def pytest_collection_modifyitems(config, items):
  if not os.path.exists(DURATIONS):
    return
  with open(DURATIONS) as f:
    durations = json.load(f)
  for item in items:
    if durations.get(_test_id(item.nodeid), 0.0) >= SLOW_SECONDS:
      item.add_marker(pytest.mark.slow)


def pytest_runtest_logreport(report):
  key = _test_id(report.nodeid)
  _measured[key] = _measured.get(key, 0.0) + report.duration


def pytest_sessionfinish(session):
  # Under pytest-xdist the controller sees every worker's reports and writes the file alone.
  worker = hasattr(session.config, 'workerinput')
  if worker or not session.config.getoption('record_durations') or not _measured:
    return
  durations = {}
  if os.path.exists(DURATIONS):
    with open(DURATIONS) as f:
      durations = json.load(f)
  durations.update({k: round(v, 2) for k, v in _measured.items()})
  with open(DURATIONS, 'w') as f:
    json.dump(dict(sorted(durations.items())), f, indent=1)
    f.write('\n')
