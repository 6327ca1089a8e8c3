"""Fine-tuning a pretrained checkpoint: text classification, instruction following and
preference tuning (DPO, jaxgpt/dpo.py).

The pretrained run (finetune.base_workdir) gives the model's shape, the tokenizer and the
initial params. A fine-tune is configuration of the one train step: `build_run` makes its
runstate.Run from its model (a Classifier, or the decoder for instructions), its loss
(inside LoRA's adapters when they train) and an optimizer that updates only what
finetune.trainable names (optim.make's freezing; the loss stops the gradient of the rest,
so none is computed). It runs on any mesh, checkpoints only what trains (with the
data-loader state) and resumes exactly like pretraining.
"""

import dataclasses
import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgpt import checkpoint as checkpoint_lib
from jaxgpt import classifier
from jaxgpt import dpo
from jaxgpt import faults
from jaxgpt import finetune_eval
from jaxgpt import loss as loss_lib
from jaxgpt import lora
from jaxgpt import metrics as metrics_lib
from jaxgpt import model as model_lib
from jaxgpt import optim
from jaxgpt import sharding
from jaxgpt import runstate
from jaxgpt import train
from jaxgpt import trees
from jaxgpt import workdir as workdir_lib
from jaxgpt.data import finetune_data as fdata
from jaxgpt.data import loader
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')


@dataclasses.dataclass
class Base:
  """The pretrained run: where it is, the step used, its saved config and its tokenizer."""

  workdir: str
  step: int
  config: dict
  tokenizer: object


def open_base(fc) -> Base:
  if not fc.base_workdir:
    raise UserError("finetune.base_workdir is empty; name the pretrained run's workdir")
  if not os.path.isdir(os.path.join(fc.base_workdir, 'checkpoints')):
    raise UserError(
      f'finetune.base_workdir={fc.base_workdir} holds no pretrained run (no '
      'checkpoints/ in it); check the path'
    )
  ckpt = checkpoint_lib.Checkpointer(fc.base_workdir, async_save=False)
  step = fc.base_step or ckpt.latest_step()
  if step is None or step not in ckpt.manager.all_steps():
    raise UserError(
      f'no checkpoint {f"at step {step} " if step else ""}in '
      f'{fc.base_workdir}; saved steps: {ckpt.manager.all_steps() or "none"}'
    )
  base = Base(
    fc.base_workdir,
    step,
    ckpt.restore_json(step, 'config'),
    checkpoint_lib.load_tokenizer(ckpt, step),
  )
  ckpt.close()
  return base


def with_base_model(config, base: Base):
  """config with the pretrained run's model fields (and the fine-tune's dropout)."""
  config = config.copy_and_resolve_references()
  config.unlock()
  saved = faults.upgrade(base.config)['model']
  config.model.update({k: v for k, v in saved.items() if k in config.model})
  config.model.dropout = config.finetune.dropout
  config.lock()
  return config


def build_run(config, mesh, vocab_size: int, num_classes: int = 0) -> runstate.Run:
  """The fine-tune's Run: its model, its loss and an optimizer that freezes what does not
  train. Its state holds every param; checkpoints hold the trainable ones."""
  fc = check_fields(config)
  cfg = model_lib.ModelConfig.from_config(config, vocab_size)
  cfg = model_lib.on_platform(cfg, sharding.platform(mesh))
  spec = lora.of_finetune(fc)
  is_trainable = trainable_of(config, cfg)
  if config.train.kind == 'classify':
    model = classifier.Classifier(cfg, num_classes)
    task_loss, task_init = classifier.loss, classifier.init_fn(model)
    batch_shapes = functools.partial(classifier.batch_shapes, cfg.seq_len)
  elif config.train.kind == 'dpo':
    model = model_lib.Transformer(cfg)
    d = fc.dpo
    task_loss = lambda m, params, batch, rng: dpo.loss(
      m, params, batch, rng, d.beta, d.label_smoothing
    )
    task_init = runstate.init_fn(model)
    batch_shapes = functools.partial(dpo.batch_shapes, cfg.seq_len)
  else:
    model = model_lib.Transformer(cfg)
    tc = config.train
    task_loss = lambda m, params, batch, rng: loss_lib.next_token_loss(
      m, params, batch, rng=rng, z_loss=tc.z_loss, label_smoothing=tc.label_smoothing
    )
    task_init, batch_shapes = runstate.init_fn(model), None

  def init_fn(rng):
    with lora.adapters(spec):
      return task_init(rng)

  def loss_fn(params, batch, rng):
    params = trees.stop_gradient_where(params, lambda path: not is_trainable(path))
    with lora.adapters(spec, deterministic=False):
      return task_loss(model, params, batch, rng)

  tx, lr = optim.make(
    config.optim, config.train.steps, trainable=is_trainable, lr_scale=model_lib.lr_scale(cfg)
  )
  run = runstate.build(config, mesh, model, loss_fn, init_fn, tx, lr, 0.0, batch_shapes)
  # Frozen params (bar the position table, which no matmul reads) take no weight gradients.
  frozen = trees.split(
    run.abstract_state.params, lambda path: is_trainable(path) or path[-1] == 'pos_embed'
  )[1]
  return dataclasses.replace(
    run, flops_per_token=metrics_lib.flops_per_token(cfg, trees.count(frozen))
  )


def check_fields(config):
  """config.finetune's choices that can be wrong whatever the data; returns it."""
  fc = config.finetune
  if config.train.kind != 'classify' and fc.trainable == 'head':
    raise UserError(
      f'finetune.trainable=head is for classification; a {config.train.kind} fine-tune '
      'trains last_k, all or lora'
    )
  lora.of_finetune(fc)
  if config.train.kind == 'dpo':
    check_dpo(fc.dpo)
  return fc


def check_dpo(d):
  if d.beta <= 0 or not 0 <= d.label_smoothing < 0.5:
    raise UserError(
      f'finetune.dpo.beta={d.beta} must be positive (0.1 is usual) and '
      f'finetune.dpo.label_smoothing={d.label_smoothing} in [0, 0.5) (0: plain DPO)'
    )
  return d


def trainable_of(config, cfg: model_lib.ModelConfig):
  """is_trainable(path) of the fine-tune's params."""
  fc = config.finetune
  prefix = ('backbone',) if config.train.kind == 'classify' else ()
  return lora.predicate(fc.trainable, cfg, fc.last_k, prefix)


def saved_view(state: runstate.TrainState, is_trainable) -> runstate.TrainState:
  """What a fine-tune's checkpoint holds: the step, the trainable params, their moments."""
  return state.replace(params=trees.split(state.params, is_trainable)[0])


def _base_params(config, base: Base, mesh):
  """The pretrained params alone (no optimizer moments), restored onto this mesh with the
  shardings the same rules give them here."""
  cfg = model_lib.ModelConfig.from_config(config, base.tokenizer.vocab_size)
  abstract = runstate.pretraining(config, cfg, mesh).abstract_state.params
  ckpt = checkpoint_lib.Checkpointer(base.workdir, async_save=False)
  params = ckpt.restore_params(base.step, abstract)
  ckpt.close()
  return params


def initial_params(config, run: runstate.Run, base: Base, seed: int):
  """Fresh heads and adapters, every other param the pretrained one."""
  pretrained = _base_params(config, base, run.mesh)
  if config.train.kind == 'classify':
    pretrained = {'backbone': pretrained}
  full = trees.merge(run.init_params(seed), pretrained)
  return jax.tree.map(jax.device_put, full, run.state_shardings.params)


def prepare(config, workdir, base: Base):
  """Encoded splits (and, for classification, the label names, saved to labels.json)."""
  fc, seq_len, tok = config.finetune, config.model.seq_len, base.tokenizer
  if config.train.kind == 'classify':
    splits = fdata.split_records(fc, fc.text_field)
    labels = fdata.label_names(splits['train'], fc.label_field)
    if len(labels) < 2:
      raise UserError(
        f'{fc.train_path}: the training split has {len(labels)} label(s); a '
        'classifier needs at least two'
      )
    arrays = {
      k: fdata.encode_classification(v, tok, labels, seq_len, fc, k) for k, v in splits.items() if v
    }
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, 'labels.json'), 'w') as f:
        json.dump(labels, f)
    return splits, arrays, labels
  if config.train.kind == 'dpo':
    splits = fdata.split_records(fc, fc.chosen_field)
    arrays = {
      k: fdata.encode_preferences(fdata.preference_examples(v, tok, fc), seq_len, tok.pad_id, k)
      for k, v in splits.items()
      if v
    }
    return splits, arrays, None
  splits = fdata.split_records(fc, fc.instruction_field)
  examples = {k: fdata.instruction_examples(v, tok, fc) for k, v in splits.items() if v}
  for name, split in examples.items():
    cut = sum(len(p) + len(r) > seq_len + 1 for p, r in split)
    if cut:
      log.warning(
        '%d of %d %s examples are longer than model.seq_len=%d tokens and are cut '
        'at the end (their responses lose their last tokens)',
        cut,
        len(split),
        name,
        seq_len,
      )
  arrays = {
    k: fdata.encode_instructions(v, seq_len, tok.pad_id, fc.packed and k == 'train')
    for k, v in examples.items()
  }
  return splits, arrays, None


def add_reference(config, run: runstate.Run, params, arrays: dict):
  """Each split's pairs get the reference's summed log-probs ('reference', n x 2): the
  starting point's, adapters (fresh, so a no-op) folded in. Called under run.context()."""
  start = time.perf_counter()
  plain = finetune_eval.plain_params(config, run)(params)
  logps_fn = dpo.make_logps_fn(run.model, run.mesh)
  for split in arrays.values():
    split['reference'] = dpo.reference_logps(
      logps_fn, plain, split, config.train.batch_size, run.mesh
    )
  log.info(
    "the reference's log-probs of %d pairs, from the starting point: %.1f s",
    sum(len(s['reference']) for s in arrays.values()),
    time.perf_counter() - start,
  )


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the fine-tune in workdir; returns its final report. The workdir
  belongs to this run until it returns: a second run on it is refused."""
  base = open_base(config.finetune)
  config = with_base_model(config, base)
  mesh = sharding.make_mesh(config.mesh)
  runstate.check_config(config, mesh)
  with workdir_lib.owned(workdir, jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, base, mesh)


def _train_and_evaluate(config, workdir: str, base: Base, mesh) -> dict:
  fc, tc = config.finetune, config.train
  lc = config.loop
  ckpt = checkpoint_lib.Checkpointer(workdir, lc.keep_checkpoints, lc.async_checkpoints)
  latest = None
  if ckpt.latest_step() is not None:  # the config is checked before the data is touched
    latest, saved = ckpt.newest_intact(
      lambda step: ckpt.restore_json(step, 'config'), with_data=True, set_aside=True
    )
    faults.check_resumable(config, saved, workdir)
  check_fields(config)  # before the data is read
  splits, arrays, labels = prepare(config, workdir, base)
  if len(arrays['train']['weights']) < tc.batch_size:
    raise UserError(
      f'the training split has {len(arrays["train"]["weights"])} rows, fewer than '
      f'one batch ({tc.batch_size}); lower train.batch_size'
    )
  run = build_run(config, mesh, base.tokenizer.vocab_size, len(labels or ()))
  is_trainable = trainable_of(config, run.model.cfg)
  saved_abstract = saved_view(run.abstract_state, is_trainable)
  log.info(
    'fine-tuning %s: %s trainable of %s params (%s)',
    config.train.kind,
    f'{trees.count(saved_abstract.params):,}',
    f'{trees.count(run.abstract_state.params):,}',
    fc.trainable,
  )
  if latest is not None:
    faults.check_shapes(
      checkpoint_lib.shapes(saved_abstract), ckpt.saved_shapes(latest), config, saved, workdir
    )
    if latest >= tc.steps:
      log.info('the run in %s is complete (step %d of %d)', workdir, latest, tc.steps)
  params = None
  if config.train.kind == 'dpo':
    with run.context():
      params = initial_params(config, run, base, tc.seed)
      add_reference(config, run, params, arrays)
  source = fdata.ArraySource(arrays['train'], f'{config.train.kind}-train')
  data_iter = iter(
    loader.batch_loader(source, tc.batch_size, tc.seed, jax.process_index(), jax.process_count())
  )
  with run.context():
    if params is None:
      params = initial_params(config, run, base, tc.seed)
    state = run.init_state(params=params)
    if latest is not None:
      restore = lambda step: ckpt.restore(step, saved_abstract, data_iter)
      latest, restored = ckpt.newest_intact(restore, with_data=True, set_aside=True)
      state = restored.replace(params=trees.merge(state.params, restored.params))
      log.info('resuming from step %d', latest)
    writer = metrics_lib.Writer(
      workdir, enabled=jax.process_index() == 0, start_step=latest or 0, config=config
    )
    if config.train.kind == 'dpo':
      initial = lambda: initial_params(config, run, base, tc.seed)
      evaluator = finetune_eval.DpoEval(config, run, base, arrays, initial)
    elif config.train.kind == 'classify':
      evaluator = finetune_eval.ClassifyEval(config, run, base, arrays, labels)
    else:
      evaluator = finetune_eval.InstructEval(config, run, base, arrays, labels)
    run_eval = lambda params, step: evaluator.during_training(params, step, writer)
    save = lambda step, st: ckpt.save(
      step, saved_view(st, is_trainable), data_iter, config, base.tokenizer
    )
    try:
      if latest is None or latest < tc.steps:
        state, _, stopped = train.train_loop(
          config, run, state, data_iter, writer, run_eval, save, latest
        )
        if stopped:
          return {'stopped': True, 'step': int(state.step)}
    finally:
      ckpt.wait()
      ckpt.close()
      writer.close()
    if int(state.step) < tc.steps:  # loop.run_steps ended this invocation early
      return {'step': int(state.step)}
    if jax.process_index() == 0:
      metrics_lib.plot_losses(
        os.path.join(workdir, 'metrics.jsonl'), os.path.join(workdir, 'loss.png')
      )
    return evaluator.final(state.params, int(state.step), workdir, splits)


def _restore_finetuned(config, workdir: str, base: Base, labels=None):
  """(Run, every param of the latest checkpoint of the fine-tune in workdir, its step)."""
  mesh = sharding.make_mesh(config.mesh)
  runstate.check_config(config, mesh)
  run = build_run(config, mesh, base.tokenizer.vocab_size, len(labels or ()))
  ckpt = checkpoint_lib.Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step()
  if step is None:
    raise UserError(f'no fine-tuning checkpoint in {workdir}; train first (--mode=train)')
  saved_abstract = saved_view(run.abstract_state, trainable_of(config, run.model.cfg))
  full = initial_params(config, run, base, config.train.seed)
  trained = ckpt.restore_params(step, saved_abstract.params)
  ckpt.close()
  return run, trees.merge(full, trained), step


def predict(config, workdir: str, input_file: str) -> list[dict]:
  """Labels each text of input_file (.txt lines, or CSV/TSV/JSONL/JSON with the text
  field); also written to WORKDIR/predictions.jsonl."""
  fc = config.finetune
  if config.train.kind != 'classify':
    raise UserError('--mode=predict labels texts with a classification fine-tune')
  labels_path = os.path.join(workdir, 'labels.json')
  if not os.path.isfile(labels_path):
    raise UserError(f'{labels_path} is missing; train the classifier in {workdir} first')
  with open(labels_path) as f:
    labels = json.load(f)
  records = fdata.read_records(input_file, fc.text_field)
  if not records:
    raise UserError(f'{input_file} holds no texts')
  base = open_base(fc)
  config = with_base_model(config, base)
  run, params, step = _restore_finetuned(config, workdir, base, labels)
  arrays = fdata.encode_classification(records, base.tokenizer, None, config.model.seq_len, fc)
  with run.context():
    logits = finetune_eval.ClassifyEval(config, run, base, {}, labels).predict(params, arrays)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = [
    {
      'text': r.fields[fc.text_field],
      'label': labels[int(p.argmax())],
      'probabilities': {name: round(float(x), 4) for name, x in zip(labels, p)},
    }
    for r, p in zip(records, probs)
  ]
  metrics_lib.write_jsonl(
    os.path.join(workdir, 'predictions.jsonl'), [{**row, 'step': step} for row in out]
  )
  return out


def export(config, workdir: str) -> str:
  """Writes the instruction- or preference-tuned model, adapters merged into its kernels,
  as a plain pretraining checkpoint in WORKDIR/merged (for --mode=sample/eval with the
  base config, or as the base of another fine-tune)."""
  fc = config.finetune
  if config.train.kind not in ('instruct', 'dpo'):
    raise UserError(
      '--mode=export writes a plain language model: it is for instruction and preference '
      "fine-tunes (a classifier's head has no place in one)"
    )
  base = open_base(fc)
  config = with_base_model(config, base)
  run, params, step = _restore_finetuned(config, workdir, base)
  spec = lora.of_finetune(config.finetune)
  if spec is not None:
    params = lora.merge_adapters(params, spec, run.model.cfg.scan_layers)
  plain = runstate.pretraining(config, run.model.cfg, run.mesh)
  with plain.context():
    state = plain.init_state(
      params=jax.tree.map(jax.device_put, params, plain.state_shardings.params)
    )
    state = state.replace(step=jnp.asarray(step, jnp.int32))
  out_dir = os.path.join(workdir, 'merged')
  ckpt = checkpoint_lib.Checkpointer(out_dir, async_save=False)
  ckpt.save(step, state, None, ml_collections.ConfigDict(base.config), base.tokenizer, force=True)
  ckpt.wait()
  ckpt.close()
  log.info('wrote the merged model (step %d) to %s', step, out_dir)
  return out_dir


def plan_run(config, mesh) -> runstate.Run:
  """The fine-tune's Run for --mode=plan: the pretrained run's model when
  finetune.base_workdir names one, else config.model as it is; two classes."""
  vocab = config.data.tokenizer.vocab_size
  if config.finetune.base_workdir:
    base = open_base(config.finetune)
    config, vocab = with_base_model(config, base), base.tokenizer.vocab_size
  return build_run(config, mesh, vocab, num_classes=2)
