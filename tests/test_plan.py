import importlib.metadata
import importlib.util

import pytest

from configs import finetune as finetune_config
from jaxgpt import finetune
from jaxgpt import plan
from jaxgpt.errors import UserError
from tests.helpers import run_py, tiny_config


def _config(corpus_dir, **mesh):
  c = tiny_config(corpus_dir)
  c.model.d_model, c.model.num_heads, c.model.seq_len = 128, 8, 64
  c.data.tokenizer.vocab_size = 1000
  c.execution.loss_chunks = 8  # the opt-in chunked loss, whose loop the table names
  for axis in ('data', 'fsdp', 'tensor'):
    c.mesh.shape[axis] = mesh.get(axis, 1)
  return c


def test_fsdp_shards_params_and_optimizer_state(corpus_dir):
  report = plan.plan(_config(corpus_dir, fsdp=8), 'cpu:8', device_memory_gb=1)
  replicated = plan.plan(_config(corpus_dir, data=8), 'cpu:8')
  mem, full = report['bytes_per_device'], replicated['bytes_per_device']
  assert full['params'] == 4 * report['params']  # float32, whole on every device
  sharded = mem['params'] + mem['optimizer']
  assert abs(sharded / ((full['params'] + full['optimizer']) / 8) - 1) < 0.10
  assert report['fits'] and report['device_memory'] == 1 << 30
  assert report['collectives']['all-gather']['count'] > 0  # params gathered for use
  assert 'all-gather' not in replicated['collectives']
  assert report['flops_per_device']['xla'] == pytest.approx(
    report['flops_per_device']['model'], rel=0.25
  )
  # The loss's chunk loop is counted once; the table says so.
  assert "one pass of each loop: the loss's 8 chunks" in plan.table(report)


def test_does_not_fit_a_small_device(corpus_dir):
  report = plan.plan(_config(corpus_dir, data=8), 'cpu:8', device_memory_gb=0.001)
  assert not report['fits']
  assert 'fits                  | NO' in plan.table(report)


def test_unknown_topology_names_the_choices(corpus_dir):
  with pytest.raises(UserError, match=r"unknown topology 'h100-8': use cpu:N or one of"):
    plan.plan(_config(corpus_dir), 'h100-8')
  with pytest.raises(UserError, match=r'no v5e slice with 3 chips'):
    plan.plan(_config(corpus_dir), 'v5e-3')


@pytest.mark.skipif(
  importlib.util.find_spec('libtpu') is None, reason='the optional libtpu package is not installed'
)
def test_tpu_topology(corpus_dir):
  report = plan.plan(_config(corpus_dir, fsdp=8), 'v5e-8')
  assert report['devices'] == 8 and report['device_memory'] == 16 << 30 and report['fits']
  assert report['collectives']
  assert report['attention'] == 'einsum'  # 64 positions: no whole splash block


@pytest.mark.skipif(
  importlib.util.find_spec('libtpu') is None, reason='the optional libtpu package is not installed'
)
def test_tpu_plan_compiles_splash_and_the_einsum_path_beside_it(corpus_dir):
  c = _config(corpus_dir, fsdp=8)
  c.model.seq_len, c.model.dtype, c.train.batch_size = 1024, 'bfloat16', 64
  report = plan.plan(c, 'v5e-8')
  assert report['attention'] == 'splash'
  einsum = report['einsum_attention']
  # The einsum path holds (B, H, L, L) scores; splash holds blocks of them.
  assert einsum['temporaries'] > report['bytes_per_device']['temporaries']
  assert 'the einsum path     | temporaries' in plan.table(report)


@pytest.mark.slow
def test_run_py_plan_mode_prints_and_writes(tmp_path):
  proc = run_py(
    '--config=experiments/default.py',
    f'--workdir={tmp_path}',
    '--mode=plan',
    '--topology=cpu:8',
    '--config.mesh.shape.fsdp=2',
    '--config.mesh.shape.tensor=2',
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in proc.stdout
  assert 'temporaries / device' in proc.stdout and 'all-reduce' in proc.stdout
  assert (tmp_path / 'plan-cpu8.json').exists()


@pytest.mark.skipif(
  importlib.util.find_spec('libtpu') is not None,
  reason='libtpu is installed: the TPU test above runs instead',
)
def test_tpu_topology_without_libtpu_says_what_to_install(corpus_dir):
  with pytest.raises(
    UserError,
    match=r'needs the TPU compiler from the optional libtpu '
    r'package: pip install libtpu==0\.0\.42\.1 ',
  ):
    plan.plan(_config(corpus_dir, fsdp=8), 'v5e-8')


def test_a_libtpu_of_another_version_is_refused_by_name(corpus_dir, monkeypatch):
  real = importlib.metadata.version
  monkeypatch.setattr(
    importlib.metadata, 'version', lambda name: '0.0.52' if name == 'libtpu' else real(name)
  )
  with pytest.raises(
    UserError,
    match=r'libtpu 0\.0\.52 is installed, but jax \S+ needs '
    r'libtpu 0\.0\.42\.1 .*pip install libtpu==0\.0\.42\.1',
  ):
    plan.plan(_config(corpus_dir, fsdp=8), 'v5e-8')


def test_a_fine_tune_plans_its_own_step(corpus_dir):
  """--mode=plan on a fine-tune compiles the fine-tune's step: every param in the state,
  moments only for the LoRA adapters and the head it trains."""
  c = finetune_config.get_config('classify')
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.seq_len = 2, 128, 8, 64
  c.data.tokenizer.vocab_size = 1000
  c.mesh.shape.data = 8
  tuned = plan.plan(c, 'cpu:8', build_run=finetune.plan_run)['bytes_per_device']
  pretraining = plan.plan(_config(corpus_dir, data=8), 'cpu:8')['bytes_per_device']
  assert tuned['params'] > pretraining['params']  # the decoder's, its adapters and the head
  assert tuned['optimizer'] < pretraining['optimizer'] / 10


def test_a_dpo_plan_counts_both_sequences_of_each_pair():
  c = finetune_config.get_config('dpo')
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.seq_len = 2, 128, 8, 64
  c.data.tokenizer.vocab_size = 1000
  c.mesh.shape.data = 8
  flops = plan.plan(c, 'cpu:8', build_run=finetune.plan_run)['flops_per_device']
  # XLA's count of the compiled step against the model's, over 2 x 8 sequences of 64.
  assert 0.9 < flops['xla'] / flops['model'] < 1.3


def test_run_py_plans_a_fine_tune(tmp_path):
  proc = run_py(
    '--config=experiments/finetune_instruct.py',
    f'--workdir={tmp_path}',
    '--mode=plan',
    '--topology=cpu:8',
    '--config.model.num_layers=2',
    '--config.model.d_model=64',
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'temporaries / device' in proc.stdout
  assert (tmp_path / 'plan-cpu8.json').exists()
