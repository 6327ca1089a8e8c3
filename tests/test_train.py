import glob
import json
import os

import jax
import numpy as np
import pytest

from jaxgpt.data.synthetic import random_batch
from configs import mesh as mesh_presets
from jaxgpt import model as model_lib
from jaxgpt import sharding
from jaxgpt import runstate
from jaxgpt import step as step_lib
from jaxgpt import train
from tests.helpers import tiny_config


def _losses(config, shape, steps=3, batches=None):
  config.mesh = mesh_presets.get('dp')
  for axis, size in zip(('data', 'fsdp', 'tensor'), shape):
    config.mesh.shape[axis] = size
  n = int(np.prod(shape))
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:n])
  # 384 ids (no padding to mask) for random tokens below 300: the unused 84 are what the
  # first steps learn, so the losses fall. (Over 300 real ids, random targets are already at
  # the loss's floor, log 300.)
  cfg = model_lib.ModelConfig.from_config(config, 384)
  s = runstate.pretraining(config, cfg, mesh)
  state = s.init_state(config.train.seed)
  with s.context():
    step = step_lib.jit_train_step(s, config)
    losses = []
    for i in range(steps):
      batch = (
        batches[i]
        if batches
        else random_batch(config.train.batch_size, config.model.seq_len, 300, i)
      )
      state, metrics = step(state, sharding.global_batch(batch, mesh))
      losses.append(float(metrics['loss']))
  return losses, jax.device_get(state.params)


def test_first_losses_agree_across_meshes(corpus_dir):
  config = tiny_config(corpus_dir)
  reference, _ = _losses(config, (1, 1, 1))
  for shape in [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4), (1, 1, 4), (2, 4, 1), (4, 1, 2)]:
    losses, _ = _losses(tiny_config(corpus_dir), shape)
    np.testing.assert_allclose(losses, reference, rtol=0, atol=1e-5, err_msg=str(shape))
  assert reference[2] < reference[0]  # and they are training, not constant


@pytest.mark.parametrize(
  'model, shapes',
  [
    # Llama's parts, QK-norm and 2 key/value heads: split over tensor=2, replicated over 4.
    (
      dict(
        position='rope', norm='rmsnorm', mlp='swiglu', use_bias=False, num_kv_heads=2, qk_norm=True
      ),
      [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4), (4, 1, 2)],
    ),
    (dict(position='rope', num_kv_heads=1), [(2, 2, 2), (2, 1, 4)]),  # multi-query
  ],
  ids=['llama', 'multi-query'],
)
def test_first_losses_agree_across_meshes_with_the_decoder_options(corpus_dir, model, shapes):
  def losses(shape):
    config = tiny_config(corpus_dir)
    config.model.update(model)
    config.optim.lr = 1e-2  # one batch three times at a high rate: the fall shows in 3 steps
    batch = random_batch(config.train.batch_size, config.model.seq_len, 300)
    return _losses(config, shape, batches=[batch] * 3)[0]

  reference = losses((1, 1, 1))
  for shape in shapes:
    np.testing.assert_allclose(losses(shape), reference, rtol=0, atol=1e-5, err_msg=str(shape))
  assert reference[2] < reference[0]


def test_gradient_accumulation_equals_full_batch(corpus_dir):
  full, full_params = _losses(tiny_config(corpus_dir), (2, 2, 2))
  accum, accum_params = _losses(tiny_config(corpus_dir, micro_batches=2), (2, 2, 2))
  np.testing.assert_allclose(accum, full, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), accum_params, full_params)


def test_overfits_one_small_batch(corpus_dir):
  config = tiny_config(corpus_dir)
  config.model.d_model = 64
  config.optim.lr = config.optim.min_lr = 3e-3  # constant after warmup
  config.optim.warmup_steps, config.optim.weight_decay = 5, 0.0
  config.train.steps = 150
  batch = random_batch(config.train.batch_size, config.model.seq_len, 300)
  losses, _ = _losses(config, (8, 1, 1), steps=150, batches=[batch] * 150)
  assert losses[0] > 5.0  # about log(384) at init
  assert losses[-1] < 0.1, losses[-10:]


def _train_losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r['loss'] for r in map(json.loads, f) if r['kind'] == 'train']


def test_resume_matches_uninterrupted_run(corpus_dir, tmp_path):
  n = 4

  def config(**train_overrides):
    c = tiny_config(corpus_dir, steps=2 * n, checkpoint_every=n, **train_overrides)
    c.mesh.shape.data, c.mesh.shape.fsdp = 2, -1
    return c

  straight = train.train_and_evaluate(config(), str(tmp_path / 'straight'))
  split_dir = str(tmp_path / 'split')
  first = train.train_and_evaluate(config(run_steps=n), split_dir)
  assert first['step'] == n
  second = train.train_and_evaluate(config(), split_dir)
  assert second['step'] == 2 * n
  assert _train_losses(split_dir) == _train_losses(str(tmp_path / 'straight'))
  assert second['loss'] == straight['loss']

  from jaxgpt import checkpoint

  params = []
  for d in ('straight', 'split'):
    ckpt = checkpoint.Checkpointer(str(tmp_path / d))
    params.append(ckpt.restore(2 * n, None)['params'])
    ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, params[0], params[1])

  again = train.train_and_evaluate(config(), split_dir)
  assert again == {'complete': True, 'step': 2 * n}


def test_profile_steps_write_one_trace_of_those_steps(corpus_dir, tmp_path):
  train.train_and_evaluate(tiny_config(corpus_dir, steps=4, profile_steps=(2, 3)), str(tmp_path))
  traces = glob.glob(str(tmp_path / 'tensorboard' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0, traces


def _wandb_history(path):
  """The history rows of an offline wandb run file: LevelDB-log framing (a 7-byte file
  header, then 32 KiB blocks of records with a 7-byte crc/length/type header, split
  records typed first/middle/last) around wandb's Record protos."""
  import struct

  from wandb.proto import wandb_internal_pb2

  with open(path, 'rb') as f:
    data = f.read()
  rows, pos, part = [], 7, b''
  while pos + 7 <= len(data):
    if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
      pos += 32768 - pos % 32768
      continue
    _, length, kind = struct.unpack('<IHB', data[pos : pos + 7])
    part += data[pos + 7 : pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # a full record, or the last piece of one
      record = wandb_internal_pb2.Record()
      record.ParseFromString(part)
      part = b''
      if record.WhichOneof('record_type') == 'history':
        rows.append({i.key or '/'.join(i.nested_key): i.value_json for i in record.history.item})
  return rows


def test_wandb_logs_offline_and_a_resumed_run_keeps_its_wandb_run(
  corpus_dir, tmp_path, monkeypatch
):
  """loop.wandb_project on, no network (WANDB_MODE=offline): a run stopped at step 3 and
  resumed logs steps 1-6 into one wandb run, whose id is kept in the workdir."""
  pytest.importorskip('wandb')
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  config = tiny_config(corpus_dir, steps=6, run_steps=3, wandb_project='jaxgpt-test')
  workdir = str(tmp_path / 'run')
  assert train.train_and_evaluate(config, workdir)['step'] == 3
  with open(os.path.join(workdir, 'wandb_id')) as f:
    run_id = f.read()
  train.train_and_evaluate(config, workdir)  # resumes at step 3, runs to 6
  with open(os.path.join(workdir, 'wandb_id')) as f:
    assert f.read() == run_id
  runs = sorted(glob.glob(os.path.join(workdir, 'wandb', f'offline-run-*-{run_id}')))
  assert len(runs) == 2, runs  # one directory per invocation, both of the same run
  rows = [r for run in runs for r in _wandb_history(os.path.join(run, f'run-{run_id}.wandb'))]
  train_rows = [r for r in rows if 'train/loss' in r]
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    want = [r['loss'] for r in map(json.loads, f) if r['kind'] == 'train']
  assert [int(r['_step']) for r in train_rows] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([float(r['train/loss']) for r in train_rows], want, rtol=1e-6)
