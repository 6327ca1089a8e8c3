"""The chunked next-token loss: the plain loss's value and gradients, without whole logits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt.data.synthetic import random_batch
from jaxgpt import evaluate
from jaxgpt import chunked_loss
from jaxgpt import loss
from jaxgpt import model as model_lib
from jaxgpt import plan
from jaxgpt import sharding
from jaxgpt import runstate
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
  # A cotangent != 1:
  chunked = lambda h, t: 2.5 * chunked_loss.nll_sum(h, t, targets, weights, chunks)
  got, (dh, dtable) = jax.jit(jax.value_and_grad(chunked, (0, 1)))(h, table)
  np.testing.assert_allclose(got, 2.5 * want, rtol=1e-5)
  np.testing.assert_allclose(dh, 2.5 * want_dh, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(dtable, 2.5 * want_dtable, rtol=1e-4, atol=1e-6)
  # Zero-weight positions get no gradient.
  assert not np.any(np.asarray(dh)[np.asarray(weights) == 0])
  # Without a gradient (evaluation) only the loss is made; the value is the same.
  alone = jax.jit(lambda h, t: chunked_loss.nll_sum(h, t, targets, weights, chunks))(h, table)
  np.testing.assert_allclose(alone, want, rtol=1e-5)


@pytest.mark.parametrize('chunks', [1, 5])
def test_token_logp_matches_log_softmax_and_argmax(chunks):
  h, table, targets, _ = _inputs()
  logits_BxLxV = h @ table.T
  want = jnp.take_along_axis(jax.nn.log_softmax(logits_BxLxV), targets[..., None], -1)[..., 0]
  scores = jax.jit(lambda h, t, y: chunked_loss.token_logp(h, t, y, chunks))
  logp, greedy = scores(h, table, targets)
  np.testing.assert_allclose(logp, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(greedy, logits_BxLxV.argmax(-1) == targets)
  # With the argmax as targets every position is greedy.
  assert np.asarray(scores(h, table, logits_BxLxV.argmax(-1))[1]).all()


def test_bfloat16_products_stay_close():
  h, table, targets, weights = _inputs(1)
  want = _plain(h, table, targets, weights)
  got = chunked_loss.nll_sum(h, table, targets, weights, 4, 'bfloat16')
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=2e-2)


def _setup(corpus_dir, chunks):
  c = tiny_config(corpus_dir)
  c.model.seq_len, c.execution.loss_chunks = 64, chunks
  c.train.batch_size = 8
  c.mesh.shape.data = 1
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  return c, runstate.pretraining(c, model_lib.ModelConfig.from_config(c, 8192), mesh)


def _eval_step(s):
  with s.context():
    return evaluate.make_jitted_eval_step(
      s.model, s.state_shardings.params, sharding.batch_sharding(s.mesh)
    )


# With an 8k vocabulary the (B, L, V) logits are the step's largest arrays: 16 MiB here.
LOGITS_BYTES = 8 * 64 * 8192 * 4


def test_chunks_shrink_the_steps_memory(corpus_dir):
  temp = lambda chunks: (
    plan.compile_train_step(*_setup(corpus_dir, chunks)).memory_analysis().temp_size_in_bytes
  )
  one, eight = temp(1), temp(8)
  assert one - eight > LOGITS_BYTES, (one, eight)


def test_evaluation_takes_the_chunked_loss(corpus_dir):
  """The eval step's summed loss is the plain loss of the model's logits, and in 8 chunks
  its temporaries drop by more than the logits' size, as the train step's do."""
  byte_table_V = jnp.ones((8192,), jnp.float32)
  temps = {}
  for chunks in (1, 8):
    c, s = _setup(corpus_dir, chunks)
    batch = random_batch(c.train.batch_size, c.model.seq_len, 8192)
    params = s.init_state(0).params
    step = _eval_step(s)
    with s.context():
      got = step(params, batch, byte_table_V)
      temps[chunks] = (
        step.lower(params, batch, byte_table_V).compile().memory_analysis().temp_size_in_bytes
      )
    logits_BxLxV = s.model.apply({'params': params}, batch['inputs'])
    want = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch['targets']).sum()
    np.testing.assert_allclose(got['nll'], want, rtol=1e-5)
    assert float(got['tokens']) == float(got['bytes']) == 8 * 64
  assert temps[1] - temps[8] > LOGITS_BYTES, temps


@pytest.mark.parametrize('z_loss, smoothing', [(1e-3, 0.0), (0.0, 0.1), (1e-2, 0.2)])
def test_cross_entropy_with_z_loss_and_smoothing_is_the_textbook_formula(z_loss, smoothing):
  h, table, targets, weights = _inputs(2)
  logits_BxLxV = h @ table.T
  labels_BxLxV = optax.smooth_labels(jax.nn.one_hot(targets, V), smoothing)
  want_BxL = optax.softmax_cross_entropy(logits_BxLxV, labels_BxLxV) + z_loss * (
    jax.nn.logsumexp(logits_BxLxV, axis=-1) ** 2
  )
  got = loss.cross_entropy_sum(logits_BxLxV, targets, weights, z_loss, smoothing)
  np.testing.assert_allclose(got, (want_BxL * weights).sum(), rtol=1e-5)
  plain = loss.cross_entropy_sum(logits_BxLxV, targets, weights)
  assert (float(got) != float(plain)) == bool(z_loss or smoothing)  # the options do act


@pytest.mark.parametrize('z_loss, smoothing', [(1e-3, 0.0), (0.0, 0.1), (1e-2, 0.2)])
@pytest.mark.parametrize('chunks', [1, 5])
def test_chunked_z_loss_and_smoothing_equal_the_plain_loss(z_loss, smoothing, chunks):
  """The opt-in chunked loss makes the plain loss's value and gradients with its options."""
  h, table, targets, weights = _inputs(3)
  plain = lambda h, t: loss.cross_entropy_sum(h @ t.T, targets, weights, z_loss, smoothing)
  want, (want_dh, want_dtable) = jax.value_and_grad(plain, (0, 1))(h, table)
  chunked = lambda h, t: chunked_loss.nll_sum(
    h, t, targets, weights, chunks, z_loss=z_loss, label_smoothing=smoothing
  )
  got, (dh, dtable) = jax.jit(jax.value_and_grad(chunked, (0, 1)))(h, table)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(dh, want_dh, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(dtable, want_dtable, rtol=1e-4, atol=1e-6)


def test_the_models_loss_is_the_same_plain_or_chunked(corpus_dir):
  """next_token_loss through the model: loss_chunks=1 (plain, the default) and 4 (chunked)
  give the same value and the same gradient for every param, with z-loss and smoothing."""
  results = []
  for chunks in (1, 4):
    c = tiny_config(corpus_dir)
    c.execution.loss_chunks = chunks
    model = model_lib.Transformer(model_lib.ModelConfig.from_config(c, 300))
    params = runstate.init_fn(model)(jax.random.key(0))
    params = jax.tree.map(
      lambda x: x.unbox() if hasattr(x, 'unbox') else x,
      params,
      is_leaf=lambda x: hasattr(x, 'unbox'),
    )
    batch = random_batch(4, c.model.seq_len, 300)
    fn = lambda p: loss.next_token_loss(model, p, batch, z_loss=1e-3, label_smoothing=0.1)[0]
    results.append(jax.jit(jax.value_and_grad(fn))(params))
  (plain, plain_grads), (chunked, chunked_grads) = results
  np.testing.assert_allclose(chunked, plain, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), chunked_grads, plain_grads
  )


@pytest.mark.parametrize('chunks', [1, 5])
def test_padding_ids_are_never_predicted_and_change_nothing(chunks):
  """With the vocabulary padded from V to V + 9 (e.g. GPT-2's 50257 to 50304), the plain and
  chunked losses, their gradients and token log-probs equal the unpadded ones, z-loss and
  label smoothing (uniform over the V real ids) included; the padding rows get no gradient."""
  h, table, targets, weights = _inputs(4)
  padded = jnp.concatenate([table, jnp.asarray(np.random.default_rng(5).normal(size=(9, D)))])
  options = dict(z_loss=1e-3, label_smoothing=0.1)
  plain = lambda h, t, valid: loss.cross_entropy_sum(
    model_lib.mask_padding(h @ t.T, valid), targets, weights, *options.values(), valid
  )
  want, (want_dh, want_dtable) = jax.value_and_grad(plain, (0, 1))(h, table, 0)
  got, (dh, dtable) = jax.value_and_grad(plain, (0, 1))(h, padded, V)
  chunked = lambda h, t: chunked_loss.nll_sum(
    h, t, targets, weights, chunks, **options, valid_vocab=V
  )
  got_c, (dh_c, dtable_c) = jax.jit(jax.value_and_grad(chunked, (0, 1)))(h, padded)
  for value, grad_h, grad_table in ((got, dh, dtable), (got_c, dh_c, dtable_c)):
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(grad_h, want_dh, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_table[:V], want_dtable, rtol=1e-4, atol=1e-6)
    assert not np.any(np.asarray(grad_table[V:]))
  logp, _ = chunked_loss.token_logp(h, padded, targets, chunks, valid_vocab=V)
  want_logp, _ = chunked_loss.token_logp(h, table, targets, chunks)
  np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-6)
  probs = jax.nn.softmax(model_lib.mask_padding(h @ padded.T, V))
  assert not np.any(np.asarray(probs[..., V:]))
