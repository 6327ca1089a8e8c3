"""Fine-tuning a pretrained checkpoint: text classification and instruction following.

The pretrained run (finetune.base_workdir) gives the model's shape, the tokenizer and the
initial params. The fine-tune's state holds only what trains (finetune.trainable); the
rest stays frozen, passed to the same jitted step and loop as pretraining, so a fine-tune
runs on any mesh, checkpoints (only its trainable params, with the data-loader state) and
resumes exactly like pretraining.
"""

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from jaxgpt import checkpoint as checkpoint_lib
from jaxgpt import faults
from jaxgpt import finetune_eval
from jaxgpt import lora
from jaxgpt import metrics as metrics_lib
from jaxgpt import model as model_lib
from jaxgpt import sharding
from jaxgpt import train
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
  config.model.update(base.config['model'])
  config.model.dropout = config.finetune.dropout
  config.lock()
  return config


def model_config(config, tokenizer) -> model_lib.ModelConfig:
  fc = config.finetune
  cfg = model_lib.ModelConfig.from_config(config.model, tokenizer.vocab_size)
  if fc.trainable == 'lora':
    if fc.lora.rank <= 0:
      raise UserError(
        f'finetune.lora.rank={fc.lora.rank} must be positive with finetune.trainable=lora'
      )
    cfg = dataclasses.replace(
      cfg,
      lora_rank=fc.lora.rank,
      lora_alpha=fc.lora.alpha,
      lora_dropout=fc.lora.dropout,
      lora_targets=lora.check_targets(fc.lora.targets),
    )
  return cfg


def _classify_loss(model):
  def loss_fn(params, frozen, batch, rng):
    logits_BxC = model.apply(
      {'params': lora.merge(params, frozen)},
      batch['inputs'],
      batch['last'],
      deterministic=False,
      rngs={'dropout': rng},
    )
    nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch['labels'])
    return (nll_B * batch['weights']).sum(), batch['weights'].sum()

  return loss_fn


def make_setup(config, mesh, cfg, num_classes: int = 0) -> train.Setup:
  fc = config.finetune
  if fc.task not in ('classify', 'instruct'):
    raise UserError(f'finetune.task={fc.task!r}: use classify or instruct')
  if fc.task == 'classify':
    model = model_lib.Classifier(cfg, num_classes)
    is_trainable = lora.predicate(fc.trainable, cfg, fc.last_k, prefix=('backbone',))
    return train.setup(config, cfg, mesh, model, is_trainable, _classify_loss(model))
  if fc.trainable == 'head':
    raise UserError(
      'finetune.trainable=head is for classification; an instruction fine-tune '
      'trains last_k, all or lora'
    )
  model = model_lib.Transformer(cfg)
  is_trainable = lora.predicate(fc.trainable, cfg, fc.last_k)
  return train.setup(config, cfg, mesh, model, is_trainable, train.lm_loss(model))


def _base_params(config, base: Base, mesh):
  """The pretrained params alone (no optimizer moments), restored onto this mesh with the
  shardings the same rules give them here."""
  cfg = model_lib.ModelConfig.from_config(config.model, base.tokenizer.vocab_size)
  abstract = train.setup(config, cfg, mesh).abstract_state.params
  ckpt = checkpoint_lib.Checkpointer(base.workdir, async_save=False)
  params = ckpt.restore_params(base.step, abstract)
  ckpt.close()
  return params


def initial_params(config, s: train.Setup, base: Base, seed: int, classify: bool):
  """(trainable, frozen): fresh heads and adapters, every other param the pretrained one."""
  with s.context():
    fresh = jax.jit(lambda r: train._strip_boxes(train.init_params(s.model, r)))(
      jax.random.key(seed)
    )
  pretrained = _base_params(config, base, s.mesh)
  if classify:
    pretrained = {'backbone': pretrained}
  full = lora.merge(fresh, pretrained)
  trainable_sh = s.state_shardings.params
  trainable_paths = set(traverse_util.flatten_dict(trainable_sh))
  trainable, frozen = lora.split(full, lambda path: path in trainable_paths)
  put = lambda tree, sh: jax.tree.map(jax.device_put, tree, sh)
  return put(trainable, trainable_sh), put(frozen, s.frozen_shardings)


def prepare(config, workdir, base: Base):
  """Encoded splits (and, for classification, the label names, saved to labels.json)."""
  fc, seq_len, tok = config.finetune, config.model.seq_len, base.tokenizer
  if fc.task == 'classify':
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


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the fine-tune in workdir; returns its final report. The workdir
  belongs to this run until it returns: a second run on it is refused."""
  base = open_base(config.finetune)
  config = with_base_model(config, base)
  mesh = sharding.make_mesh(config.mesh)
  train.check_config(config, mesh)
  with workdir_lib.owned(workdir, jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, base, mesh)


def _train_and_evaluate(config, workdir: str, base: Base, mesh) -> dict:
  fc, tc = config.finetune, config.train
  ckpt = checkpoint_lib.Checkpointer(workdir, tc.keep_checkpoints, tc.async_checkpoints)
  latest = None
  if ckpt.latest_step() is not None:  # the config is checked before the data is touched
    latest, saved = ckpt.newest_intact(
      lambda step: ckpt.restore_json(step, 'config'), with_data=True, set_aside=True
    )
    faults.check_resumable(config, saved, workdir)
  cfg = model_config(config, base.tokenizer)
  splits, arrays, labels = prepare(config, workdir, base)
  if len(arrays['train']['weights']) < tc.batch_size:
    raise UserError(
      f'the training split has {len(arrays["train"]["weights"])} rows, fewer than '
      f'one batch ({tc.batch_size}); lower train.batch_size'
    )
  s = make_setup(config, mesh, cfg, len(labels or ()))
  log.info(
    'fine-tuning %s: %s trainable of %s params (%s)',
    fc.task,
    f'{lora.count(s.abstract_state.params):,}',
    f'{lora.count(s.abstract_state.params) + lora.count(s.frozen_abstract):,}',
    fc.trainable,
  )
  if latest is not None and latest >= tc.steps:
    log.info('the run in %s is complete (step %d of %d)', workdir, latest, tc.steps)
  source = fdata.ArraySource(arrays['train'], f'{fc.task}-train')
  data_iter = iter(
    loader.batch_loader(source, tc.batch_size, tc.seed, jax.process_index(), jax.process_count())
  )
  trainable, s.frozen = initial_params(config, s, base, tc.seed, fc.task == 'classify')
  with s.context():
    state = jax.jit(
      lambda p: train.TrainState(jnp.zeros((), jnp.int32), p, s.tx.init(p)),
      out_shardings=s.state_shardings,
    )(trainable)
  if latest is not None:
    faults.check_shapes(
      checkpoint_lib.shapes(s.abstract_state), ckpt.saved_shapes(latest), config, saved, workdir
    )
    restore = lambda step: ckpt.restore(step, s.abstract_state, data_iter)
    latest, state = ckpt.newest_intact(restore, with_data=True, set_aside=True)
    log.info('resuming from step %d', latest)
  writer = metrics_lib.Writer(workdir, enabled=jax.process_index() == 0, start_step=latest or 0)
  evaluate_cls = finetune_eval.ClassifyEval if fc.task == 'classify' else finetune_eval.InstructEval
  evaluator = evaluate_cls(config, s, base, arrays, labels)
  run_eval = lambda params, step: evaluator.during_training(params, step, writer)
  save = lambda step, st: ckpt.save(step, st, data_iter, config, base.tokenizer)
  try:
    if latest is None or latest < tc.steps:
      state, _, stopped = train.train_loop(
        config, s, state, data_iter, writer, run_eval, save, latest
      )
      if stopped:
        return {'stopped': True, 'step': int(state.step)}
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
  if int(state.step) < tc.steps:  # train.run_steps ended this invocation early
    return {'step': int(state.step)}
  if jax.process_index() == 0:
    metrics_lib.plot_losses(
      os.path.join(workdir, 'metrics.jsonl'), os.path.join(workdir, 'loss.png')
    )
  return evaluator.final(state.params, int(state.step), workdir, splits)


def _restore_finetuned(config, workdir: str, base: Base, labels=None):
  """(Setup with its frozen params, the trained params, step) of the latest checkpoint of
  the fine-tune in workdir."""
  mesh = sharding.make_mesh(config.mesh)
  train.check_config(config, mesh)
  cfg = model_config(config, base.tokenizer)
  s = make_setup(config, mesh, cfg, len(labels or ()))
  ckpt = checkpoint_lib.Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step()
  if step is None:
    raise UserError(f'no fine-tuning checkpoint in {workdir}; train first (--mode=train)')
  _, s.frozen = initial_params(
    config, s, base, config.train.seed, config.finetune.task == 'classify'
  )
  trained = ckpt.restore_params(step, s.abstract_state.params)
  ckpt.close()
  return s, trained, step


def predict(config, workdir: str, input_file: str) -> list[dict]:
  """Labels each text of input_file (.txt lines, or CSV/TSV/JSONL/JSON with the text
  field); also written to WORKDIR/predictions.jsonl."""
  fc = config.finetune
  if fc.task != 'classify':
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
  s, params, step = _restore_finetuned(config, workdir, base, labels)
  arrays = fdata.encode_classification(records, base.tokenizer, None, config.model.seq_len, fc)
  logits = finetune_eval.ClassifyEval(config, s, base, {}, labels).predict(params, arrays)
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
  """Writes the instruction-tuned model, adapters merged into its kernels, as a plain
  pretraining checkpoint in WORKDIR/merged (for --mode=sample/eval with the base config)."""
  fc = config.finetune
  if fc.task != 'instruct':
    raise UserError(
      '--mode=export writes a plain language model: it is for instruction '
      "fine-tunes (a classifier's head has no place in one)"
    )
  base = open_base(fc)
  config = with_base_model(config, base)
  s, params, step = _restore_finetuned(config, workdir, base)
  full = lora.merge(params, s.frozen)
  if s.model.cfg.lora_rank:
    full = lora.merge_adapters(full, s.model.cfg)
  plain = train.setup(config, dataclasses.replace(s.model.cfg, lora_rank=0), s.mesh)
  with plain.context():
    state = jax.jit(
      lambda p: train.TrainState(jnp.asarray(step, jnp.int32), p, plain.tx.init(p)),
      out_shardings=plain.state_shardings,
    )(full)
  out_dir = os.path.join(workdir, 'merged')
  ckpt = checkpoint_lib.Checkpointer(out_dir, async_save=False)
  ckpt.save(step, state, None, ml_collections.ConfigDict(base.config), base.tokenizer, force=True)
  ckpt.wait()
  ckpt.close()
  log.info('wrote the merged model (step %d) to %s', step, out_dir)
  return out_dir
