"""The decoder options (RoPE, RMSNorm, SwiGLU, grouped-query attention, QK-norm, no
biases): the same function as transformers' Llama and Qwen 3, their closed-form counts,
attention with fewer key/value heads against the reference, their shardings and the
planner's word on them, and the refusals of settings that cannot work."""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxgpt import attention
from jaxgpt import fused_attention
from jaxgpt import model as model_lib
from jaxgpt import plan
from jaxgpt import rotary
from jaxgpt import runstate
from jaxgpt import sharding
from jaxgpt.architecture import default_mlp_dim
from jaxgpt.errors import UserError
from tests.helpers import tiny_config

CFG = model_lib.ModelConfig(
  vocab_size=128, seq_len=16, num_layers=2, num_heads=4, d_model=32, mlp_dim=64
)
LLAMA = dict(position='rope', norm='rmsnorm', mlp='swiglu', use_bias=False, num_kv_heads=2)


def _params(cfg, shapes_only=False):
  """The model and its params, initialised by one compiled program (op by op, each op
  compiles afresh), or their shapes alone."""
  m = model_lib.Transformer(cfg)
  tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
  init = (lambda *a: jax.eval_shape(m.init, *a)) if shapes_only else jax.jit(m.init)
  return m, nn.unbox(init(jax.random.key(0), tokens)['params'])


@pytest.mark.parametrize(
  'overrides',
  [
    {'position': 'rope'},
    {'norm': 'rmsnorm'},
    {'norm': 'rmsnorm', 'use_bias': False},
    {'mlp': 'swiglu'},
    {'mlp': 'swiglu', 'use_bias': False},
    {'num_kv_heads': 2},
    {'num_kv_heads': 1, 'use_bias': False},
    {'qk_norm': True},
    dict(LLAMA, qk_norm=True, tie_embeddings=False),
    dict(LLAMA, scan_layers=True),
  ],
)
def test_param_count_matches_closed_form(overrides):
  cfg = dataclasses.replace(CFG, **overrides)
  _, params = _params(cfg, shapes_only=True)
  assert sum(x.size for x in jax.tree.leaves(params)) == model_lib.param_count(cfg)


def test_options_change_the_params_they_name():
  _, params = _params(dataclasses.replace(CFG, **LLAMA, qk_norm=True), shapes_only=True)
  assert 'pos_embed' not in params
  attn = params['block_0']['attn']
  assert attn['q']['kernel'].shape == (32, 4, 8) and attn['kv']['kernel'].shape == (32, 2, 2, 8)
  assert attn['q_norm']['scale'].shape == (8,)
  assert params['block_0']['mlp']['fc_in']['kernel'].shape == (32, 64, 2)
  assert set(params['block_0']['ln_attn']) == {'scale'}  # RMSNorm: no bias
  assert not any(
    'bias' in '/'.join(map(str, p)) for p, _ in jax.tree_util.tree_leaves_with_path(params)
  )


def test_swiglu_width_follows_llama():
  assert default_mlp_dim(4096, 'swiglu') == 11008
  assert default_mlp_dim(4096, 'gelu') == 16384


def _to_hf(params, cfg):
  """Our params as a transformers Llama/Qwen 3 state dict (torch tensors)."""
  import torch

  t = lambda x: torch.tensor(np.asarray(x, np.float32))
  d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim
  out = {'model.embed_tokens.weight': t(params['tok_embed'])}
  out['model.norm.weight'] = t(params['ln_final']['scale'])
  for i in range(cfg.num_layers):
    b, p = params[f'block_{i}'], f'model.layers.{i}.'
    kv = np.asarray(b['attn']['kv']['kernel'])
    fc_in = np.asarray(b['mlp']['fc_in']['kernel'])
    out.update(
      {
        p + 'input_layernorm.weight': t(b['ln_attn']['scale']),
        p + 'post_attention_layernorm.weight': t(b['ln_mlp']['scale']),
        p + 'self_attn.q_proj.weight': t(np.asarray(b['attn']['q']['kernel']).reshape(d, h * k).T),
        p + 'self_attn.k_proj.weight': t(kv[:, :, 0].reshape(d, g * k).T),
        p + 'self_attn.v_proj.weight': t(kv[:, :, 1].reshape(d, g * k).T),
        p + 'self_attn.o_proj.weight': t(
          np.asarray(b['attn']['out']['kernel']).reshape(h * k, d).T
        ),
        p + 'mlp.gate_proj.weight': t(fc_in[:, :, 0].T),
        p + 'mlp.up_proj.weight': t(fc_in[:, :, 1].T),
        p + 'mlp.down_proj.weight': t(np.asarray(b['mlp']['fc_out']['kernel']).T),
      }
    )
    if cfg.qk_norm:
      out[p + 'self_attn.q_norm.weight'] = t(b['attn']['q_norm']['scale'])
      out[p + 'self_attn.k_norm.weight'] = t(b['attn']['k_norm']['scale'])
  return out


@pytest.mark.parametrize('family', ['llama', 'qwen3'])
def test_logits_equal_transformers(family):
  """Llama's parts (and Qwen 3's QK-norm) are the published functions: our params loaded
  into transformers' own model give our logits."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')

  qk_norm = family == 'qwen3'
  cfg = dataclasses.replace(CFG, **LLAMA, qk_norm=qk_norm, rope_theta=500.0, norm_eps=1e-6)
  # Weights far from init (norm scales and all), so that every part shows in the logits.
  m, params = _params(cfg)
  keys = jax.tree.unflatten(
    jax.tree.structure(params),
    list(jax.random.split(jax.random.key(5), len(jax.tree.leaves(params)))),
  )
  noisy = lambda params, keys: jax.tree.map(
    lambda x, k: x + 0.3 * jax.random.normal(k, x.shape), params, keys
  )
  params = jax.jit(noisy)(params, keys)
  shape = dict(
    vocab_size=cfg.vocab_size,
    hidden_size=cfg.d_model,
    intermediate_size=cfg.mlp_dim,
    num_hidden_layers=cfg.num_layers,
    num_attention_heads=cfg.num_heads,
    num_key_value_heads=cfg.kv_heads,
    head_dim=cfg.head_dim,
    max_position_embeddings=cfg.seq_len,
    rms_norm_eps=cfg.norm_eps,
    rope_theta=cfg.rope_theta,
    tie_word_embeddings=True,
    attention_bias=False,
  )
  if qk_norm:
    hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**shape))
  else:
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape, mlp_bias=False))
  missing, unexpected = hf.load_state_dict(_to_hf(params, cfg), strict=False)
  assert not unexpected and set(missing) <= {'lm_head.weight'}  # tied to the embedding
  hf.tie_weights()
  tokens = np.asarray(jax.random.randint(jax.random.key(2), (2, cfg.seq_len), 0, cfg.vocab_size))
  with torch.no_grad():
    want = hf(torch.tensor(tokens)).logits.numpy()
  got = np.asarray(jax.jit(lambda p, t: m.apply({'params': p}, t))(params, tokens))
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)


def test_rotary_scores_depend_only_on_distance():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))
  score = lambda i, j: float(
    (rotary.rotate(q, jnp.array([[i]]), 1e4) * rotary.rotate(k, jnp.array([[j]]), 1e4)).sum()
  )
  np.testing.assert_allclose(score(3, 1), score(40, 38), rtol=1e-5)
  np.testing.assert_allclose(score(0, 0), float((q * k).sum()), rtol=1e-6)
  assert abs(score(3, 1) - score(3, 2)) > 1e-3


B, L, H, K = 2, 64, 4, 8


@pytest.mark.parametrize('groups', [2, 1], ids=['grouped', 'multi-query'])
@pytest.mark.parametrize('packed', [False, True], ids=['causal', 'segments'])
@pytest.mark.parametrize('impl', ['einsum', 'einsum blocks', 'dot_product_attention'])
def test_grouped_attention_matches_the_reference(impl, packed, groups):
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (B, L, H, K))
  k, v = (jax.random.normal(key, (B, L, groups, K)) for key in keys[1:3])
  segments = jnp.asarray([[0] * 20 + [1] * 44, [0] * 60 + [1] * 4]) if packed else None
  fn = {
    'einsum': lambda q, k, v: attention.causal(q, k, v, 0, lambda w: w, segments),
    'einsum blocks': lambda q, k, v: attention.causal(q, k, v, 16, lambda w: w, segments),
    'dot_product_attention': lambda q, k, v: fused_attention.cudnn(
      q, k, v, segments, implementation='xla'
    ),
  }[impl]
  reference = jax.jit(lambda q, k, v: attention.reference(q, k, v, segments_BxL=segments))
  want = reference(q, k, v)
  # The reference repeats each key/value head for its query heads, as Llama's repeat_kv.
  head = 3
  one = reference(
    q[:, :, head : head + 1],
    k[:, :, head * groups // H][:, :, None],
    v[:, :, head * groups // H][:, :, None],
  )
  np.testing.assert_allclose(want[:, :, head : head + 1], one, atol=1e-6)
  np.testing.assert_allclose(jax.jit(fn)(q, k, v), want, atol=2e-5, rtol=1e-5)
  w = jax.random.normal(keys[3], want.shape)
  grads = jax.jit(jax.grad(lambda *a: (fn(*a) * w).sum(), argnums=(0, 1, 2)))(q, k, v)
  wants = jax.jit(jax.grad(lambda *a: (reference(*a) * w).sum(), argnums=(0, 1, 2)))(q, k, v)
  for g, r in zip(grads, wants):
    np.testing.assert_allclose(g, r, atol=5e-5, rtol=1e-4)


def _run(corpus_dir, tensor: int, **model):
  config = tiny_config(corpus_dir)
  config.model.update(model)
  config.mesh.shape.update(data=8 // (2 * tensor), fsdp=2, tensor=tensor)
  mesh = sharding.make_mesh(config.mesh)
  cfg = model_lib.ModelConfig.from_config(config, 300)
  return config, mesh, runstate.pretraining(config, cfg, mesh)


@pytest.mark.parametrize(
  'kv_heads, tensor, kv_spec',
  [(2, 2, P('fsdp', 'tensor', None, None)), (2, 4, P('fsdp', None, None, None))],
  ids=['split', 'replicated'],
)
def test_key_value_heads_split_over_tensor_when_they_divide_it(
  corpus_dir, kv_heads, tensor, kv_spec
):
  config, mesh, run = _run(corpus_dir, tensor, **dict(LLAMA, num_kv_heads=kv_heads, qk_norm=True))
  attn = run.state_shardings.params['block_0']['attn']
  assert attn['kv']['kernel'].spec == kv_spec
  assert attn['q']['kernel'].spec == P('fsdp', 'tensor', None)  # the queries stay split
  assert attn['q_norm']['scale'].spec == P(None)
  assert run.state_shardings.params['block_0']['mlp']['fc_in']['kernel'].spec == P(
    'fsdp', 'tensor', None
  )
  note = sharding.kv_heads_note(config.mesh, mesh, run.model.cfg)
  if tensor == 4:
    assert 'model.num_kv_heads=2 does not divide mesh axes tensor (4 devices)' in note
  else:
    assert note == ''


@pytest.mark.slow
def test_the_planner_says_when_key_value_heads_are_replicated(corpus_dir):
  config = tiny_config(corpus_dir)
  config.model.update(LLAMA, num_kv_heads=1)
  config.mesh.shape.update(data=1, fsdp=2, tensor=4)
  report = plan.plan(config, 'cpu:8')
  table = plan.table(report)
  assert re.search(r'key/value heads +\| 1 for 4 query heads: model.num_kv_heads=1 does not', table)
  config.model.num_kv_heads = 0
  assert 'key/value heads' not in plan.table(plan.plan(config, 'cpu:8'))


@pytest.mark.parametrize(
  'field, value, match',
  [
    ('position', 'alibi', r"model.position='alibi': use one of learned, rope"),
    ('norm', 'batchnorm', r"model.norm='batchnorm': use one of layernorm, rmsnorm"),
    ('mlp', 'relu', r"model.mlp='relu': use one of gelu, swiglu"),
    ('num_kv_heads', 3, r'num_kv_heads=3 must divide model.num_heads=4.*\[1, 2, 4\]'),
    ('num_kv_heads', 8, r'num_kv_heads=8 must divide'),
    ('rope_theta', 0.5, r'rope_theta=0.5 must be above 1'),
  ],
)
def test_bad_decoder_options_are_refused_by_name(corpus_dir, field, value, match):
  config = tiny_config(corpus_dir)
  config.model.position = 'rope'
  config.model[field] = value
  with pytest.raises(UserError, match=match):
    model_lib.ModelConfig.from_config(config, 300)


def test_rope_needs_an_even_head_size(corpus_dir):
  config = tiny_config(corpus_dir)
  config.model.update(position='rope', d_model=36, num_heads=4)
  with pytest.raises(UserError, match=r"position='rope'.*36 / model.num_heads=4 = 9 is odd"):
    model_lib.ModelConfig.from_config(config, 300)
