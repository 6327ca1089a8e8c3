import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import model as model_lib
from jaxgpt.errors import UserError
from experiments import default

CFG = model_lib.ModelConfig(
  vocab_size=128, seq_len=16, num_layers=2, num_heads=4, d_model=32, mlp_dim=64
)


def _init(cfg, batch=2):
  m = model_lib.Transformer(cfg)
  tokens = jax.random.randint(jax.random.key(1), (batch, cfg.seq_len), 0, cfg.vocab_size)
  params = nn.unbox(jax.jit(m.init)(jax.random.key(0), tokens)['params'])
  return m, params, tokens


def _apply(m, **kw):
  """m's logits as one compiled program: op by op, a forward compiles each op afresh."""
  return jax.jit(lambda p, tokens: m.apply({'params': p}, tokens, **kw))


@pytest.mark.parametrize('attention_block', [0, 4])
def test_future_tokens_never_change_earlier_logits(attention_block):
  cfg = dataclasses.replace(CFG, attention_block=attention_block)
  m, params, tokens = _init(cfg)
  forward = _apply(m)
  base = forward(params, tokens)
  for t in (0, 5, cfg.seq_len - 2):
    changed = tokens.at[:, t + 1 :].set((tokens[:, t + 1 :] + 7) % cfg.vocab_size)
    out = forward(params, changed)
    np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
    assert not np.allclose(out[:, t + 1 :], base[:, t + 1 :])


@pytest.mark.parametrize(
  'overrides',
  [
    {},
    {'use_bias': False},
    {'tie_embeddings': False},
    {'scan_layers': True},
    {'num_layers': 3, 'd_model': 48, 'num_heads': 6, 'mlp_dim': 80},
  ],
)
def test_param_count_matches_closed_form(overrides):
  cfg = dataclasses.replace(CFG, **overrides)
  m = model_lib.Transformer(cfg)
  shapes = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, cfg.seq_len), jnp.int32))
  assert sum(x.size for x in jax.tree.leaves(nn.unbox(shapes))) == model_lib.param_count(cfg)


def test_default_experiment_param_count():
  cfg = model_lib.ModelConfig.from_config(default.get_config(), tokenizer_vocab=8000)
  assert cfg.vocab_size == 8064  # padded to a multiple of 128
  # 8064*256 + 128*256 + 4 * (2*512 + 4*256*256 + 4*256 + 2*256*1024 + 1024 + 256) + 512
  assert model_lib.param_count(cfg) == 5_256_704


def test_query_blocked_attention_equals_full():
  m_full, params, tokens = _init(CFG)
  m_blocked = model_lib.Transformer(dataclasses.replace(CFG, attention_block=4))
  np.testing.assert_allclose(
    _apply(m_blocked)(params, tokens), _apply(m_full)(params, tokens), rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize('remat', ['full', 'dots', 'dots_no_batch'])
def test_remat_keeps_gradients(remat):
  m, params, tokens = _init(CFG)
  m_remat = model_lib.Transformer(dataclasses.replace(CFG, remat=remat))
  loss = lambda mod: lambda p: mod.apply({'params': p}, tokens).mean()
  g0, g1 = jax.jit(jax.grad(loss(m)))(params), jax.jit(jax.grad(loss(m_remat)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)


def test_scan_layers_matches_unrolled_blocks():
  m, params, tokens = _init(CFG)
  m_scan = model_lib.Transformer(dataclasses.replace(CFG, scan_layers=True))
  blocks = [params[f'block_{i}'] for i in range(CFG.num_layers)]
  scanned = {k: v for k, v in params.items() if not k.startswith('block_')}
  scanned['blocks'] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  np.testing.assert_allclose(
    _apply(m_scan)(scanned, tokens), _apply(m)(params, tokens), rtol=1e-5, atol=1e-5
  )


def test_dropout_only_when_not_deterministic():
  cfg = dataclasses.replace(CFG, dropout=0.5)
  m, params, tokens = _init(cfg)
  a = _apply(m, deterministic=True)(params, tokens)
  b = _apply(m, deterministic=True)(params, tokens)
  c = _apply(m, deterministic=False, rngs={'dropout': jax.random.key(3)})(params, tokens)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_params_and_activations_carry_logical_names():
  m = model_lib.Transformer(CFG)
  boxed = jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, CFG.seq_len), jnp.int32))
  names = nn.get_partition_spec(boxed['params'])
  assert names['tok_embed'] == jax.sharding.PartitionSpec('vocab', 'embed')
  assert names['block_0']['attn']['qkv']['kernel'] == jax.sharding.PartitionSpec(
    'embed', 'heads', None, 'head_dim'
  )
  assert names['block_0']['attn']['out']['kernel'] == jax.sharding.PartitionSpec(
    'heads', 'head_dim', 'embed'
  )
  assert names['block_0']['mlp']['fc_in']['kernel'] == jax.sharding.PartitionSpec('embed', 'mlp')
  assert names['block_0']['mlp']['fc_out']['kernel'] == jax.sharding.PartitionSpec('mlp', 'embed')
  scanned = model_lib.Transformer(dataclasses.replace(CFG, scan_layers=True))
  boxed = jax.eval_shape(scanned.init, jax.random.key(0), jnp.zeros((1, CFG.seq_len), jnp.int32))[
    'params'
  ]
  assert nn.get_partition_spec(boxed)['blocks']['mlp']['fc_in'][
    'kernel'
  ] == jax.sharding.PartitionSpec('layers', 'embed', 'mlp')


def test_heads_must_divide_width():
  c = default.get_config()
  c.model.num_heads = 5
  with pytest.raises(UserError, match=r'num_heads=5 does not divide model.d_model=256.*e\.g\. 4'):
    model_lib.ModelConfig.from_config(c, 1000)
