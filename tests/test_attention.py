"""Every attention implementation that runs on CPU against the reference: outputs and
gradients, causal and with packed segments; splash in Pallas' interpreter, alone and in
the model on a mesh; and the choice by platform, with its refusals."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import attention
from jaxgpt import fused_attention
from jaxgpt import model as model_lib
from jaxgpt import runstate
from jaxgpt import sharding
from jaxgpt.errors import UserError
from tests.helpers import tiny_config

B, L, H, K = 2, 128, 2, 16


def _qkv(dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  return tuple(jax.random.normal(k, (B, L, H, K), dtype) for k in keys)


def _segments():
  # Two rows packed differently: three documents, then one document with a tail of two.
  return jnp.asarray([[0] * 40 + [1] * 50 + [2] * 38, [0] * 126 + [1] * 2], jnp.int32)


IMPLS = {
  'einsum': lambda q, k, v, s: attention.causal(q, k, v, 0, lambda w: w, s),
  'einsum, query blocks of 32': lambda q, k, v, s: attention.causal(q, k, v, 32, lambda w: w, s),
  'dot_product_attention (the cudnn call, by XLA)': lambda q, k, v, s: fused_attention.cudnn(
    q, k, v, s, implementation='xla'
  ),
  'splash (Pallas interpreter)': lambda q, k, v, s: fused_attention.splash(
    q, k, v, s, interpret=True
  ),
}


@pytest.mark.parametrize('packed', [False, True], ids=['causal', 'segments'])
@pytest.mark.parametrize('name', IMPLS)
def test_outputs_and_gradients_match_the_reference(name, packed):
  q, k, v = _qkv()
  segments = _segments() if packed else None
  # A loss that weighs every output element differently, so that gradients are not uniform.
  w = jax.random.normal(jax.random.key(9), (B, L, H, K))
  loss = lambda fn: lambda q, k, v: (fn(q, k, v, segments) * w).sum()
  ref = lambda q, k, v, s: attention.reference(q, k, v, segments_BxL=s)
  np.testing.assert_allclose(
    jax.jit(IMPLS[name])(q, k, v, segments), ref(q, k, v, segments), atol=2e-5, rtol=1e-5
  )
  grads = jax.jit(jax.grad(loss(IMPLS[name]), argnums=(0, 1, 2)))(q, k, v)
  want = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for g, r, which in zip(grads, want, 'qkv'):
    np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4, err_msg=f'd{which}')


def test_the_reference_is_causal_and_keeps_to_segments():
  q, k, v = _qkv()
  segments = _segments()
  base = attention.reference(q, k, v, segments_BxL=segments)
  # Change keys and values at position 60 of row 0 (segment 1, which spans 40-89).
  k2, v2 = k.at[0, 60].add(1.0), v.at[0, 60].add(1.0)
  out = attention.reference(q, k2, v2, segments_BxL=segments)
  changed = np.abs(np.asarray(out - base)).max(axis=(2, 3)) > 0
  assert not changed[0, :60].any()  # earlier positions, and segment 0, never see it
  assert changed[0, 60:90].all()  # later positions of segment 1 do
  assert not changed[0, 90:].any()  # segment 2 does not
  assert not changed[1].any()


def test_bfloat16_inputs_match_the_reference_to_bfloat16_rounding():
  q, k, v = _qkv(jnp.bfloat16)
  ref = attention.reference(q, k, v)
  for name in ('einsum', 'splash (Pallas interpreter)'):
    out = IMPLS[name](q, k, v, None)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(
      np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=2e-2, rtol=2e-2
    )


def test_splash_declines_a_length_no_block_divides():
  q, k, v = (x[:, :96] for x in _qkv())
  assert fused_attention.splash(q, k, v, interpret=True) is None


CFG = model_lib.ModelConfig(
  vocab_size=128, seq_len=128, num_layers=1, num_heads=4, d_model=32, mlp_dim=64
)


@pytest.mark.parametrize(
  'mesh_shape, decoder',
  [('dp', {}), ('tp', {}), ('tp', {'num_kv_heads': 2, 'position': 'rope'})],
  ids=['dp', 'tp', 'tp-grouped-query'],
)
def test_splash_in_the_model_on_a_mesh_matches_einsum(mesh_shape, decoder):
  """The model's loss and gradients with splash (inside shard_map, each device on its rows
  or heads) equal the einsum path's, on 8 emulated devices; with grouped queries too (the
  2 key/value heads replicated over tensor=4)."""
  c = tiny_config('unused')
  shapes = {'dp': (8, 1, 1), 'tp': (2, 1, 4)}
  c.mesh.shape = dict(zip(('data', 'fsdp', 'tensor'), shapes[mesh_shape]))
  mesh = sharding.make_mesh(c.mesh)
  tokens = jax.random.randint(jax.random.key(1), (8, CFG.seq_len), 0, CFG.vocab_size)
  segments = jnp.asarray(np.repeat([[0] * 50 + [1] * 78], 8, 0), jnp.int32)
  results = {}
  for impl in ('einsum', 'splash'):
    cfg = dataclasses.replace(CFG, attention_impl=impl, **decoder)
    cfg = model_lib.on_platform(cfg, 'cpu')
    model = model_lib.Transformer(cfg)
    params = nn.unbox(model.init(jax.random.key(0), tokens[:1]))['params']
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.model_rules(c.mesh, mesh, cfg)):
      loss = lambda p: (model.apply({'params': p}, tokens, segments_BxL=segments) ** 2).mean()
      results[impl] = jax.jit(jax.value_and_grad(loss))(params)
      if impl == 'splash':  # the kernel ran per device, inside shard_map
        assert 'manual_computation' in jax.jit(loss).lower(params).as_text()
  np.testing.assert_allclose(results['splash'][0], results['einsum'][0], rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
    results['splash'][1],
    results['einsum'][1],
  )


@pytest.mark.parametrize(
  'platform, dtype, dropout, seq_len, want',
  [
    ('tpu', 'bfloat16', 0.0, 2048, 'splash'),
    ('tpu', 'float32', 0.0, 1024, 'splash'),
    ('tpu', 'bfloat16', 0.1, 2048, 'einsum'),  # the kernels have no dropout
    ('tpu', 'bfloat16', 0.0, 100, 'einsum'),  # no whole block of 128
    ('gpu', 'bfloat16', 0.0, 1024, 'cudnn'),
    ('gpu', 'float32', 0.0, 1024, 'einsum'),  # cuDNN's flash attention is 16-bit
    ('cpu', 'bfloat16', 0.0, 1024, 'einsum'),
  ],
)
def test_auto_picks_by_platform(platform, dtype, dropout, seq_len, want):
  assert attention.choose('auto', platform, dtype, dropout, seq_len) == want


@pytest.mark.parametrize(
  'impl, platform, dtype, dropout, seq_len, message',
  [
    ('flash', 'cpu', 'float32', 0.0, 128, r"model.attention_impl='flash': use one of auto, "),
    ('cudnn', 'cpu', 'bfloat16', 0.0, 128, r"runs on GPUs \(cuDNN\); this run's devices are cpu"),
    ('cudnn', 'gpu', 'float32', 0.0, 128, r'needs 16-bit inputs .*set model.dtype to bfloat16'),
    ('splash', 'tpu', 'float32', 0.1, 128, r'has no attention dropout, and model.dropout=0.1'),
    ('splash', 'tpu', 'float32', 0.0, 200, r'model.seq_len=200 is not a multiple'),
  ],
)
def test_a_choice_that_cannot_run_is_refused_by_name(
  impl, platform, dtype, dropout, seq_len, message
):
  with pytest.raises(UserError, match=message):
    attention.choose(impl, platform, dtype, dropout, seq_len)


def test_the_run_refuses_cudnn_on_cpu_before_compiling(corpus_dir):
  c = tiny_config(corpus_dir)
  c.model.attention_impl = 'cudnn'
  c.model.dtype = 'bfloat16'
  cfg = model_lib.ModelConfig.from_config(c, 300)
  with pytest.raises(UserError, match=r"model.attention_impl='cudnn' runs on GPUs"):
    runstate.pretraining(c, cfg, sharding.make_mesh(c.mesh))
  # and before the data are prepared: the config check every entry point runs first
  with pytest.raises(UserError, match=r"model.attention_impl='cudnn' runs on GPUs"):
    runstate.check_config(c, sharding.make_mesh(c.mesh))
