"""What runs on a saved checkpoint: evaluation (`--mode=eval`) and sampling (`--mode=sample`).

Both rebuild the mesh from config.mesh over the devices present now, so a run trained on 8
devices evaluates or samples on 1 and the other way round (Orbax reshards on restore), and
both use the tokenizer saved in the checkpoint.
"""

import dataclasses
import json
import logging
import os

from jaxgpt import checkpoint as checkpoint_lib
from jaxgpt import evaluate as evaluate_lib
from jaxgpt import faults
from jaxgpt import generate as generate_lib
from jaxgpt import metrics as metrics_lib
from jaxgpt import model as model_lib
from jaxgpt import sharding
from jaxgpt import tasks as tasks_lib
from jaxgpt import runstate
from jaxgpt import workdir as workdir_lib
from jaxgpt.data import pipeline
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')


def restore(config, workdir: str, step: int | None = None, devices=None, overrides=None):
  """(config, Run, params, tokenizer, step) of a checkpoint of the run in workdir: the
  model is the saved one (see faults.with_saved_model), its tokenizer the saved one."""
  ckpt = checkpoint_lib.Checkpointer(workdir, async_save=False)
  if step is not None and step not in ckpt.manager.all_steps():
    raise UserError(
      f'no checkpoint at step {step} in {workdir}; saved steps: '
      f'{ckpt.manager.all_steps() or "none"}'
    )

  def load(st):
    saved = ckpt.restore_json(st, 'config')
    tokenizer = checkpoint_lib.load_tokenizer(ckpt, st)
    cfg = faults.with_saved_model(config, saved, overrides)
    mesh = sharding.make_mesh(cfg.mesh, devices)
    runstate.check_config(cfg, mesh)
    model_cfg = model_lib.ModelConfig.from_config(cfg, tokenizer.vocab_size)
    generate_lib.Sampling.from_config(cfg.eval, tokenizer.vocab_size)
    run = runstate.pretraining(cfg, model_cfg, mesh)
    return cfg, run, ckpt.restore_params(st, run.abstract_state.params), tokenizer

  if step is None:  # the newest step that restores; a damaged one is skipped, not moved
    step, loaded = ckpt.newest_intact(load, with_data=False, set_aside=False)
    if step is None:
      raise UserError(f'no checkpoint in {workdir} yet')
  else:
    loaded = load(step)
  ckpt.close()
  config, run, params, tokenizer = loaded
  return config, run, params, tokenizer, step


def evaluate_checkpoint(
  config, workdir: str, step: int | None = None, devices=None, overrides=None
) -> dict:
  """Loss, perplexity and bits per byte on the run's validation data, and the accuracy on
  each task in config.eval.tasks; also written to WORKDIR/eval-stepN.json."""
  # Bad files fail first.
  tasks = [tasks_lib.load(path, config.eval.target_delimiter) for path in config.eval.tasks]
  workdir_lib.check_run_exists(workdir)
  workdir_lib.check_writable(workdir)
  config, run, params, tokenizer, step = restore(config, workdir, step, devices, overrides)
  prepared = pipeline.prepare_shared(config.data, workdir, tokenizer, for_eval=True)
  # The training run's metrics.jsonl stays the training run's: nothing is appended to it.
  run_eval = evaluate_lib.make_evaluator(
    config, run, prepared, metrics_lib.Writer(workdir, enabled=False)
  )
  with run.context():
    result = {
      **run_eval(params, step),
      'step': step,
      'devices': run.mesh.size,
      'mesh': dict(run.mesh.shape),
    }
  if tasks:
    scorer = tasks_lib.Scorer(run.model, params, run.mesh, config.train.batch_size)
    result['tasks'] = {t['name']: tasks_lib.evaluate(scorer, tokenizer, t) for t in tasks}
  log.info('evaluation of step %d: %s', step, json.dumps(result))
  metrics_lib.write_json(os.path.join(workdir, f'eval-step{step}.json'), result)
  return result


def read_prompts(prompts: list[str], prompts_file: str) -> list[str]:
  """Prompts from the command line, then from a file: JSONL lines ("..." or {"prompt": ...})
  for prompts with newlines, otherwise one prompt per line."""
  prompts = list(prompts)
  if prompts_file:
    if not os.path.isfile(prompts_file):
      raise UserError(f'prompts file {prompts_file} does not exist')
    try:
      with open(prompts_file, encoding='utf-8') as f:
        lines = [line.rstrip('\n') for line in f if line.strip()]
    except UnicodeDecodeError as e:
      raise UserError(
        f'{prompts_file} is not UTF-8 text ({e.reason} at byte {e.start}); '
        'convert it (iconv -t UTF-8)'
      ) from None
    if prompts_file.endswith('.jsonl'):
      for n, line in enumerate(lines, 1):
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise UserError(f'{prompts_file}:{n} is not JSON ({e.msg})') from None
        record = record.get('prompt') if isinstance(record, dict) else record
        if not isinstance(record, str):
          raise UserError(f'{prompts_file}:{n}: use a JSON string or {{"prompt": "..."}}')
        prompts.append(record)
    else:
      prompts += lines
  return prompts


def sample_checkpoint(
  config, workdir: str, prompts: list[str], step: int | None = None, devices=None, overrides=None
) -> list[dict]:
  """Continues each prompt (config.eval.prompt when none are given) with the checkpoint's
  model and config.eval's sampling settings; also written to WORKDIR/samples-stepN.jsonl."""
  prompts = prompts or [config.eval.prompt] * config.eval.num_samples
  workdir_lib.check_run_exists(workdir)
  workdir_lib.check_writable(workdir)
  config, run, params, tokenizer, step = restore(config, workdir, step, devices, overrides)
  settings = generate_lib.Sampling.from_config(config.eval)
  gen = generate_lib.Generator(
    run.model, params, run.mesh, settings, tokenizer.eod_id, tokenizer.pad_id
  )
  records, batch = [], config.train.batch_size
  for start in range(0, len(prompts), batch):
    chunk = prompts[start : start + batch]
    for prompt, ids in zip(chunk, gen.generate([tokenizer.encode(p) for p in chunk])):
      ended = bool(ids) and ids[-1] == tokenizer.eod_id
      records.append(
        {
          'prompt': prompt,
          'completion': tokenizer.decode(ids[: len(ids) - ended]),
          'new_tokens': len(ids),
          'stopped_at_eod': ended,
        }
      )
    log.info('sampled %d of %d prompts', len(records), len(prompts))
  metrics_lib.write_jsonl(
    os.path.join(workdir, f'samples-step{step}.jsonl'),
    [{**r, 'step': step, **dataclasses.asdict(settings)} for r in records],
  )
  return records
