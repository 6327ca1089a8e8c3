"""Builds a token store: python -m jaxgpt.data.build DIRECTORY CONFIG_JSON [TOKENIZER_MODEL].

A module of its own, so that the stages' classes are pickled by reference (datatrove's
Slurm jobs unpickle them) rather than as members of __main__.
"""

import os
import sys

if __name__ == '__main__':
  # One BLAS thread per process, set before numpy loads: the worker processes are the
  # parallelism (with langid, the language ID before fastText's, the curate stage ran 2.8x
  # slower with two workers each threading its products over both cores).
  # Slurm jobs submitted from here inherit it.
  for var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(var, '1')
  from jaxgpt.data import stages

  stages.die_with_parent()  # a killed run.py (or test) takes its preparation with it,
  os.register_at_fork(after_in_child=stages.die_with_parent)  # and its workers
  stages.main(sys.argv)
