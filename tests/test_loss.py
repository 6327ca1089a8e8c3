"""The chunked next-token loss: the plain loss's value and gradients, without whole logits."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt import loss
from jaxgpt import model as model_lib
from jaxgpt import plan
from jaxgpt import sharding
from jaxgpt import train
from tests.helpers import tiny_config

B, L, D, V = 4, 12, 16, 40


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  h_BxLxD = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
  table_VxD = jnp.asarray(0.3 * rng.normal(size=(V, D)), jnp.float32)
  targets_BxL = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
  weights_BxL = jnp.asarray(rng.integers(0, 2, (B, L)), jnp.float32)  # padding is weight 0
  return h_BxLxD, table_VxD, targets_BxL, weights_BxL


def _plain(h_BxLxD, table_VxD, targets_BxL, weights_BxL):
  logits_BxLxV = h_BxLxD @ table_VxD.T
  nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  return (nll_BxL * weights_BxL).sum()


@pytest.mark.parametrize('chunks', [1, 3, 5, 12])  # 5 does not divide L: padded positions
def test_value_and_gradients_match_the_plain_loss(chunks):
  h, table, targets, weights = _inputs()
  want, (want_dh, want_dtable) = jax.value_and_grad(_plain, (0, 1))(h, table, targets, weights)
  chunked = lambda h, t: 2.5 * loss.nll_sum(h, t, targets, weights, chunks)  # a cotangent != 1
  got, (dh, dtable) = jax.jit(jax.value_and_grad(chunked, (0, 1)))(h, table)
  np.testing.assert_allclose(got, 2.5 * want, rtol=1e-5)
  np.testing.assert_allclose(dh, 2.5 * want_dh, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(dtable, 2.5 * want_dtable, rtol=1e-4, atol=1e-6)
  # Zero-weight positions get no gradient.
  assert not np.any(np.asarray(dh)[np.asarray(weights) == 0])


def test_bfloat16_products_stay_close():
  h, table, targets, weights = _inputs(1)
  want = _plain(h, table, targets, weights)
  got = loss.nll_sum(h, table, targets, weights, 4, 'bfloat16')
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=2e-2)


def _temp_bytes(corpus_dir, chunks):
  c = tiny_config(corpus_dir)
  c.model.seq_len, c.model.loss_chunks = 64, chunks
  c.train.batch_size = 8
  c.mesh.shape.data = 1
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  s = train.setup(c, model_lib.ModelConfig.from_config(c.model, 8192), mesh)
  return plan.compile_train_step(c, s).memory_analysis().temp_size_in_bytes


def test_chunks_shrink_the_steps_memory(corpus_dir):
  # With an 8k vocabulary the (B, L, V) logits are the step's largest arrays: 16 MiB here.
  logits_bytes = 8 * 64 * 8192 * 4
  one, eight = _temp_bytes(corpus_dir, 1), _temp_bytes(corpus_dir, 8)
  assert one - eight > logits_bytes, (one, eight)
