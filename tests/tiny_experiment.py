"""The tests' tiny experiment, for runs through run.py (multi-process tests):

python run.py --config=tests/tiny_experiment.py:CORPUS_DIR --workdir=DIR
"""

from tests.helpers import tiny_config


def get_config(corpus_dir):
  c = tiny_config(corpus_dir)
  c.lock()
  return c
