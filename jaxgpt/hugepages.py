"""Transparent huge pages for the host allocations of XLA:CPU, set before jax starts.

XLA:CPU allocates a step's temporaries afresh on every call, and glibc serves blocks that
large with a new mmap each time, so the kernel zero-fills every 4 KiB page on first touch:
on the medium train-step benchmark (6 layers, width 384, 4096 tokens) that was ~383,000
page faults and 0.7-1.2 s of system time per step. glibc (2.35 and later) can ask for
2 MiB transparent huge pages on its mmaps (`glibc.malloc.hugetlb=1`): ~1,000 faults, and
the step went from 2.0-2.2 s to 1.2-1.3 s. The tunable is read only when a process
starts, so `ensure()` re-executes the process once with it set.

Set JAXGPT_HUGEPAGES=0 to leave the process alone.
"""

import os
import platform
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def supported() -> bool:
  """Linux with glibc >= 2.35 and transparent huge pages not switched off."""
  if sys.platform != 'linux':
    return False
  libc, version = platform.libc_ver()
  try:
    major, minor = (int(x) for x in version.split('.')[:2])
  except ValueError:
    return False
  if libc != 'glibc' or (major, minor) < (2, 35):
    return False
  try:
    with open(_THP_MODE) as f:
      return '[never]' not in f.read()
  except OSError:
    return False


def _hugetlb_setting() -> str | None:
  """The value of glibc.malloc.hugetlb in GLIBC_TUNABLES, None where it is not given."""
  for item in os.environ.get('GLIBC_TUNABLES', '').split(':'):
    name, _, value = item.partition('=')
    if name == 'glibc.malloc.hugetlb':
      return value
  return None


def active() -> bool:
  """Whether this process's malloc was started asking for huge pages."""
  return _hugetlb_setting() in ('1', '2')


def ensure():
  """Re-executes this Python process, as it was invoked, with the tunable.

  It does nothing where the user gave glibc.malloc.hugetlb a value already, where the
  tunable is unsupported, or with JAXGPT_HUGEPAGES=0. Call it first thing in a script,
  before jax is imported: nothing the process did before is kept.
  """
  if (
    os.environ.get('JAXGPT_HUGEPAGES', '1') == '0'
    or _hugetlb_setting() is not None
    or not supported()
    or not sys.executable
  ):  # embedded: nothing to re-execute
    return
  env = dict(os.environ)
  env['GLIBC_TUNABLES'] = ':'.join(filter(None, [env.get('GLIBC_TUNABLES'), TUNABLE]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
