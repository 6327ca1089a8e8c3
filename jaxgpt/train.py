"""TrainState, the pure jitted train step, and the loop (`train_and_evaluate`).

`train_step(state, batch) -> (state, metrics)` is jitted once with explicit in/out
shardings and donated state; logging, evaluation and checkpointing stay on the host.
"""

import contextlib
import dataclasses
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgpt import checkpoint as checkpoint_lib
from jaxgpt import evaluate as evaluate_lib
from jaxgpt import faults
from jaxgpt import generate as generate_lib
from jaxgpt import lora
from jaxgpt import loss as loss_lib
from jaxgpt import metrics as metrics_lib
from jaxgpt import model as model_lib
from jaxgpt import optim
from jaxgpt import sharding
from jaxgpt import workdir as workdir_lib
from jaxgpt.data import loader
from jaxgpt.data import pipeline
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def init_params(model, rng):
  """Boxed (logically named) params of `model`, from a dummy batch of one sequence."""
  tokens = jnp.zeros((1, model.cfg.seq_len), jnp.int32)
  if isinstance(model, model_lib.Classifier):
    return model.init(rng, tokens, jnp.zeros((1,), jnp.int32))['params']
  return model.init(rng, tokens)['params']


def _strip_boxes(tree):
  """nn.Partitioned -> its value, without applying sharding constraints."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(
    lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box
  )


@dataclasses.dataclass
class Setup:
  """What the loop needs, built before anything is compiled.

  A fine-tune sets `loss_fn` (its task's loss) and `frozen` (the params it does not train,
  passed to the step beside the state, which then holds only the trainable ones).
  """

  model: model_lib.Transformer
  tx: optax.GradientTransformation
  lr: optax.Schedule
  mesh: jax.sharding.Mesh
  rules: tuple
  state_shardings: TrainState
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
  loss_fn: Any = None  # loss_fn(params, frozen, batch, rng) -> (summed loss, summed weight)
  frozen: Any = None
  frozen_shardings: Any = None
  frozen_abstract: Any = None  # their shapes, before the arrays are there

  def init_state(self, seed: int) -> TrainState:
    def init(rng):
      params = _strip_boxes(init_params(self.model, rng))
      return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params))

    with self.context():
      return jax.jit(init, out_shardings=self.state_shardings)(jax.random.key(seed))

  def context(self):
    """Mesh and logical rules for tracing: what the model's constraints resolve against."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack


def setup(
  config, model_cfg: model_lib.ModelConfig, mesh, model=None, is_trainable=None, loss_fn=None
) -> Setup:
  """Shardings and abstract state for `model` (default: a Transformer of model_cfg).

  With `is_trainable(path)`, the state holds only those params and the rest become
  Setup.frozen_shardings (a fine-tune fills Setup.frozen with the arrays).
  """
  model = model or model_lib.Transformer(model_cfg)
  tx, lr = optim.make(config.optim, config.train.steps)
  rules = sharding.rules(config.mesh)
  rng = jax.eval_shape(jax.random.key, 0)  # abstract: the mesh may be a remote topology's
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda r: init_params(model, r), rng)
  param_sh = sharding.logical_shardings(boxed, mesh, config.mesh)
  params = _strip_boxes(boxed)
  sharding.check_divisible(params, param_sh)
  frozen_sh = frozen_abstract = None
  if is_trainable is not None:
    params, frozen_abstract = lora.split(params, is_trainable)
    param_sh, frozen_sh = lora.split(param_sh, is_trainable)
  opt_state = jax.eval_shape(tx.init, params)
  replicated = NamedSharding(mesh, P())
  # AdamW's moments mirror the params and take their shardings; counts are replicated.
  opt_sh = optax.tree_map_params(
    tx,
    lambda _, s: s,
    opt_state,
    param_sh,
    transform_non_params=lambda _: replicated,
    is_leaf=lambda x: isinstance(x, NamedSharding),
  )
  shardings = TrainState(replicated, param_sh, opt_sh)
  abstract = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, opt_state)
  abstract = checkpoint_lib.abstract_with_shardings(abstract, shardings)
  return Setup(
    model,
    tx,
    lr,
    mesh,
    rules,
    shardings,
    abstract,
    loss_fn,
    frozen_shardings=frozen_sh,
    frozen_abstract=frozen_abstract,
  )


def loss_sums(model, params, batch, rng, deterministic):
  """Summed next-token loss over the batch's weights, and the weights' sum (loss.py)."""
  nll = loss_lib.lm_nll_sum(model, params, batch, deterministic, rng)
  return nll, batch['weights'].sum()


def lm_loss(model):
  """The pretraining loss as a Setup.loss_fn: frozen params (if any) join the trained ones."""

  def loss_fn(params, frozen, batch, rng):
    return loss_sums(model, lora.merge(params, frozen) if frozen else params, batch, rng, False)

  return loss_fn


def make_train_step(loss_fn, tx, lr, micro_batches: int, seed: int, skip_nonfinite=False):
  """The pure step; gradients of micro-batches are summed in a scan, then applied once.

  Gradients are taken of the state's params only: `frozen` params get none.
  """

  def grads_of(params, frozen, batch, rng):
    (nll, tokens), grads = jax.value_and_grad(
      lambda p: loss_fn(p, frozen, batch, rng), has_aux=True
    )(params)
    return grads, nll, tokens

  def train_step(state, batch, frozen=None):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    if micro_batches == 1:
      grads, nll, tokens = grads_of(state.params, frozen, batch, rng)
    else:
      # Micro-batch i takes rows i, i+M, ...: every device keeps its own rows, no reshuffle.
      split = lambda x: x.reshape(
        x.shape[0] // micro_batches, micro_batches, *x.shape[1:]
      ).swapaxes(0, 1)

      def body(acc, xs):
        mb, i = xs
        out = grads_of(state.params, frozen, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, acc, out), None

      zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.float32(0), jnp.float32(0))
      (grads, nll, tokens), _ = jax.lax.scan(
        body, zeros, (jax.tree.map(split, batch), jnp.arange(micro_batches))
      )
    tokens = jnp.maximum(tokens, 1.0)
    grads = jax.tree.map(lambda g: g / tokens, grads)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(nll) & jnp.isfinite(grad_norm)
    if skip_nonfinite:  # keep the old params and moments; the step still counts
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    new_state = state.replace(step=state.step + 1, opt_state=opt_state, params=params)
    metrics = {'loss': nll / tokens, 'grad_norm': grad_norm, 'lr': lr(state.step), 'finite': finite}
    return new_state, metrics

  return train_step


def jit_train_step(s: Setup, config):
  """step(state, batch) -> (state, metrics), jitted with explicit shardings, state donated."""
  step = make_train_step(
    s.loss_fn or lm_loss(s.model),
    s.tx,
    s.lr,
    config.train.micro_batches,
    config.train.seed,
    config.train.skip_nonfinite,
  )
  # Metrics come back replicated, so every process can read them without a gather.
  out_shardings = (s.state_shardings, NamedSharding(s.mesh, P()))
  batch_sharding = sharding.batch_sharding(s.mesh)
  if s.frozen is None:
    return jax.jit(
      step,
      in_shardings=(s.state_shardings, batch_sharding),
      out_shardings=out_shardings,
      donate_argnums=0,
    )
  jitted = jax.jit(
    step,
    in_shardings=(s.state_shardings, batch_sharding, s.frozen_shardings),
    out_shardings=out_shardings,
    donate_argnums=0,
  )
  return lambda state, batch: jitted(state, batch, s.frozen)


def check_config(config, mesh):
  """Everything about the config that can be checked before data or compilation."""
  model_lib.ModelConfig.from_config(config.model, tokenizer_vocab=1)
  generate_lib.Sampling.from_config(config.eval)
  for key in (
    'batch_size',
    'steps',
    'log_every',
    'eval_every',
    'checkpoint_every',
    'micro_batches',
    'keep_checkpoints',
  ):
    if config.train[key] <= 0:
      raise UserError(f'train.{key}={config.train[key]} must be a positive integer')
  for key, zero in (('run_steps', 'all steps'), ('eval_batches', 'the whole split')):
    if config.train[key] < 0:
      raise UserError(f'train.{key}={config.train[key]} must be 0 ({zero}) or positive')
  sharding.check_batch(config.train.batch_size, config.train.micro_batches, mesh)
  loader.check_batch(config.train.batch_size, jax.process_count())


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) config's training in workdir; returns the final evaluation. The
  workdir belongs to this run until it returns: a second run on it is refused."""
  mesh = sharding.make_mesh(config.mesh)
  check_config(config, mesh)
  with workdir_lib.owned(workdir, jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, mesh)


def _train_and_evaluate(config, workdir: str, mesh) -> dict:
  tc = config.train
  ckpt = checkpoint_lib.Checkpointer(workdir, tc.keep_checkpoints, tc.async_checkpoints)
  latest = tokenizer = None
  if ckpt.latest_step() is not None:
    # The newest step whose config and tokenizer read; the config is checked before the
    # data is touched, and a resumed run encodes with its checkpoint's tokenizer.
    read = lambda step: (
      ckpt.restore_json(step, 'config'),
      checkpoint_lib.load_tokenizer(ckpt, step),
    )
    latest, (saved, tokenizer) = ckpt.newest_intact(read, with_data=True, set_aside=True)
    faults.check_resumable(config, saved, workdir)
  prepared = prepare_data(config.data, workdir, tokenizer)
  log.info('token store: %s tokens', prepared.manifest['tokens'])
  model_cfg = model_lib.ModelConfig.from_config(config.model, prepared.tokenizer.vocab_size)
  loader.check_validation(prepared, model_cfg.seq_len)
  s = setup(config, model_cfg, mesh)
  if latest is not None:
    faults.check_shapes(
      checkpoint_lib.shapes(s.abstract_state), ckpt.saved_shapes(latest), config, saved, workdir
    )
  if latest is not None and latest >= tc.steps:
    log.info('the run in %s is complete (step %d of %d); nothing to do', workdir, latest, tc.steps)
    _finish_if_missing(config, workdir, s, ckpt, latest, prepared)
    ckpt.close()
    return {'complete': True, 'step': latest}
  data_iter = iter(
    loader.train_loader(
      prepared, model_cfg.seq_len, tc.batch_size, tc.seed, jax.process_index(), jax.process_count()
    )
  )
  if latest is None:
    state = s.init_state(tc.seed)
  else:
    restore = lambda step: ckpt.restore(step, s.abstract_state, data_iter)
    latest, state = ckpt.newest_intact(restore, with_data=True, set_aside=True)
    log.info('resuming from step %d', latest)
  log.info('model: %s params, %s', f'{model_lib.param_count(model_cfg):,}', model_cfg)

  writer = metrics_lib.Writer(workdir, enabled=jax.process_index() == 0, start_step=latest or 0)
  run_eval = make_evaluator(config, s, prepared, writer)
  save = lambda step, st: ckpt.save(step, st, data_iter, config, prepared.tokenizer)
  try:
    state, result, stopped = train_loop(config, s, state, data_iter, writer, run_eval, save, latest)
    step = int(state.step)
    if stopped:
      return {'stopped': True, 'step': step}
    result = result or run_eval(state.params, step)
  finally:  # whatever ended the loop, the saves in flight complete
    ckpt.wait()
    ckpt.close()
    writer.close()
  if step >= tc.steps:
    _finish(config, workdir, s, state.params, prepared)
  return {**result, 'step': step, 'params': model_lib.param_count(model_cfg)}


def prepare_data(data_cfg, workdir, tokenizer=None, for_eval=False):
  """Process 0 builds the token store first; the others then reuse it (shared filesystem)
  or build the same one (local disks): never two writers of one file at once."""
  prepare = lambda: pipeline.prepare(data_cfg, workdir, tokenizer, for_eval)
  if jax.process_count() == 1:
    return prepare()
  from jax.experimental import multihost_utils

  prepared = prepare() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices('jaxgpt: token store prepared')
  return prepared or prepare()


def make_evaluator(config, s: Setup, prepared, writer):
  """run_eval(params, step): validation loss, perplexity and bits per byte, logged."""
  tc, seq_len = config.train, s.model.cfg.seq_len
  with s.context():
    eval_step = evaluate_lib.make_jitted_eval_step(
      s.model, s.state_shardings.params, sharding.batch_sharding(s.mesh)
    )
  byte_table = evaluate_lib.byte_table(prepared.tokenizer, s.model.cfg.vocab_size)

  def run_eval(params, step):
    batches = loader.eval_batches(
      prepared, seq_len, tc.batch_size, tc.eval_batches, jax.process_index(), jax.process_count()
    )
    with s.context():
      result = evaluate_lib.evaluate(
        eval_step, params, batches, byte_table, lambda b: sharding.global_batch(b, s.mesh)
      )
    writer.write(step, 'eval', result)
    log.info(
      'eval step %d | loss %.4f | ppl %.2f | bits/byte %.4f',
      step,
      result['loss'],
      result['perplexity'],
      result['bits_per_byte'],
    )
    return result

  return run_eval


def _flops_per_token(s: Setup) -> float:
  """Model FLOPs per token; a fine-tune's frozen params (bar the position table, which no
  matmul reads) take no weight gradients."""
  frozen = lora.split(s.frozen_abstract or {}, lambda path: path[-1] != 'pos_embed')[0]
  return metrics_lib.flops_per_token(s.model.cfg, lora.count(frozen))


def train_loop(config, s: Setup, state, data_iter, writer, run_eval, save, resumed=None):
  """Steps from state.step to train.steps (or run_steps more); logs, evaluates, saves.

  The host runs at most one step ahead of the devices: it waits for the previous step's
  finite flag before it goes on, so a non-finite loss stops the run the step after, and a
  stop signal within a step. `resumed` is the checkpoint step the state came from (None for
  a fresh run, which has none to fall back to).
  """
  tc, model_cfg = config.train, s.model.cfg
  tokens_per_step = tc.batch_size * model_cfg.seq_len
  peak = tc.peak_flops or metrics_lib.measure_peak_flops()
  step = int(state.step)
  last_saved = resumed
  progress = metrics_lib.Progress(
    step, tc.steps, tokens_per_step, _flops_per_token(s) * tokens_per_step, peak * s.mesh.size
  )
  end = min(tc.steps, step + tc.run_steps) if tc.run_steps else tc.steps
  result, loss_sum, first_step = None, None, step + 1
  skipped, previous_finite = jnp.int32(0), None
  with s.context(), faults.StopRequest() as stop:
    train_step = jit_train_step(s, config)
    while step < end:
      state, step_metrics = train_step(state, sharding.global_batch(next(data_iter), s.mesh))
      step += 1
      finite = step_metrics.pop('finite')
      if previous_finite is not None and not bool(previous_finite):
        faults.stop_non_finite(step - 1, last_saved, tc.skip_nonfinite)
      skipped = skipped + ~finite
      previous_finite = finite
      # Summed on device, so logging the window's mean loss costs no host sync per step.
      loss_sum = step_metrics['loss'] if loss_sum is None else loss_sum + step_metrics['loss']
      if step == first_step:  # leave compilation out of the throughput figures
        jax.block_until_ready(step_metrics)
        progress.restart(step)
      stopping = stop.requested(step, tc.log_every)
      boundary = (
        step % tc.eval_every == 0 or step % tc.checkpoint_every == 0 or step == end or stopping
      )
      if boundary and not bool(finite):  # nothing non-finite is evaluated or saved
        faults.stop_non_finite(step, last_saved, tc.skip_nonfinite)
      if step % tc.log_every == 0 or step == end or stopping:
        mean_loss = loss_sum / (step - progress.window_start)
        values = progress.report(step, jax.device_get({**step_metrics, 'loss': mean_loss}))
        loss_sum = None
        if tc.skip_nonfinite:
          values['skipped'] = int(skipped)
        writer.write(step, 'train', values)
        log.info(metrics_lib.log_line(step, tc.steps, values))
      if step % tc.eval_every == 0 or step == tc.steps:
        result = run_eval(state.params, step)
        progress.restart(step)
      if step % tc.checkpoint_every == 0 or step == end or stopping:
        save(step, state)
        last_saved = step
        progress.restart(step)
      if stopping:
        log.warning(
          '%s received: saved step %d and stopped; run the same command to resume',
          stop.signal or 'stop request',
          step,
        )
        return state, result, True
  return state, result, False


def _finish_if_missing(config, workdir, s: Setup, ckpt, step, prepared):
  """A complete run whose end-of-run records were lost (killed while sampling) gets them."""
  if all(os.path.exists(os.path.join(workdir, f)) for f in ('loss.png', 'samples.txt')):
    return
  log.info('writing the end-of-run records that are missing')
  with s.context():
    params = ckpt.restore_params(step, s.abstract_state.params)
  _finish(config, workdir, s, params, prepared)


def _finish(config, workdir, s, params, prepared):
  """The end-of-run records: loss plot and samples (printed, then written whole)."""
  ec = config.eval
  if jax.process_index() == 0 and os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    metrics_lib.plot_losses(
      os.path.join(workdir, 'metrics.jsonl'), os.path.join(workdir, 'loss.png')
    )
  prompts = [ec.prompt] * ec.num_samples
  texts = generate_lib.sample(
    s.model, params, prepared.tokenizer, prompts, generate_lib.Sampling.from_config(ec)
  )
  if jax.process_index() == 0:
    blocks = []
    for i, text in enumerate(texts):
      header = (
        f'--- sample {i} (temperature {ec.temperature}, top-k {ec.top_k}, top-p {ec.top_p}) ---'
      )
      blocks.append(f'{header}\n{ec.prompt}{text}\n')
      print(blocks[-1], flush=True)
    metrics_lib.write_text(os.path.join(workdir, 'samples.txt'), ''.join(blocks))
