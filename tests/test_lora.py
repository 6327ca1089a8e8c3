"""Which params train, LoRA's parameter count, and adapters merged into plain kernels."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import lora, sharding, train
from jaxgpt import model as model_lib
from jaxgpt.errors import UserError
from tests.helpers import tiny_config

CFG = model_lib.ModelConfig(
  vocab_size=64, seq_len=16, num_layers=3, num_heads=2, d_model=16, mlp_dim=48, lora_rank=4
)


def _params(cfg, model=None):
  model = model or model_lib.Transformer(cfg)
  params = nn.unbox(train.init_params(model, jax.random.key(0)))
  # Non-zero B matrices, so that the adapters change the logits.
  return jax.tree_util.tree_map_with_path(
    lambda path, x: (
      x + 0.05 * jax.random.normal(jax.random.key(len(path)), x.shape)
      if path[-1].key == 'lora_b'
      else x
    ),
    params,
  )


@pytest.mark.parametrize(
  'overrides',
  [
    {},
    {'lora_targets': ('qkv',)},
    {'lora_targets': ('out', 'fc_out'), 'lora_rank': 2},
    {'scan_layers': True},
    {'mlp_dim': 40, 'lora_rank': 8},
  ],
)
def test_trainable_count_matches_the_closed_form(overrides):
  cfg = dataclasses.replace(CFG, **overrides)
  trainable, frozen = lora.split(_params(cfg), lora.predicate('lora', cfg))
  d, f, r = cfg.d_model, cfg.mlp_dim, cfg.lora_rank
  fans = {'qkv': d + 3 * d, 'out': d + d, 'fc_in': d + f, 'fc_out': f + d}
  assert lora.count(trainable) == cfg.num_layers * r * sum(fans[t] for t in cfg.lora_targets)
  assert lora.count(trainable) == lora.adapter_count(cfg)
  assert lora.count(frozen) == model_lib.param_count(dataclasses.replace(cfg, lora_rank=0))


@pytest.mark.parametrize('scan', [False, True])
def test_merged_logits_equal_adapter_logits(scan):
  cfg = dataclasses.replace(CFG, scan_layers=scan)
  params = _params(cfg)
  tokens = jax.random.randint(jax.random.key(2), (2, cfg.seq_len), 0, cfg.vocab_size)
  adapted = model_lib.Transformer(cfg).apply({'params': params}, tokens)
  plain_cfg = dataclasses.replace(cfg, lora_rank=0)
  merged = model_lib.Transformer(plain_cfg).apply(
    {'params': lora.merge_adapters(params, cfg)}, tokens
  )
  base = model_lib.Transformer(plain_cfg).apply(
    {'params': lora.merge_adapters(jax.tree.map(jnp.zeros_like, params), cfg)}, tokens
  )
  np.testing.assert_allclose(merged, adapted, atol=1e-5, rtol=0)
  assert not np.allclose(base, adapted, atol=1e-3)  # the adapters did change the model


def test_each_choice_trains_the_params_it_names():
  cfg = dataclasses.replace(CFG, lora_rank=0)
  classifier = model_lib.Classifier(cfg, 3)
  params = _params(cfg, classifier)

  def paths(choice, **kw):
    trainable, _ = lora.split(params, lora.predicate(choice, cfg, prefix=('backbone',), **kw))
    return sorted('/'.join(p) for p in _flat(trainable))

  assert paths('head') == ['head/bias', 'head/kernel']
  last = paths('last_k', last_k=1)
  assert 'head/kernel' in last and 'backbone/ln_final/scale' in last
  assert {p.split('/')[1] for p in last if p.startswith('backbone')} == {'block_2', 'ln_final'}
  assert len(paths('all')) == len(_flat(params))
  with pytest.raises(UserError, match='scan_layers=False'):
    lora.predicate('last_k', dataclasses.replace(cfg, scan_layers=True))
  with pytest.raises(UserError, match='use one of head, last_k, all, lora'):
    lora.predicate('some', cfg)


def _flat(tree):
  from flax import traverse_util

  return list(traverse_util.flatten_dict(tree))


def test_only_trainable_params_get_gradients_and_optimizer_state(corpus_dir):
  config = tiny_config(corpus_dir)
  cfg = dataclasses.replace(model_lib.ModelConfig.from_config(config.model, 64), lora_rank=2)
  mesh = sharding.make_mesh(config.mesh)
  model = model_lib.Transformer(cfg)
  s = train.setup(config, cfg, mesh, model, lora.predicate('lora', cfg), train.lm_loss(model))
  adapters = lora.count(s.abstract_state.params)
  assert adapters == lora.adapter_count(cfg)
  moments = s.abstract_state.opt_state[1][0]  # clip, then adamw's scale_by_adam
  assert lora.count(moments.mu) == lora.count(moments.nu) == adapters
  full = _params(cfg, model)
  trainable, s.frozen = lora.split(full, lora.predicate('lora', cfg))
  s.frozen = jax.device_put(s.frozen, s.frozen_shardings)
  before = jax.device_get(trainable)
  with s.context():
    state = jax.jit(
      lambda p: train.TrainState(jnp.int32(0), p, s.tx.init(p)), out_shardings=s.state_shardings
    )(trainable)
    step = train.jit_train_step(s, config)
    tokens = np.random.default_rng(0).integers(3, 64, (8, cfg.seq_len + 1)).astype(np.int32)
    batch = sharding.global_batch(
      {
        'inputs': tokens[:, :-1],
        'targets': tokens[:, 1:],
        'weights': np.ones((8, cfg.seq_len), np.float32),
      },
      mesh,
    )
    for _ in range(2):  # the first step's learning rate is 0 (warmup)
      state, metrics = step(state, batch)
  assert np.isfinite(float(metrics['loss']))
  assert jax.tree.structure(state.params) == jax.tree.structure(before)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state.params, before)
  assert all(jax.tree.leaves(changed))
