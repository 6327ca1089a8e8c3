"""What a fine-tune reports: classification accuracy and per-class metrics, or held-out
response loss and generated responses."""

import logging
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgpt import evaluate as evaluate_lib
from jaxgpt import generate as generate_lib
from jaxgpt import lora
from jaxgpt import metrics as metrics_lib
from jaxgpt import sharding
from jaxgpt import train
from jaxgpt.data import finetune_data as fdata
from jaxgpt.data import loader

log = logging.getLogger('jaxgpt')


def _merged(s: train.Setup, params):
  return lora.merge(params, s.frozen) if s.frozen else params


class ClassifyEval:
  """Accuracy and loss on the validation split while training; a full report at the end."""

  def __init__(self, config, s, base, arrays, labels):
    self.config, self.s, self.arrays, self.labels = config, s, arrays, labels
    replicated = NamedSharding(s.mesh, P())
    merged_sh = lora.merge(s.state_shardings.params, s.frozen_shardings)
    self._logits = jax.jit(
      lambda p, b: s.model.apply({'params': p}, b['inputs'], b['last']),
      in_shardings=(merged_sh, sharding.batch_sharding(s.mesh)),
      out_shardings=replicated,
    )

  def predict(self, params, arrays) -> np.ndarray:
    """logits_NxC of every row of `arrays`."""
    out, batch, merged = [], self.config.train.batch_size, _merged(self.s, params)
    n = len(arrays['weights'])
    with self.s.context():
      for b in loader.ordered_batches(
        fdata.ArraySource(arrays, 'predict'),
        batch,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
      ):
        out.append(np.asarray(self._logits(merged, sharding.global_batch(b, self.s.mesh))))
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
  """Held-out loss on the response tokens while training; generated responses at the end."""

  def __init__(self, config, s, base, arrays, labels):
    del labels
    self.config, self.s, self.base, self.arrays = config, s, base, arrays
    merged_sh = lora.merge(s.state_shardings.params, s.frozen_shardings)
    with s.context():
      self._step = evaluate_lib.make_jitted_eval_step(
        s.model, merged_sh, sharding.batch_sharding(s.mesh)
      )
    self._bytes = evaluate_lib.byte_table(base.tokenizer, s.model.cfg.vocab_size)

  def during_training(self, params, step, writer):
    batches = loader.ordered_batches(
      fdata.ArraySource(self.arrays['val'], 'val'),
      self.config.train.batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    with self.s.context():
      result = evaluate_lib.evaluate(
        self._step,
        _merged(self.s, params),
        batches,
        self._bytes,
        lambda b: sharding.global_batch(b, self.s.mesh),
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
    held_out = splits['test'] or splits['val']
    if fc.num_generate:
      held_out = held_out[: fc.num_generate]
    tok = self.base.tokenizer
    settings = generate_lib.Sampling.from_config(self.config.eval)
    gen = generate_lib.Generator(
      self.s.model, _merged(self.s, params), settings, tok.eod_id, tok.pad_id
    )
    prompts = [fdata.prompt_of(r, fc) for r in held_out]
    responses = []
    batch = self.config.train.batch_size
    for start in range(0, len(prompts), batch):
      new = gen.generate([tok.encode(p) for p in prompts[start : start + batch]])
      responses += [tok.decode([t for t in ids if t != tok.eod_id]) for ids in new]
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
