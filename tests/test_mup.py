"""muP (model.parametrization='mup'): what it changes with width, and the coordinate check
of Yang et al. (2022): under muP the logits move by the same amount in the first steps at
every width; under the standard parametrization they move more the wider the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import model as model_lib
from jaxgpt import runstate
from jaxgpt import sharding
from jaxgpt import step as step_lib
from jaxgpt.data import synthetic
from jaxgpt.errors import UserError
from tests.helpers import tiny_config

VOCAB = 128


def _run(tmp_path, width, parametrization, base=32, heads=2, lr=1e-2):
  c = tiny_config(tmp_path)
  c.model.d_model, c.model.num_heads = width, heads
  c.model.parametrization, c.model.mup_base_width = parametrization, base
  c.optim.lr = c.optim.min_lr = lr
  c.optim.warmup_steps, c.optim.grad_clip = 0, 0.0
  cfg = model_lib.ModelConfig.from_config(c, VOCAB)
  return c, runstate.pretraining(c, cfg, sharding.make_mesh(c.mesh))


def _params(run):
  return jax.device_get(run.init_state(0).params)


def test_mup_at_the_base_width_is_the_standard_parametrization(tmp_path):
  c, sp = _run(tmp_path, 32, 'sp')
  _, mup = _run(tmp_path, 32, 'mup', base=32)
  p_sp, p_mup = _params(sp), _params(mup)
  jax.tree.map(np.testing.assert_array_equal, p_sp, p_mup)
  batch = synthetic.random_batch(8, c.model.seq_len, VOCAB)
  logits = lambda run, p: run.model.apply({'params': p}, batch['inputs'])
  np.testing.assert_array_equal(logits(sp, p_sp), logits(mup, p_mup))
  assert model_lib.lr_scale(mup.model.cfg)(('block_0', 'mlp', 'fc_in', 'kernel')) == 1.0


def test_mup_shrinks_the_blocks_init_and_learning_rate_by_the_width_multiplier(tmp_path):
  _, sp = _run(tmp_path, 128, 'sp')
  _, mup = _run(tmp_path, 128, 'mup', base=32)  # m = 4
  p_sp, p_mup = _params(sp), _params(mup)
  std = lambda p: float(np.std(p['block_0']['mlp']['fc_in']['kernel']))
  assert std(p_mup) == pytest.approx(std(p_sp) / 2, rel=0.05)
  assert float(np.std(p_mup['tok_embed'])) == pytest.approx(0.02, rel=0.05)
  scale = model_lib.lr_scale(mup.model.cfg)
  assert scale(('block_1', 'attn', 'qkv', 'kernel')) == 0.25
  assert scale(('block_1', 'attn', 'qkv', 'bias')) == 1.0
  assert scale(('tok_embed',)) == 1.0 and scale(('block_0', 'ln_mlp', 'scale')) == 1.0
  # The same gradients move a block matrix a quarter as far as under 'sp', the rest as far.
  grads = jax.tree.map(jnp.ones_like, p_sp)
  step = lambda run: run.tx.update(grads, run.tx.init(p_sp), p_sp)[0]
  u_sp, u_mup = step(sp), step(mup)
  kernel = lambda u: np.asarray(u['block_0']['attn']['out']['kernel'])
  np.testing.assert_allclose(kernel(u_mup), kernel(u_sp) / 4, rtol=1e-6)
  np.testing.assert_allclose(u_mup['tok_embed'], u_sp['tok_embed'], rtol=1e-6)


def test_a_parametrization_that_does_not_exist_is_refused(tmp_path):
  c = tiny_config(tmp_path)
  c.model.parametrization = 'ntk'
  with pytest.raises(UserError, match="use 'sp' or 'mup'"):
    model_lib.ModelConfig.from_config(c, VOCAB)


def _logit_change(tmp_path, width, parametrization, steps=4):
  """RMS change of the logits over `steps` Adam steps on one batch, from the same init
  seed: the muP paper's coordinate check."""
  c, run = _run(tmp_path, width, parametrization, base=32)
  batch = synthetic.random_batch(8, c.model.seq_len, VOCAB, seed=1)
  state = run.init_state(0)
  logits = lambda p: np.asarray(run.model.apply({'params': p}, batch['inputs']))
  before = logits(jax.device_get(state.params))
  train_step = step_lib.jit_train_step(run, c)
  for _ in range(steps):
    state, _ = train_step(state, sharding.global_batch(batch, run.mesh))
  return float(np.sqrt(np.mean((logits(jax.device_get(state.params)) - before) ** 2)))


def test_coordinate_check_the_logits_move_alike_at_every_width_under_mup(tmp_path):
  widths = (32, 256)
  sp = [_logit_change(tmp_path, w, 'sp') for w in widths]
  mup = [_logit_change(tmp_path, w, 'mup') for w in widths]
  assert sp[-1] / sp[0] > 3, sp  # standard: wider moves further (0.30 -> 3.25 at 512)
  assert 0.5 < mup[-1] / mup[0] < 1.5, mup  # muP: alike
