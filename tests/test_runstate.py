"""The run: one immutable value, built before anything compiles, that every user of the
model takes; evaluation, sampling and planning without the training loop."""

import dataclasses
import subprocess
import sys

import jax
import pytest

from jaxgpt import model as model_lib
from jaxgpt import runstate
from jaxgpt import sharding
from jaxgpt.errors import UserError
from tests.helpers import ROOT, run_py, tiny_config


def test_the_run_is_frozen_and_carries_its_mesh(corpus_dir):
  c = tiny_config(corpus_dir)
  mesh = sharding.make_mesh(c.mesh)
  run = runstate.pretraining(c, model_lib.ModelConfig.from_config(c, 300), mesh)
  assert run.mesh is mesh and run.mesh.size == len(jax.devices())
  with pytest.raises(dataclasses.FrozenInstanceError):
    run.mesh = None
  # Its optimizer state takes the shardings of the params it mirrors.
  moments = run.state_shardings.opt_state[1][0].mu
  assert jax.tree.leaves(moments) == jax.tree.leaves(run.state_shardings.params)


def test_evaluation_sampling_and_planning_do_not_import_the_training_loop():
  code = (
    'import sys; import jaxgpt.inference, jaxgpt.plan, jaxgpt.evaluate, jaxgpt.generate, '
    'jaxgpt.tasks; print(sorted(m for m in ("jaxgpt.train", "jaxgpt.finetune") '
    'if m in sys.modules))'
  )
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True
  )
  assert out.stdout.strip() == '[]', out.stdout


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('kind', 'pretraining', r"train.kind='pretraining': use one of pretrain, classify, instruct"),
    ('kind', 'classify', r"train.kind='classify' needs a finetune section"),
    ('z_loss', -1.0, r'train.z_loss=-1.0 must be >= 0'),
    ('label_smoothing', 1.0, r'train.label_smoothing=1.0 must be in \[0, 1\)'),
  ],
)
def test_the_run_kind_and_the_objective_are_checked(corpus_dir, field, value, message):
  c = tiny_config(corpus_dir)
  c.train[field] = value
  with pytest.raises(UserError, match=message):
    runstate.check_config(c, sharding.make_mesh(c.mesh))


@pytest.mark.parametrize('steps', [(3, 2), (0, 1), (5,), ('a', 'b')])
def test_profile_steps_are_checked(corpus_dir, steps):
  c = tiny_config(corpus_dir)
  c.loop.profile_steps = steps
  with pytest.raises(UserError, match=r'loop.profile_steps=.*give \(first, last\) steps'):
    runstate.check_config(c, sharding.make_mesh(c.mesh))


def test_run_py_names_a_wrong_run_kind_in_one_line(tmp_path):
  proc = run_py(
    '--config=experiments/default.py', f'--workdir={tmp_path}', '--config.train.kind=classify'
  )
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip() == (
    "error: train.kind='classify' needs a finetune section: start from experiments/finetune_*.py"
  )
