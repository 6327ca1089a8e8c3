"""The cluster path: `--mode=prepare` with the Slurm executor submits every stage as a job
array; here stand-ins for `sbatch` (records the scripts) and `scontrol` stand for Slurm, and
the jobs are then run as Slurm would run them: each array index with SLURM_ARRAY_TASK_ID,
in dependency order."""

import os
import re
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SBATCH = """#!/bin/bash
# records each submitted script and its arguments, answers like sbatch
n=$(ls {jobs} | wc -l)
id=$((1000 + n))
cp "${{@: -1}}" {jobs}/$id.sh
echo "$@" > {jobs}/$id.args
echo "Submitted batch job $id"
"""


def _run_py(workdir, corpus, *flags, env):
  return subprocess.run(
    [
      sys.executable,
      'run.py',
      f'--config=tests/tiny_experiment.py:{corpus}',
      f'--workdir={workdir}',
      '--mode=prepare',
      '--config.data.dedup.bands=2',
      *flags,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )


@pytest.mark.slow
def test_slurm_submission_runs_as_job_arrays(corpus_dir, tmp_path):
  jobs, bin_dir = tmp_path / 'jobs', tmp_path / 'bin'
  jobs.mkdir()
  bin_dir.mkdir()
  (bin_dir / 'sbatch').write_text(SBATCH.format(jobs=jobs))
  (bin_dir / 'scontrol').write_text('#!/bin/bash\necho localhost\n')  # show hostnames
  for tool in ('sbatch', 'scontrol'):
    (bin_dir / tool).chmod(stat.S_IRWXU)
  env = {
    **os.environ,
    'PATH': f'{bin_dir}:{os.environ["PATH"]}',
    'JAX_PLATFORMS': 'cpu',
    'PYTHONPATH': ROOT,
  }
  workdir = tmp_path / 'run'
  proc = _run_py(workdir, corpus_dir, '--config.data.prep.executor=slurm', env=env)
  assert proc.returncode == 2 and 'needs data.prep.slurm.partition' in proc.stderr
  proc = _run_py(
    workdir,
    corpus_dir,
    '--config.data.prep.executor=slurm',
    '--config.data.prep.slurm.partition=cpu',
    env=env,
  )
  assert proc.returncode == 0, proc.stderr
  assert 'was submitted to Slurm' in proc.stdout

  scripts = sorted(jobs.glob('*.sh'))
  names = [
    re.search(r'--job-name=(\S+)', s.read_text()).group(1)
    for s in scripts
    if 'launch_pickled_pipeline' in s.read_text()
  ]
  assert names == [
    'jaxgpt-curate',
    'jaxgpt-buckets',
    'jaxgpt-clusters',
    'jaxgpt-tokenizer',
    'jaxgpt-tokenize',
    'jaxgpt-finish',
  ]
  for script in scripts:
    text = script.read_text()
    if 'launch_pickled_pipeline' not in text:
      continue  # datatrove's statistics merges
    assert '#SBATCH --partition=cpu' in text
    last = int(re.search(r'--array=0-(\d+)', text).group(1))
    pik = re.search(r'launch_pickled_pipeline (\S+)', text).group(1)
    for index in range(last + 1):
      subprocess.run(
        [sys.executable, '-m', 'datatrove.tools.launch_pickled_pipeline', pik],
        env={
          **env,
          'SLURM_ARRAY_TASK_ID': str(index),
          'RUN_OFFSET': '0',
          'SLURM_NODELIST': 'localhost',
        },
        check=True,
        capture_output=True,
        timeout=120,
      )
  args = sorted(jobs.glob('*.args'))
  assert any('--dependency=afterok:1000' in a.read_text() for a in args)

  proc = _run_py(
    workdir,
    corpus_dir,
    '--config.data.prep.executor=slurm',
    '--config.data.prep.slurm.partition=cpu',
    env=env,
  )
  assert proc.returncode == 0, proc.stderr
  assert 'token store:' in proc.stdout and 'card.md' in proc.stdout
  assert (workdir / 'data' / 'manifest.json').exists()
