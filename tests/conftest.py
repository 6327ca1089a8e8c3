"""Eight emulated CPU devices, set before jax starts a backend, and small shared fixtures."""

import os

os.environ['JAX_PLATFORMS'] = 'cpu'

import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)

import pytest  # noqa: E402

from tests.helpers import tiny_config, write_corpus  # noqa: E402,F401


@pytest.fixture(scope='session')
def corpus_dir(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp('corpus'))
