"""Runs that survive faults: signals, non-finite losses, and resuming under another config."""

import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxgpt import checkpoint
from jaxgpt import faults
from jaxgpt import train
from jaxgpt.errors import UserError
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _exploding(corpus_dir, **train_overrides):
  c = tiny_config(corpus_dir, steps=8, checkpoint_every=1, **train_overrides)
  c.optim.lr, c.optim.warmup_steps, c.optim.grad_clip = 1e30, 0, 0.0
  return c


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if r['kind'] == 'train'}


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(corpus_dir, tmp_path):
  with pytest.raises(UserError, match=r'non-finite at step (\d+); .* \(step (\d+)\)') as err:
    train.train_and_evaluate(_exploding(corpus_dir), str(tmp_path))
  bad, kept = map(int, re.search(r'at step (\d+);.*\(step (\d+)\)', str(err.value)).groups())
  assert kept == bad - 1
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == kept
  params = ckpt.restore(kept, None)['params']
  ckpt.close()
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_non_finite_updates_can_be_skipped_and_counted(corpus_dir, tmp_path):
  result = train.train_and_evaluate(_exploding(corpus_dir, skip_nonfinite=True), str(tmp_path))
  assert result['step'] == 8
  with open(tmp_path / 'metrics.jsonl') as f:
    last = [r for r in map(json.loads, f) if r['kind'] == 'train'][-1]
  assert last['skipped'] >= 1
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  params = ckpt.restore(8, None)['params']
  ckpt.close()
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_resuming_under_another_config_is_refused(corpus_dir, tmp_path):
  train.train_and_evaluate(tiny_config(corpus_dir, steps=4, run_steps=2), str(tmp_path))
  changed = tiny_config(corpus_dir, steps=4)
  changed.optim.lr, changed.model.dropout = 5e-3, 0.1
  _with_other_memory_knobs(changed)  # not a different run, so not named below
  with pytest.raises(UserError) as err:
    train.train_and_evaluate(changed, str(tmp_path))
  assert (
    'holds a run with a different config (model.dropout: 0.0 -> 0.1; optim.lr: 0.002 '
    '-> 0.005)' in str(err.value)
  )
  assert '--config.loop.allow_config_change=True' in str(err.value)
  changed.loop.allow_config_change = True
  assert train.train_and_evaluate(changed, str(tmp_path))['step'] == 4


def _with_other_memory_knobs(config):
  config.execution.loss_chunks, config.execution.remat, config.execution.attention_block = (
    4,
    'full',
    4,
  )
  config.execution.micro_batches = 2  # 4 rows each, so on a mesh with 4-way data parallelism
  config.mesh.shape.data, config.mesh.shape.tensor = 4, 2
  config.model.attention_impl = 'reference'  # how attention runs is the machine's choice too
  return config


def test_resuming_with_other_memory_knobs_continues_the_run(corpus_dir, tmp_path):
  whole = train.train_and_evaluate(tiny_config(corpus_dir, steps=4), str(tmp_path / 'whole'))
  resumed_dir = str(tmp_path / 'resumed')
  train.train_and_evaluate(tiny_config(corpus_dir, steps=4, run_steps=2), resumed_dir)
  resumed = train.train_and_evaluate(
    _with_other_memory_knobs(tiny_config(corpus_dir, steps=4)), resumed_dir
  )
  assert resumed['step'] == 4
  # The same run: remat, attention (blocks and implementation), micro-batches and loss chunks
  # change only rounding.
  np.testing.assert_allclose(resumed['loss'], whole['loss'], rtol=1e-4)


def _run(corpus_dir, workdir, *flags):
  return [
    sys.executable,
    'run.py',
    f'--config=tests/tiny_experiment.py:{corpus_dir}',
    f'--workdir={workdir}',
    '--config.train.steps=400',
    '--config.loop.log_every=1',
    '--config.loop.checkpoint_every=1000',
    *flags,
  ]


_ONE_DEVICE = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_NUM_CPU_DEVICES': '1'}
_STRAIGHT_STEPS = 20


@pytest.fixture(scope='module')
def straight_losses(corpus_dir, tmp_path_factory):
  """The first 20 steps' losses of the 400-step run the signal tests stop, run straight."""
  workdir = tmp_path_factory.mktemp('straight') / 'run'
  subprocess.run(
    _run(corpus_dir, workdir, f'--config.loop.run_steps={_STRAIGHT_STEPS}'),
    cwd=ROOT,
    env=_ONE_DEVICE,
    check=True,
    capture_output=True,
    timeout=300,
  )
  return _losses(workdir)


@pytest.mark.slow
@pytest.mark.xdist_group('signals')  # one worker: the straight run is made once
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_exits_cleanly_then_resumes_exactly(
  corpus_dir, tmp_path, sig, straight_losses
):
  env = _ONE_DEVICE
  proc = subprocess.Popen(
    _run(corpus_dir, tmp_path / 'stopped'), cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
  )
  lines = []
  for line in proc.stderr:  # wait until training is under way
    lines.append(line)
    if 'step      5/400' in line:
      break
  proc.send_signal(sig)
  lines += proc.stderr.readlines()
  assert proc.wait(timeout=120) == 0, ''.join(lines)[-3000:]
  message = next(line for line in lines if 'received: saved step' in line)
  assert signal.Signals(sig).name in message
  stopped_at = int(message.split('saved step ')[1].split()[0])
  assert os.path.isdir(tmp_path / 'stopped' / 'checkpoints' / str(stopped_at))

  subprocess.run(
    _run(corpus_dir, tmp_path / 'stopped', '--config.loop.run_steps=2'),
    cwd=ROOT,
    env=env,
    check=True,
    capture_output=True,
    timeout=300,
  )
  resumed = _losses(tmp_path / 'stopped')
  assert sorted(resumed) == list(range(1, stopped_at + 3)) and stopped_at + 2 <= _STRAIGHT_STEPS
  assert [resumed[k] for k in sorted(resumed)] == [straight_losses[k] for k in sorted(resumed)]


@pytest.mark.slow
def test_sigkill_at_any_moment_resumes_from_a_complete_checkpoint(corpus_dir, tmp_path):
  """Killed hard at several points (every step starts an asynchronous save, so a kill is
  likely to land during one): each restart resumes from the last complete checkpoint, and
  the finished run's losses equal an uninterrupted run's."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_NUM_CPU_DEVICES': '1'}
  flags = ['--config.train.steps=24', '--config.loop.checkpoint_every=1']
  workdir = tmp_path / 'killed'
  for kill_after in (3, 7, 12):  # training-progress lines seen before the kill
    proc = subprocess.Popen(
      _run(corpus_dir, workdir, *flags), cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    seen = 0
    for line in proc.stderr:
      seen += ' | loss ' in line
      if seen >= kill_after:
        break
    proc.kill()
    proc.wait(timeout=60)
  done = subprocess.run(
    _run(corpus_dir, workdir, *flags),
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  subprocess.run(
    _run(corpus_dir, tmp_path / 'straight', *flags),
    cwd=ROOT,
    env=env,
    check=True,
    capture_output=True,
    timeout=300,
  )
  killed, straight = _losses(workdir), _losses(tmp_path / 'straight')
  assert sorted(killed) == list(range(1, 25))
  # metrics.jsonl may repeat steps that ran again after a kill; the last record of each
  # step must equal the uninterrupted run's.
  assert [killed[k] for k in range(1, 25)] == [straight[k] for k in range(1, 25)]


def test_scanned_and_unrolled_layers_resume_each_other(corpus_dir, tmp_path):
  """execution.scan_layers is an execution choice too: a run saved with unrolled layers
  resumes scanned, and back, and is the run it would have been."""
  whole = train.train_and_evaluate(tiny_config(corpus_dir, steps=6), str(tmp_path / 'whole'))
  resumed_dir = str(tmp_path / 'resumed')
  train.train_and_evaluate(tiny_config(corpus_dir, steps=6, run_steps=2), resumed_dir)
  scanned = tiny_config(corpus_dir, steps=6, run_steps=2, scan_layers=True)
  assert train.train_and_evaluate(scanned, resumed_dir)['step'] == 4
  resumed = train.train_and_evaluate(tiny_config(corpus_dir, steps=6), resumed_dir)
  assert resumed['step'] == 6
  np.testing.assert_allclose(resumed['loss'], whole['loss'], rtol=1e-4)


def test_a_config_saved_before_the_sections_moved_reads_in_the_new_layout(corpus_dir):
  """Runs saved with model.remat, train.log_every, data.cache_dir and no train.kind (the
  layout before issue 15) resume under today's config."""
  config = tiny_config(corpus_dir)
  old = json.loads(config.to_json())
  for field in ('scan_layers', 'remat', 'attention_block', 'loss_chunks'):
    old['model'][field] = old['execution'][field]
  old['train']['micro_batches'] = old['execution'].pop('micro_batches')
  loop = old.pop('loop')
  for field in ('profile_steps', 'wandb_project', 'wandb_entity', 'wandb_name', 'wandb_tags'):
    del loop[field]  # added after the move
  old['train'].update(loop)
  del old['model']['norm_eps']  # added later (issue 16), as were GPT-2's tokenizer paths
  del old['model']['attention_impl']  # (issue 17)
  for field in ('position', 'rope_theta', 'norm', 'mlp', 'num_kv_heads', 'qk_norm'):
    del old['model'][field]  # (issue 19)
  del old['data']['tokenizer']['vocab_path'], old['data']['tokenizer']['merges_path']
  old['data']['cache_dir'] = old['data']['prep'].pop('cache_dir')
  for field in ('kind', 'z_loss', 'label_smoothing'):
    del old['train'][field]
  del old['execution']
  faults.check_resumable(config, old, 'WORKDIR')  # no refusal
  old['model']['remat'] = 'full'  # an execution field: may change
  faults.check_resumable(config, old, 'WORKDIR')
  old['model']['d_model'] = 64  # the architecture: may not
  with pytest.raises(UserError, match=r'model.d_model: 64 -> 32'):
    faults.check_resumable(config, old, 'WORKDIR')


def test_a_fine_tune_saved_before_dpo_resumes():
  """An instruction fine-tune saved without the preference fields (issue 19) resumes under
  today's config; a pretraining config does not gain a finetune section."""
  from configs import finetune as finetune_configs

  config = finetune_configs.get_config('instruct')
  old = json.loads(config.to_json())
  for field in ('prompt_field', 'chosen_field', 'rejected_field', 'dpo'):
    del old['finetune'][field]
  faults.check_resumable(config, old, 'WORKDIR')  # no refusal
  assert 'finetune' not in faults.upgrade(json.loads(tiny_config('unused').to_json()))


def test_a_checkpoint_is_evaluated_with_this_machines_attention_not_the_saved_one():
  config = tiny_config('unused')
  saved = json.loads(config.to_json())
  saved['model'].update(attention_impl='splash', d_model=48)  # trained on a TPU, wider
  evaluated = faults.with_saved_model(config, saved, overrides=[])
  assert evaluated.model.d_model == 48 and evaluated.model.attention_impl == 'auto'
  config.model.attention_impl = 'reference'  # given on the command line: no clash
  evaluated = faults.with_saved_model(config, saved, overrides=['model.attention_impl'])
  assert evaluated.model.attention_impl == 'reference'
