"""A run's directory: owned by one run at a time, checked before any work starts.

The lock is an flock on WORKDIR/.lock, which the kernel releases when its process ends
however it ends, so a killed run never leaves it stuck; the file names the holder for the
message the next run prints.
"""

import contextlib
import fcntl
import os
import socket
import tempfile
import time

from jaxgpt.errors import UserError

LOCK_NAME = '.lock'


def check_writable(workdir: str):
  """Creates workdir if needed and writes a file in it, so that a run that could not save
  its results stops before it computes them."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write-test-'):
      pass
  except OSError as e:
    raise UserError(
      f'--workdir={workdir} is not writable ({e.strerror}); fix its permissions '
      'or use another --workdir'
    ) from None


def check_run_exists(workdir: str):
  """For evaluating or sampling a run: its directory must be there (never created)."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise UserError(
      f'--workdir={workdir} holds no run (no {os.path.join(workdir, "checkpoints")}'
      '); check the path, or train one there first'
    )


@contextlib.contextmanager
def owned(workdir: str, main_process: bool = True):
  """The main process locks workdir for the block; every process checks it is writable."""
  if not main_process:
    check_writable(workdir)
    yield
    return
  with Lock(workdir):
    yield


class Lock:
  """`with Lock(workdir):` owns workdir for this process, or raises naming the owner."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.workdir = workdir
    self._file = None

  def __enter__(self):
    check_writable(self.workdir)
    f = open(self.path, 'a+')
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      f.close()
      raise UserError(
        f'--workdir={self.workdir} is in use by {holder}; wait for that run to '
        'end (or stop it), or use another --workdir'
      ) from None
    f.seek(0)
    f.truncate()
    f.write(
      f'process {os.getpid()} on {socket.gethostname()} (since '
      f'{time.strftime("%Y-%m-%d %H:%M:%S")})\n'
    )
    f.flush()
    self._file = f
    return self

  def __exit__(self, *_):
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None
