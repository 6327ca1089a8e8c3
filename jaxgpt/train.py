"""The training loop (`train_loop`) and pretraining's run of it (`train_and_evaluate`).

The loop drives step.py's pure step for every kind of run; logging, evaluation and
checkpointing stay here, on the host.
"""

import logging
import math
import os

import jax
import jax.numpy as jnp

from jaxgpt import accounting
from jaxgpt import checkpoint as checkpoint_lib
from jaxgpt import evaluate as evaluate_lib
from jaxgpt import faults
from jaxgpt import generate as generate_lib
from jaxgpt import metrics as metrics_lib
from jaxgpt import model as model_lib
from jaxgpt import runstate
from jaxgpt import sharding
from jaxgpt import step as step_lib
from jaxgpt import workdir as workdir_lib
from jaxgpt.data import loader
from jaxgpt.data import pipeline
from jaxgpt.runstate import Run

log = logging.getLogger('jaxgpt')


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) config's training in workdir; returns the final evaluation. The
  workdir belongs to this run until it returns: a second run on it is refused."""
  mesh = sharding.make_mesh(config.mesh)
  runstate.check_config(config, mesh)
  with workdir_lib.owned(workdir, jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, mesh)


def _train_and_evaluate(config, workdir: str, mesh) -> dict:
  tc = config.train
  lc = config.loop
  ckpt = checkpoint_lib.Checkpointer(workdir, lc.keep_checkpoints, lc.async_checkpoints)
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
  prepared = pipeline.prepare_shared(config.data, workdir, tokenizer)
  log.info('token store: %s tokens', prepared.manifest['tokens'])
  model_cfg = model_lib.ModelConfig.from_config(config, prepared.tokenizer.vocab_size)
  loader.check_validation(prepared, model_cfg.seq_len)
  run = runstate.pretraining(config, model_cfg, mesh)
  if latest is not None:
    faults.check_shapes(
      checkpoint_lib.shapes(run.abstract_state), ckpt.saved_shapes(latest), config, saved, workdir
    )
  if latest is not None and latest >= tc.steps:
    log.info('the run in %s is complete (step %d of %d); nothing to do', workdir, latest, tc.steps)
    _finish_if_missing(config, workdir, run, ckpt, latest, prepared)
    ckpt.close()
    return {'complete': True, 'step': latest}
  with run.context():
    result, params = _train(config, workdir, run, ckpt, latest, prepared)
  if params is not None and result['step'] >= tc.steps:
    # Sampling runs outside the training context: its batches are a few prompts, which
    # the mesh's batch axes need not divide.
    _finish(config, workdir, run, params, prepared)
  return result


def _train(config, workdir, run: Run, ckpt, latest, prepared) -> dict:
  tc, model_cfg = config.train, run.model.cfg
  data_iter = iter(
    loader.train_loader(
      prepared, model_cfg.seq_len, tc.batch_size, tc.seed, jax.process_index(), jax.process_count()
    )
  )
  if latest is None:
    state = run.init_state(tc.seed)
  else:
    restore = lambda step: _restore_state(ckpt, step, run, data_iter)
    latest, state = ckpt.newest_intact(restore, with_data=True, set_aside=True)
    log.info('resuming from step %d', latest)
  log.info('model: %s params, %s', f'{model_lib.param_count(model_cfg):,}', model_cfg)
  log.info(
    'attention: %s (model.attention_impl=%r on %s)',
    model_cfg.attention,
    model_cfg.attention_impl,
    model_cfg.platform,
  )

  writer = metrics_lib.Writer(
    workdir, enabled=jax.process_index() == 0, start_step=latest or 0, config=config
  )
  evaluator = evaluate_lib.make_evaluator(config, run, prepared, writer)
  summary = accounting.Summary(
    workdir,
    model_cfg,
    tc.batch_size * model_cfg.seq_len,
    tc.steps,
    latest or 0,
    jax.process_index() == 0,
  )

  def run_eval(params, step):
    result = evaluator(params, step)
    summary.record(step, result['loss'])
    return result

  save = lambda step, st: ckpt.save(step, st, data_iter, config, prepared.tokenizer)
  try:
    state, result, stopped = train_loop(
      config, run, state, data_iter, writer, run_eval, save, latest
    )
    step = int(state.step)
    summary.record(step)
    if stopped:
      return {'stopped': True, 'step': step}, None
    result = result or run_eval(state.params, step)
  finally:  # whatever ended the loop, the saves in flight complete
    ckpt.wait()
    ckpt.close()
    writer.close()
  return {**result, 'step': step, 'params': model_lib.param_count(model_cfg)}, state.params


def _restore_state(ckpt, step: int, run: Run, data_iter):
  """The train state saved at `step`; for params saved alone (an imported model), those
  params with a fresh optimizer state, as a run starting at step 0 has."""
  if ckpt.has_optimizer(step):
    return ckpt.restore(step, run.abstract_state, data_iter)
  state = run.init_state(params=ckpt.restore_params(step, run.abstract_state.params))
  return state.replace(step=jnp.asarray(step, jnp.int32))


def train_loop(config, run: Run, state, data_iter, writer, run_eval, save, resumed=None):
  """Steps from state.step to train.steps (or loop.run_steps more); logs, evaluates, saves.

  The host runs at most one step ahead of the devices: it waits for the previous step's
  finite flag before it goes on, so a non-finite loss stops the run the step after, and a
  stop signal within a step. `resumed` is the checkpoint step the state came from (None for
  a fresh run, which has none to fall back to).
  """
  tc, lc = config.train, config.loop
  # The token positions a step computes: a DPO row is a pair, two sequences.
  tokens_per_step = math.prod(run.batch_shapes(tc.batch_size)['inputs'][0])
  device = run.mesh.devices.flat[0]
  peak, peak_of = metrics_lib.peak_flops(lc.peak_flops, device)
  log.info(
    'MFU is a fraction of the %s: %.4g TFLOP/s per device (%s)',
    metrics_lib.PEAKS[peak_of],
    peak / 1e12,
    device.device_kind,
  )
  step = int(state.step)
  last_saved = resumed
  progress = metrics_lib.Progress(
    step, tc.steps, tokens_per_step, run.flops_per_token * tokens_per_step, peak * run.mesh.size
  )
  end = min(tc.steps, step + lc.run_steps) if lc.run_steps else tc.steps
  result, loss_sum, first_step = None, None, step + 1
  skipped, previous_finite = jnp.int32(0), None
  profiler = metrics_lib.StepProfiler(lc.profile_steps, os.path.join(writer.workdir, 'tensorboard'))
  with faults.StopRequest() as stop, profiler:
    train_step = step_lib.jit_train_step(run, config)
    while step < end:
      profiler.before(step + 1)
      state, step_metrics = train_step(state, sharding.global_batch(next(data_iter), run.mesh))
      step += 1
      profiler.after(step, step_metrics)
      finite = step_metrics.pop('finite')
      if previous_finite is not None and not bool(previous_finite):
        faults.stop_non_finite(step - 1, last_saved, lc.skip_nonfinite)
      skipped = skipped + ~finite
      previous_finite = finite
      # Summed on device, so logging the window's mean loss costs no host sync per step.
      loss_sum = step_metrics['loss'] if loss_sum is None else loss_sum + step_metrics['loss']
      if step == first_step:  # leave compilation out of the throughput figures
        jax.block_until_ready(step_metrics)
        progress.restart(step)
      stopping = stop.requested(step, lc.log_every)
      boundary = (
        step % lc.eval_every == 0 or step % lc.checkpoint_every == 0 or step == end or stopping
      )
      if boundary and not bool(finite):  # nothing non-finite is evaluated or saved
        faults.stop_non_finite(step, last_saved, lc.skip_nonfinite)
      if step % lc.log_every == 0 or step == end or stopping:
        mean_loss = loss_sum / (step - progress.window_start)
        values = progress.report(step, jax.device_get({**step_metrics, 'loss': mean_loss}))
        loss_sum = None
        if lc.skip_nonfinite:
          values['skipped'] = int(skipped)
        writer.write(step, 'train', values)
        log.info(metrics_lib.log_line(step, tc.steps, values, peak_of))
      if step % lc.eval_every == 0 or step == tc.steps:
        result = run_eval(state.params, step)
        progress.restart(step)
      if step % lc.checkpoint_every == 0 or step == end or stopping:
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


def _finish_if_missing(config, workdir, run: Run, ckpt, step, prepared):
  """A complete run whose end-of-run records were lost (killed while sampling) gets them."""
  wanted = ('loss.png', 'samples.txt') if config.eval.num_samples else ('loss.png',)
  if all(os.path.exists(os.path.join(workdir, f)) for f in wanted):
    return
  log.info('writing the end-of-run records that are missing')
  params = ckpt.restore_params(step, run.abstract_state.params)
  _finish(config, workdir, run, params, prepared)


def _finish(config, workdir, run: Run, params, prepared):
  """The end-of-run records: loss plot and samples (printed, then written whole; none
  where eval.num_samples is 0)."""
  ec = config.eval
  if jax.process_index() == 0 and os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    metrics_lib.plot_losses(
      os.path.join(workdir, 'metrics.jsonl'), os.path.join(workdir, 'loss.png')
    )
  if not ec.num_samples:
    return
  prompts = [ec.prompt] * ec.num_samples
  texts = generate_lib.sample(
    run.model, params, run.mesh, prepared.tokenizer, prompts, generate_lib.Sampling.from_config(ec)
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
