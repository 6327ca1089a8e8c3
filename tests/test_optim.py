import jax.numpy as jnp
import numpy as np

from configs import base
from jaxgpt import optim


def test_warmup_then_cosine_to_min_lr():
  cfg = base.optim_config()
  cfg.lr, cfg.min_lr, cfg.warmup_steps = 1e-3, 1e-4, 10
  lr = optim.schedule(cfg, total_steps=110)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(5)), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(lr(10)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(lr(60)), (1e-3 + 1e-4) / 2, rtol=1e-5)  # cosine midpoint
  np.testing.assert_allclose(float(lr(110)), 1e-4, rtol=1e-6)
  assert all(float(lr(i)) >= float(lr(i + 1)) for i in range(10, 110))


def test_weight_decay_skips_norms_biases_and_embeddings():
  params = {
    'tok_embed': jnp.ones((4, 2)),
    'pos_embed': jnp.ones((3, 2)),
    'block_0': {
      'ln_attn': {'scale': jnp.ones(2), 'bias': jnp.ones(2)},
      'mlp': {'fc_in': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}},
    },
  }
  mask = optim.decay_mask(params)
  assert mask['block_0']['mlp']['fc_in'] == {'kernel': True, 'bias': False}
  assert not mask['tok_embed'] and not mask['pos_embed']
  assert mask['block_0']['ln_attn'] == {'scale': False, 'bias': False}

  cfg = base.optim_config()
  cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.weight_decay, cfg.grad_clip = 0.1, 0.1, 0, 0.5, 0
  tx, _ = optim.make(cfg, 10)
  zeros = {k: v for k, v in params.items()}
  grads = __import__('jax').tree.map(jnp.zeros_like, zeros)
  updates, _ = tx.update(grads, tx.init(params), params)
  # With zero gradients only decay moves a weight: kernels shrink, the rest stay put.
  np.testing.assert_allclose(updates['block_0']['mlp']['fc_in']['kernel'], -0.05, rtol=1e-6)
  assert float(jnp.abs(updates['tok_embed']).max()) == 0.0
  assert float(jnp.abs(updates['block_0']['mlp']['fc_in']['bias']).max()) == 0.0


def test_no_decay_is_configurable():
  mask = optim.decay_mask({'tok_embed': 1, 'kernel': 1}, no_decay=('bias',))
  assert mask == {'tok_embed': True, 'kernel': True}
