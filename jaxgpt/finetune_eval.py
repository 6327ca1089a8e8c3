"""What a fine-tune reports: classification accuracy and per-class metrics; held-out
response loss and generated responses; held-out preference metrics and generations before
and after preference tuning."""

import logging
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgpt import dpo
from jaxgpt import evaluate as evaluate_lib
from jaxgpt import generate as generate_lib
from jaxgpt import lora
from jaxgpt import metrics as metrics_lib
from jaxgpt import sharding
from jaxgpt.data import finetune_data as fdata
from jaxgpt.data import loader

log = logging.getLogger('jaxgpt')


def plain_params(config, run):
  """params -> the params of the same model without adapters (LoRA's merged into the
  kernels), which evaluation and sampling run; the identity when no adapters train."""
  spec = lora.of_finetune(config.finetune)
  if spec is None:
    return lambda params: params
  return jax.jit(lambda params: lora.merge_adapters(params, spec, run.model.cfg.scan_layers))


class ClassifyEval:
  """Accuracy and loss on the validation split while training; a full report at the end.
  Called under run.context()."""

  def __init__(self, config, run, base, arrays, labels):
    self.config, self.run, self.arrays, self.labels = config, run, arrays, labels
    self._plain = plain_params(config, run)
    self._logits = jax.jit(
      lambda p, b: run.model.apply({'params': p}, b['inputs'], b['last']),
      in_shardings=(None, sharding.batch_sharding(run.mesh)),
      out_shardings=NamedSharding(run.mesh, P()),
    )

  def predict(self, params, arrays) -> np.ndarray:
    """logits_NxC of every row of `arrays`."""
    out, batch, plain = [], self.config.train.batch_size, self._plain(params)
    n = len(arrays['weights'])
    for b in loader.ordered_batches(
      fdata.ArraySource(arrays, 'predict'),
      batch,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    ):
      out.append(np.asarray(self._logits(plain, sharding.global_batch(b, self.run.mesh))))
    return np.concatenate(out)[:n]

  def during_training(self, params, step, writer):
    logits = self.predict(params, self.arrays['val'])
    result = evaluate_lib.classification_loss_and_accuracy(logits, self.arrays['val']['labels'])
    writer.write(step, 'eval', result)
    log.info('eval step %d | loss %.4f | accuracy %.4f', step, result['loss'], result['accuracy'])
    return result

  def final(self, params, step, workdir, splits):
    report = {'step': step, 'labels': self.labels}
    for name, arrays in self.arrays.items():
      pred = self.predict(params, arrays).argmax(-1)
      report[name] = evaluate_lib.classification_report(arrays['labels'], pred, self.labels)
      log.info(
        '%s: accuracy %.4f over %d (macro F1 %.4f)',
        name,
        report[name]['accuracy'],
        len(pred),
        report[name]['macro_f1'],
      )
      if jax.process_index() == 0:
        metrics_lib.plot_confusion(
          report[name]['confusion'],
          self.labels,
          os.path.join(workdir, f'confusion-{name}.png'),
          f'{name} split, step {step}',
        )
    metrics_lib.write_json(os.path.join(workdir, 'report.json'), report)
    return report


class InstructEval:
  """Held-out loss on the response tokens while training; generated responses at the end.
  Called under run.context()."""

  def __init__(self, config, run, base, arrays, labels):
    del labels
    self.config, self.run, self.base, self.arrays = config, run, base, arrays
    self._plain = plain_params(config, run)
    self._step = evaluate_lib.make_jitted_eval_step(
      run.model, None, sharding.batch_sharding(run.mesh)
    )
    self._bytes = evaluate_lib.byte_table(base.tokenizer, run.model.cfg.vocab_size)

  def during_training(self, params, step, writer):
    batches = loader.ordered_batches(
      fdata.ArraySource(self.arrays['val'], 'val'),
      self.config.train.batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    result = evaluate_lib.evaluate(
      self._step,
      self._plain(params),
      batches,
      self._bytes,
      lambda b: sharding.global_batch(b, self.run.mesh),
    )
    writer.write(step, 'eval', result)
    log.info(
      'eval step %d | held-out response loss %.4f | ppl %.2f',
      step,
      result['loss'],
      result['perplexity'],
    )
    return result

  def final(self, params, step, workdir, splits):
    fc = self.config.finetune
    result = {
      'step': step,
      'val': self.during_training(params, step, metrics_lib.Writer(workdir, False)),
    }
    held_out = held_out_records(fc, splits)
    prompts = [fdata.prompt_of(r, fc) for r in held_out]
    responses = generate_responses(
      self.config, self.run, self._plain(params), self.base.tokenizer, prompts
    )
    metrics_lib.write_jsonl(
      os.path.join(workdir, 'responses.jsonl'),
      [
        {
          'instruction': r.fields.get(fc.instruction_field),
          'input': r.fields.get(fc.input_field, ''),
          'reference': r.fields.get(fc.output_field),
          'response': response,
        }
        for r, response in zip(held_out, responses)
      ],
    )
    result['responses'] = len(responses)
    return result


def held_out_records(fc, splits) -> list:
  """The records whose prompts get responses at the end: the test split's, else the
  validation split's, at most finetune.num_generate (0: all)."""
  held_out = splits['test'] or splits['val']
  return held_out[: fc.num_generate] if fc.num_generate else held_out


def generate_responses(config, run, plain_params, tok, prompts: list[str]) -> list[str]:
  """Each prompt's response by config.eval's sampling, up to the end-of-document id."""
  settings = generate_lib.Sampling.from_config(config.eval)
  gen = generate_lib.Generator(run.model, plain_params, run.mesh, settings, tok.eod_id, tok.pad_id)
  responses = []
  batch = config.train.batch_size
  for start in range(0, len(prompts), batch):
    new = gen.generate([tok.encode(p) for p in prompts[start : start + batch]])
    responses += [tok.decode([t for t in ids if t != tok.eod_id]) for ids in new]
  return responses


class DpoEval:
  """Held-out pairs' DPO loss, reward accuracy and margin while training; at the end, the
  held-out prompts' responses from the starting point and from the tuned model. Called
  under run.context(); `initial()` gives the starting params again."""

  def __init__(self, config, run, base, arrays, initial):
    self.config, self.run, self.base, self.arrays, self.initial = config, run, base, arrays, initial
    self._plain = plain_params(config, run)
    d = config.finetune.dpo
    self._eval = dpo.make_eval_fn(run.model, run.mesh, d.beta, d.label_smoothing)

  def during_training(self, params, step, writer):
    result = dpo.evaluate(
      self._eval,
      self._plain(params),
      self.arrays['val'],
      self.config.train.batch_size,
      self.run.mesh,
    )
    writer.write(step, 'eval', result)
    log.info(
      'eval step %d | held-out pairs %d | dpo loss %.4f | reward accuracy %.3f | margin %.3f '
      '(chosen %.3f, rejected %.3f)',
      step,
      result['pairs'],
      result['loss'],
      result['reward_accuracy'],
      result['reward_margin'],
      result['chosen_reward'],
      result['rejected_reward'],
    )
    return result

  def final(self, params, step, workdir, splits):
    fc = self.config.finetune
    result = {
      'step': step,
      'val': self.during_training(params, step, metrics_lib.Writer(workdir, False)),
    }
    held_out = held_out_records(fc, splits)
    prompts = [fdata.preference_prompt(r, fc) for r in held_out]
    tok = self.base.tokenizer
    after = generate_responses(self.config, self.run, self._plain(params), tok, prompts)
    before = generate_responses(self.config, self.run, self._plain(self.initial()), tok, prompts)
    rows = [
      {
        'prompt': prompt,
        'chosen': r.fields.get(fc.chosen_field),
        'rejected': r.fields.get(fc.rejected_field),
        'before': b,
        'after': a,
      }
      for r, prompt, b, a in zip(held_out, prompts, before, after)
    ]
    for row in rows[:3]:
      log.info(
        'held-out prompt %r\n  before: %r\n  after:  %r', row['prompt'], row['before'], row['after']
      )
    metrics_lib.write_jsonl(os.path.join(workdir, 'generations.jsonl'), rows)
    result['generations'] = len(rows)
    return result
