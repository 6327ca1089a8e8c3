import jax
import pytest
from jax.sharding import PartitionSpec as P

from configs import mesh as mesh_presets
from jaxgpt import model as model_lib
from jaxgpt import sharding
from jaxgpt import runstate
from jaxgpt.errors import UserError
from tests.helpers import tiny_config


def _mesh_cfg(data, fsdp, tensor):
  m = mesh_presets.get('dp')
  m.shape.data, m.shape.fsdp, m.shape.tensor = data, fsdp, tensor
  return m


def test_minus_one_takes_remaining_devices():
  assert sharding.mesh_shape({'data': -1, 'fsdp': 2, 'tensor': 1}, 8) == {
    'data': 4,
    'fsdp': 2,
    'tensor': 1,
  }


def test_every_param_sharding_matches_the_rules(corpus_dir):
  config = tiny_config(corpus_dir)
  config.mesh = _mesh_cfg(2, 2, 2)
  mesh = sharding.make_mesh(config.mesh)
  cfg = model_lib.ModelConfig.from_config(config, 300)
  s = runstate.pretraining(config, cfg, mesh)
  state = s.init_state(0)
  # The Megatron + ZeRO-3 layout the rules describe, written out by hand.
  expected = {
    'tok_embed': P('tensor', 'fsdp'),
    'pos_embed': P(None, 'fsdp'),
    'qkv/kernel': P('fsdp', 'tensor', None, None),
    'qkv/bias': P('tensor', None, None),
    'out/kernel': P('tensor', None, 'fsdp'),
    'out/bias': P('fsdp'),
    'fc_in/kernel': P('fsdp', 'tensor'),
    'fc_in/bias': P('tensor'),
    'fc_out/kernel': P('tensor', 'fsdp'),
    'fc_out/bias': P('fsdp'),
    'scale': P('fsdp'),
    'bias': P('fsdp'),  # LayerNorms
  }
  leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
  assert len(leaves) == 4 + 2 * 12
  for path, leaf in leaves:
    name = '/'.join(k.key for k in path)
    rule = next(v for k, v in expected.items() if ('/' + name).endswith('/' + k))
    assert leaf.sharding.spec == rule, name
  # AdamW's moments live where their params do.
  mu = state.opt_state[1][0].mu
  assert mu['block_1']['mlp']['fc_in']['kernel'].sharding.spec == P('fsdp', 'tensor')


@pytest.mark.parametrize(
  'shape,match',
  [
    ({'data': 3, 'fsdp': 1, 'tensor': 1}, 'needs a multiple of 3 devices but there are 8'),
    ({'data': 2, 'fsdp': 2, 'tensor': 1}, 'uses 4 devices but there are 8; set one axis to -1'),
    ({'data': -1, 'fsdp': -1, 'tensor': 1}, 'at most one -1'),
    ({'data': -1, 'pipeline': 2}, 'unknown axes'),
  ],
)
def test_mesh_that_does_not_divide_devices(shape, match):
  with pytest.raises(UserError, match=match):
    sharding.mesh_shape(shape, 8)


def test_batch_must_divide_data_parallel_size(corpus_dir):
  mesh = sharding.make_mesh(_mesh_cfg(2, 2, 2))
  with pytest.raises(UserError, match=r'batch_size=6 .* does not divide the data-parallel size 4'):
    sharding.check_batch(6, 1, mesh)
  with pytest.raises(UserError, match='does not split into execution.micro_batches=3'):
    sharding.check_batch(8, 3, mesh)
  sharding.check_batch(8, 2, sharding.make_mesh(_mesh_cfg(2, 1, 4)))


def test_param_that_does_not_split_over_tensor_axis(corpus_dir):
  config = tiny_config(corpus_dir)
  config.mesh = _mesh_cfg(1, 1, 8)
  mesh = sharding.make_mesh(config.mesh)
  cfg = model_lib.ModelConfig.from_config(config, 300)  # 4 heads over 8 devices
  with pytest.raises(UserError, match=r"block_0/attn/.* has a dimension of 4 .*'tensor'"):
    runstate.pretraining(config, cfg, mesh)
