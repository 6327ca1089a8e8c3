"""run.py and the benchmarks re-execute themselves with glibc's huge-page tunable, which
removes most of the page faults of XLA:CPU's fresh temporaries."""

import json
import os
import subprocess
import sys

import pytest

from jaxgpt import hugepages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs a jitted function whose 64 MiB output is allocated afresh on every call, and
# reports the page faults of the last calls, the tunables it saw and its arguments.
_PROBE = """
import json, os, resource, sys
from jaxgpt import hugepages
hugepages.ensure()
import jax, jax.numpy as jnp
x = jnp.ones((4096, 4096), jnp.float32)
f = jax.jit(lambda a: (jnp.exp(a) * 2.0).sum(axis=0) + a)
for _ in range(2):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  f(x).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({'faults': faults, 'tunables': os.environ.get('GLIBC_TUNABLES', ''),
                  'argv': sys.argv[1:]}))
"""


def _probe(**env):
  full_env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  full_env.update(JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, **env)
  out = subprocess.run(
    [sys.executable, '-c', _PROBE, 'first', '--second=2'],
    env=full_env,
    capture_output=True,
    text=True,
    check=True,
    cwd=ROOT,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hugepages.supported(), reason='needs Linux, glibc >= 2.35 and THP')
def test_reexec_sets_tunable_keeps_arguments_and_cuts_page_faults():
  on = _probe()
  off = _probe(JAXGPT_HUGEPAGES='0')
  kept = _probe(GLIBC_TUNABLES='glibc.malloc.arena_max=2')
  user_off = _probe(GLIBC_TUNABLES='glibc.malloc.hugetlb=0')
  assert on['tunables'] == hugepages.TUNABLE and on['argv'] == ['first', '--second=2']
  assert off['tunables'] == ''
  assert kept['tunables'] == f'glibc.malloc.arena_max=2:{hugepages.TUNABLE}'
  assert user_off['tunables'] == 'glibc.malloc.hugetlb=0'  # the user's choice stands
  # 4 calls x 64 MiB is ~65,000 4 KiB pages without the tunable (69,648 seen here).
  assert off['faults'] > 20_000
  assert on['faults'] < off['faults'] / 10, (on, off)
