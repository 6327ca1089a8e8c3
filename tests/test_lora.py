"""Which params train, LoRA's parameter count, and adapters merged into plain kernels."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune as finetune_config
from jaxgpt import classifier, finetune, lora, runstate, sharding, trees
from jaxgpt import model as model_lib
from jaxgpt import step as step_lib
from jaxgpt.errors import UserError
from tests.helpers import tiny_config

CFG = model_lib.ModelConfig(
  vocab_size=64, seq_len=16, num_layers=3, num_heads=2, d_model=16, mlp_dim=48
)
SPEC = lora.Adapters(rank=4)


def _params(cfg, spec=SPEC, init=None, shapes_only=False):
  """Params with adapters (non-zero B matrices), initialised by one compiled program (op by
  op, each op compiles afresh); or their shapes alone."""
  init = init or runstate.init_fn(model_lib.Transformer(cfg))
  with lora.adapters(spec):
    if shapes_only:
      return nn.unbox(jax.eval_shape(init, jax.random.key(0)))
    params = nn.unbox(jax.jit(init)(jax.random.key(0)))
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
    {'targets': ('qkv',)},
    {'targets': ('out', 'fc_out'), 'rank': 2},
    {'scan_layers': True},
    {'mlp_dim': 40, 'rank': 8},
  ],
)
def test_trainable_count_matches_the_closed_form(overrides):
  model_fields = {k: v for k, v in overrides.items() if k in ('scan_layers', 'mlp_dim')}
  cfg = dataclasses.replace(CFG, **model_fields)
  spec = dataclasses.replace(SPEC, **{k: v for k, v in overrides.items() if k not in model_fields})
  trainable, frozen = trees.split(_params(cfg, spec, shapes_only=True), lora.predicate('lora', cfg))
  d, f, r = cfg.d_model, cfg.mlp_dim, spec.rank
  fans = {'qkv': d + 3 * d, 'out': d + d, 'fc_in': d + f, 'fc_out': f + d}
  assert trees.count(trainable) == cfg.num_layers * r * sum(fans[t] for t in spec.targets)
  assert trees.count(trainable) == lora.adapter_count(cfg, spec)
  assert trees.count(frozen) == model_lib.param_count(cfg)


# 2 query heads share 1 key/value head.
LLAMA = dict(position='rope', norm='rmsnorm', mlp='swiglu', use_bias=False, num_kv_heads=1)


def test_llama_parts_take_adapters_on_every_target():
  """Grouped-query attention's q and kv layers are the 'qkv' target; SwiGLU's fc_in is one
  D x 2F layer: rank * (fan-in + fan-out) each."""
  cfg = dataclasses.replace(CFG, **LLAMA)
  trainable, frozen = trees.split(_params(cfg, shapes_only=True), lora.predicate('lora', cfg))
  d, f, r, k = cfg.d_model, cfg.mlp_dim, SPEC.rank, cfg.head_dim
  per_layer = r * ((d + d) + (d + 2 * k) + (d + d) + (d + 2 * f) + (f + d))
  assert trees.count(trainable) == cfg.num_layers * per_layer == lora.adapter_count(cfg, SPEC)
  assert trees.count(frozen) == model_lib.param_count(cfg)


@pytest.mark.parametrize('scan, model', [(False, {}), (True, {}), (False, LLAMA)])
def test_merged_logits_equal_adapter_logits(scan, model):
  cfg = dataclasses.replace(CFG, scan_layers=scan, **model)
  params = _params(cfg)
  tokens = jax.random.randint(jax.random.key(2), (2, cfg.seq_len), 0, cfg.vocab_size)
  forward = lambda: jax.jit(lambda p, t: model_lib.Transformer(cfg).apply({'params': p}, t))
  with lora.adapters(SPEC):  # traced inside: the adapted model
    adapted = forward()(params, tokens)
  merged = forward()(lora.merge_adapters(params, SPEC, scan), tokens)
  base = forward()(lora.merge_adapters(jax.tree.map(jnp.zeros_like, params), SPEC, scan), tokens)
  np.testing.assert_allclose(merged, adapted, atol=1e-5, rtol=0)
  assert not np.allclose(base, adapted, atol=1e-3)  # the adapters did change the model


def test_each_choice_trains_the_params_it_names():
  cfg = CFG
  params = _params(cfg, None, classifier.init_fn(classifier.Classifier(cfg, 3)), shapes_only=True)

  def paths(choice, **kw):
    trainable, _ = trees.split(params, lora.predicate(choice, cfg, prefix=('backbone',), **kw))
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
  """The fine-tune's run freezes through its optimizer: moments for the adapters only, and
  after two steps every adapter has moved while every other param is bit-identical."""
  config = tiny_config(corpus_dir)
  config.unlock()
  config.finetune = finetune_config.finetune_config('instruct')
  config.train.kind = 'instruct'
  config.finetune.lora.rank = 2
  mesh = sharding.make_mesh(config.mesh)
  run = finetune.build_run(config, mesh, 64)
  cfg, spec = run.model.cfg, lora.of_finetune(config.finetune)
  is_trainable = lora.predicate('lora', cfg)
  adapters = trees.count(trees.split(run.abstract_state.params, is_trainable)[0])
  assert adapters == lora.adapter_count(cfg, spec)
  # multi_transform's 'train' branch: masked, then clip, then adamw's scale_by_adam
  moments = run.abstract_state.opt_state.inner_states['train'].inner_state[1][0]
  assert trees.count(moments.mu) == trees.count(moments.nu) == adapters
  full = _params(cfg, None, run.init_fn)  # run.init_fn adds the adapters itself
  trainable, frozen = trees.split(full, is_trainable)
  before, frozen_before = jax.device_get(trainable), jax.device_get(frozen)
  with run.context():
    state = run.init_state(params=jax.tree.map(jax.device_put, full, run.state_shardings.params))
    step = step_lib.jit_train_step(run, config)
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
  after, frozen_after = trees.split(jax.device_get(state.params), is_trainable)
  assert jax.tree.structure(after) == jax.tree.structure(before)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), after, before)
  assert all(jax.tree.leaves(changed))
  jax.tree.map(np.testing.assert_array_equal, frozen_after, frozen_before)
