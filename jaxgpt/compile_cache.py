"""JAX's persistent compilation cache: compiled programs kept on disk across processes.

A resumed run, `--mode=eval`, `--mode=sample` and every run of a sweep compile the same
programs as the run before them; with the cache on they load them instead (a 60-layer
gradient that compiled in 10.6 s loaded in 1.3 s in a new process here). The key is the
program's HLO without its source locations, the compile options, the devices and the
jax/XLA versions, so a change of any of these compiles afresh and nothing stale is used.

`run.py` turns it on by default in `default_directory()`; `--compilation_cache=off` (or
JAXGPT_COMPILATION_CACHE=off) runs without it. Deleting the directory clears it.
"""

import os

ENV = 'JAXGPT_COMPILATION_CACHE'
ENV_BYTES = 'JAXGPT_COMPILATION_CACHE_BYTES'
OFF = ('off', 'none', '0', '')

# A bound on the directory; past it the least recently used programs go. It also makes
# jax take a file lock around each read and write, so that processes sharing the
# directory (the runs of a sweep, the processes of a run) never read a program another is
# still writing. The price is a scan of the directory at each write: nothing for a run's
# few programs, but over half the time of a test suite that writes thousands (see
# tests/conftest.py, which goes without).
MAX_BYTES = 8 << 30


def default_directory() -> str:
  """JAXGPT_COMPILATION_CACHE if set ('off' for none), else a per-user cache directory."""
  if ENV in os.environ:
    return os.environ[ENV]
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'jaxgpt', 'compilation')


def max_bytes() -> int:
  """JAXGPT_COMPILATION_CACHE_BYTES if set (-1: no bound and no lock), else MAX_BYTES."""
  value = os.environ.get(ENV_BYTES, str(MAX_BYTES))
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'{ENV_BYTES}={value!r}: use a number of bytes, or -1 for no bound') from None


def enable(directory: str, max_bytes: int = MAX_BYTES) -> str | None:
  """Keeps every compiled program of this process in `directory` (created if missing) and
  loads those compiled there before; 'off' (or '') leaves the cache off. `max_bytes` -1:
  no bound and no lock. Call it before the first compile: jax opens the cache once.
  Returns the directory used, or None."""
  import jax

  if directory.strip().lower() in OFF:
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  directory = os.path.abspath(os.path.expanduser(directory))
  os.makedirs(directory, exist_ok=True)
  if not os.access(directory, os.W_OK | os.X_OK):
    raise PermissionError(f'{directory} is not writable')
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', directory)
  # Every program, however quick to compile: a tiny model's steps compile in well under
  # jax's default threshold of a second, and loading one is quicker still.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  jax.config.update('jax_compilation_cache_max_size', max_bytes)
  return directory
