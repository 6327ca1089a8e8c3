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
    held_out = splits['test'] or splits['val']
    if fc.num_generate:
      held_out = held_out[: fc.num_generate]
    tok = self.base.tokenizer
    settings = generate_lib.Sampling.from_config(self.config.eval)
    gen = generate_lib.Generator(
      self.run.model, self._plain(params), self.run.mesh, settings, tok.eod_id, tok.pad_id
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
