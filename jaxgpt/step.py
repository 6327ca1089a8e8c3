"""The train step: `train_step(state, batch) -> (state, metrics)`, pure, for every run.

Pretraining and each fine-tune differ only in the runstate.Run the step is made from (its
model, loss and optimizer, which may freeze params); the step is jitted once with explicit
in/out shardings and donated state.
"""

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgpt import sharding
from jaxgpt.runstate import Run


def make_train_step(loss_fn, tx, lr, micro_batches: int, seed: int, skip_nonfinite=False):
  """The pure step; gradients of micro-batches are summed in a scan, then applied once.

  loss_fn(params, batch, rng) -> (summed loss, summed weight); the step divides by the
  weights' sum, so the update is the gradient of the mean over the whole batch.
  """

  def grads_of(params, batch, rng):
    (total, weight), grads = jax.value_and_grad(lambda p: loss_fn(p, batch, rng), has_aux=True)(
      params
    )
    return grads, total, weight

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    if micro_batches == 1:
      grads, total, tokens = grads_of(state.params, batch, rng)
    else:
      # Micro-batch i takes rows i, i+M, ...: every device keeps its own rows, no reshuffle.
      split = lambda x: x.reshape(
        x.shape[0] // micro_batches, micro_batches, *x.shape[1:]
      ).swapaxes(0, 1)

      def body(acc, xs):
        mb, i = xs
        out = grads_of(state.params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, acc, out), None

      zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.float32(0), jnp.float32(0))
      (grads, total, tokens), _ = jax.lax.scan(
        body, zeros, (jax.tree.map(split, batch), jnp.arange(micro_batches))
      )
    tokens = jnp.maximum(tokens, 1.0)
    grads = jax.tree.map(lambda g: g / tokens, grads)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    if skip_nonfinite:  # keep the old params and moments; the step still counts
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    new_state = state.replace(step=state.step + 1, opt_state=opt_state, params=params)
    metrics = {
      'loss': total / tokens,
      'grad_norm': grad_norm,
      'lr': lr(state.step),
      'finite': finite,
    }
    return new_state, metrics

  return train_step


def jit_train_step(run: Run, config):
  """step(state, batch) -> (state, metrics), jitted with explicit shardings, state donated."""
  tc = config.train
  step = make_train_step(
    run.loss_fn, run.tx, run.lr, config.execution.micro_batches, tc.seed, config.loop.skip_nonfinite
  )
  # Metrics come back replicated, so every process can read them without a gather.
  return jax.jit(
    step,
    in_shardings=(run.state_shardings, sharding.batch_sharding(run.mesh)),
    out_shardings=(run.state_shardings, NamedSharding(run.mesh, P())),
    donate_argnums=0,
  )
