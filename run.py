"""The one entry point: python run.py --config=experiments/X.py[:arg] --workdir=DIR.

Any config field can be overridden: --config.train.steps=200 --config.model.dtype=bfloat16.
"""

from jaxgpt import hugepages

hugepages.ensure()  # re-executes once, before jax loads: huge pages for XLA:CPU's buffers

import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxgpt.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS


def _exit_on_unknown_key(parse):
  """ml_collections raises AttributeError/KeyError for an override of a key that does not
  exist, when the flag is defined (default config) or parsed (--config=...)."""
  try:
    return parse()
  except (AttributeError, KeyError) as e:
    detail = str(e).strip('\'"').replace('\\n', ' ').replace('\n', ' ')
    overrides = [a.split('=')[0] for a in sys.argv[1:] if a.startswith('--config.')]
    print(
      f'error: unknown config key among {overrides}: {detail}. Check its spelling against '
      'configs/base.py, where every field is declared with its default.',
      file=sys.stderr,
    )
    sys.exit(2)


_exit_on_unknown_key(
  lambda: config_flags.DEFINE_config_file(
    'config', 'experiments/default.py', 'Experiment config file[:arg].', lock_config=True
  )
)
flags.DEFINE_string('workdir', None, 'Run directory: data, checkpoints, metrics, samples.')
flags.DEFINE_enum(
  'mode',
  'train',
  [
    'train',
    'prepare',
    'eval',
    'sample',
    'plan',
    'predict',
    'export',
    'import',
    'export_hf',
    'lm_eval',
    'sweep',
    'fit',
  ],
  'train: train (or resume) and evaluate. prepare: build the token store '
  '(here, or submitted to Slurm with --config.data.prep.executor=slurm) and '
  'stop. eval: evaluate a checkpoint of the '
  "run in --workdir on this machine's devices (loss and config.eval.tasks). "
  'sample: continue prompts with a checkpoint (KV-cache decoding). plan: '
  'compile the train step for --topology and report memory, FLOPs and '
  'collectives without running it. predict: label --input_file with a '
  'classification fine-tune. export: write an instruction or DPO fine-tune with its '
  'adapters merged as a plain checkpoint in WORKDIR/merged. import: read the Hugging Face '
  'GPT-2 checkpoint in --hf_path as step 0 of a run in --workdir. export_hf: write the run '
  '(an instruction or DPO fine-tune with its adapters merged) as a Hugging Face GPT-2 in '
  '--out. '
  "lm_eval: score the run's latest checkpoint on lm-evaluation-harness tasks. sweep: "
  "train the experiment's get_sweep() runs in WORKDIR/runs (or print their commands, or "
  'write a Slurm array: --sweep_launch), then tabulate, fit scaling laws, plot and run '
  'the prediction check. fit: the table, fits and plots from the runs finished so far.',
)
flags.DEFINE_enum(
  'sweep_launch',
  'local',
  ['local', 'commands', 'slurm'],
  'For --mode=sweep: local (every run here, one after another; resumable), commands (print '
  'one run.py command per run) or slurm (write WORKDIR/sweep.sbatch, an array of the runs).',
)
flags.DEFINE_integer(
  'bootstrap', 200, "For --mode=sweep/fit: bootstrap resamples behind the fits' intervals."
)
flags.DEFINE_string(
  'hf_path', '', 'For --mode=import: a local GPT-2 directory (config.json, model.safetensors).'
)
flags.DEFINE_string('out', '', 'For --mode=export_hf: the directory to write.')
flags.DEFINE_list('lm_eval_tasks', [], 'For --mode=lm_eval: task names, comma-separated.')
flags.DEFINE_string(
  'lm_eval_include', '', 'For --mode=lm_eval: a directory of task YAMLs (local data).'
)
flags.DEFINE_integer('lm_eval_limit', None, 'For --mode=lm_eval: at most N examples per task.')
flags.DEFINE_integer('lm_eval_fewshot', None, "For --mode=lm_eval: few-shot examples (task's own).")
flags.DEFINE_integer(
  'step', None, 'For --mode=eval/sample: the checkpoint step (default: the latest).'
)
flags.DEFINE_multi_string(
  'prompt',
  [],
  'For --mode=sample: a prompt (repeat for several); '
  'none: config.eval.prompt. Settings: --config.eval.temperature, '
  'top_k, top_p, sample_tokens, seed.',
)
flags.DEFINE_string(
  'prompts_file',
  '',
  'For --mode=sample: more prompts, one per line, or '
  'JSON strings / {"prompt": ...} per line in a .jsonl file.',
)
flags.DEFINE_string(
  'input_file',
  '',
  'For --mode=predict: texts to label (.txt lines, or CSV/TSV/JSONL/JSON with the text field).',
)
flags.DEFINE_string(
  'topology',
  'cpu:8',
  'For --mode=plan: cpu:N (emulated CPU devices) or a '
  'TPU slice such as v5e-8, v5p-64, v4-32 (needs the libtpu package).',
)
flags.DEFINE_float(
  'device_memory_gb',
  0.0,
  "For --mode=plan: device memory to check against (0: the TPU generation's HBM).",
)
flags.DEFINE_string(
  'coordinator', '', 'Multi-process runs without SLURM/TPU: host:port of process 0.'
)
flags.DEFINE_integer('num_processes', 0, 'With --coordinator: how many processes.')
flags.DEFINE_string(
  'compilation_cache',
  None,
  'Where compiled programs are kept, so that a resumed run, an evaluation, sampling and '
  'the runs of a sweep load them rather than compile again (default: '
  '$JAXGPT_COMPILATION_CACHE, else ~/.cache/jaxgpt/compilation); off: no cache. Delete the '
  'directory to clear it.',
)
flags.DEFINE_integer('process_id', -1, "With --coordinator: this process's index.")
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Our progress at INFO; the libraries' (orbax logs every save) at WARNING.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('jaxgpt').setLevel(logging.INFO)
  if FLAGS.mode == 'prepare':
    return _prepare()
  if (
    FLAGS.mode == 'plan'
    and FLAGS.topology.startswith('cpu:')
    and not (FLAGS.topology[4:].isdigit() and int(FLAGS.topology[4:]) > 0)
  ):
    _exit(
      f'--topology={FLAGS.topology}: use cpu:N with N a positive number of emulated '
      'devices (e.g. cpu:8), or a TPU slice such as v5e-8'
    )
  if FLAGS.mode == 'predict' and not FLAGS.input_file:
    _exit(
      '--mode=predict needs --input_file=FILE, the texts to label (.txt lines, or '
      'CSV/TSV/JSONL/JSON with the text field)'
    )
  import jax

  if FLAGS.mode == 'plan' and FLAGS.topology.startswith('cpu:'):
    # Must happen before jax starts its CPU backend.
    jax.config.update('jax_num_cpu_devices', int(FLAGS.topology[4:]))
  _compilation_cache()
  from jaxgpt import finetune, inference, interop, runstate, sharding, train
  from jaxgpt import workdir as workdir_lib

  if FLAGS.mode != 'plan':
    sharding.maybe_initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    if jax.process_index() != 0:  # one process speaks for the run
      logging.getLogger('jaxgpt').setLevel(logging.WARNING)
  try:
    runstate.check_kind(FLAGS.config)  # which run this is decides what runs below
    tuning = FLAGS.config.train.kind != 'pretrain'
    if tuning and FLAGS.mode not in ('train', 'predict', 'export', 'export_hf', 'plan'):
      raise UserError(
        f'--mode={FLAGS.mode} is for pretraining runs; a fine-tune trains, plans, '
        'predicts (classification) or exports (instructions, DPO)'
      )
    if not tuning and FLAGS.mode in ('predict', 'export'):
      raise UserError(
        f'--mode={FLAGS.mode} is for fine-tuning experiments (experiments/finetune_*.py)'
      )
    if FLAGS.mode == 'train':
      run = finetune.train_and_evaluate if tuning else train.train_and_evaluate
      result = run(FLAGS.config, FLAGS.workdir)
      logging.getLogger('jaxgpt').info('result: %s', json.dumps(result)[:2000])
    elif FLAGS.mode == 'predict':
      for row in finetune.predict(FLAGS.config, FLAGS.workdir, FLAGS.input_file):
        if jax.process_index() == 0:
          print(json.dumps(row))
    elif FLAGS.mode == 'export':
      finetune.export(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == 'eval':
      result = inference.evaluate_checkpoint(
        FLAGS.config, FLAGS.workdir, FLAGS.step, overrides=_overrides()
      )
      if jax.process_index() == 0:
        print(json.dumps(result, indent=2))
    elif FLAGS.mode == 'sample':
      prompts = inference.read_prompts(FLAGS.prompt, FLAGS.prompts_file)
      records = inference.sample_checkpoint(
        FLAGS.config, FLAGS.workdir, prompts, FLAGS.step, overrides=_overrides()
      )
      if jax.process_index() == 0:
        for i, r in enumerate(records):
          end = ' [end of document]' if r['stopped_at_eod'] else ''
          print(
            f'--- sample {i} ({r["new_tokens"]} new tokens{end}) ---\n'
            f'{r["prompt"]}{r["completion"]}',
            flush=True,
          )
    elif FLAGS.mode == 'plan':
      _plan(finetune.plan_run if tuning else None)
    elif FLAGS.mode == 'import':
      if not FLAGS.hf_path:
        raise UserError('--mode=import needs --hf_path=DIR, a local Hugging Face GPT-2 checkpoint')
      interop.import_hf(FLAGS.config, FLAGS.workdir, FLAGS.hf_path)
    elif FLAGS.mode == 'export_hf':
      print(interop.export_hf(FLAGS.config, FLAGS.workdir, FLAGS.out, FLAGS.step))
    elif FLAGS.mode in ('sweep', 'fit'):
      _sweep(train.train_and_evaluate)
    elif FLAGS.mode == 'lm_eval':
      from jaxgpt import lm_eval_model

      workdir_lib.check_run_exists(FLAGS.workdir)
      lm, out = lm_eval_model.evaluate(
        FLAGS.config,
        FLAGS.workdir,
        FLAGS.lm_eval_tasks,
        FLAGS.lm_eval_include,
        FLAGS.lm_eval_limit,
        FLAGS.lm_eval_fewshot,
      )
      if jax.process_index() == 0:
        print(f'wrote {lm_eval_model.report(lm, out, FLAGS.workdir)}')
  except UserError as e:
    _exit(str(e))


def _exit(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _compilation_cache():
  """The persistent compilation cache on, before anything compiles; a directory that
  cannot be made leaves it off, with a warning."""
  from jaxgpt import compile_cache

  directory = FLAGS.compilation_cache
  if directory is None:
    directory = compile_cache.default_directory()
  if FLAGS.mode == 'plan' and not FLAGS.topology.startswith('cpu:'):
    directory = 'off'  # a TPU slice's programs are compiled for a topology, never loaded
  try:
    compile_cache.enable(directory, compile_cache.max_bytes())
  except (OSError, ValueError) as e:
    logging.getLogger('jaxgpt').warning(
      'compilation cache off: %s (set --compilation_cache=DIR to a writable directory, or off)', e
    )
    compile_cache.enable('off')


def _overrides() -> list[str]:
  """The config fields the command line set (--config.model.d_model=128 -> model.d_model)."""
  return [a[len('--config.') :].split('=')[0] for a in sys.argv[1:] if a.startswith('--config.')]


def _prepare():
  from jaxgpt import workdir
  from jaxgpt.data import pipeline

  try:
    with workdir.owned(FLAGS.workdir):
      prepared = pipeline.prepare(FLAGS.config.data, FLAGS.workdir)
  except pipeline.Submitted as e:
    print(e)
    return
  except UserError as e:
    _exit(str(e))
  print(
    f'token store: {prepared.directory} ({prepared.manifest["tokens"]["train"]:,} training '
    f'tokens); data card: {prepared.directory}/card.md'
  )


def _config_arg() -> str:
  """The --config value as given (file[:arg])."""
  for i, a in enumerate(sys.argv[1:], 1):
    if a.startswith('--config='):
      return a[len('--config=') :]
    if a == '--config' and i + 1 < len(sys.argv):
      return sys.argv[i + 1]
  return 'experiments/default.py'


def _sweep(train_fn):
  from jaxgpt import study

  if FLAGS.bootstrap < 1:
    raise UserError(f'--bootstrap={FLAGS.bootstrap}: use a positive number of resamples, e.g. 200')
  cli = [a for a in sys.argv[1:] if a.startswith('--config.')]
  if FLAGS.mode == 'fit':
    path, _, arg = _config_arg().partition(':')
    study.conclude(
      FLAGS.config, study.load_experiment(path), arg or None, FLAGS.workdir, samples=FLAGS.bootstrap
    )
  else:
    study.run(
      FLAGS.config, _config_arg(), cli, FLAGS.workdir, FLAGS.sweep_launch, train_fn, FLAGS.bootstrap
    )


def _plan(build_run):
  import os
  from jaxgpt import plan

  report = plan.plan(FLAGS.config, FLAGS.topology, FLAGS.device_memory_gb, build_run)
  print(plan.table(report))
  os.makedirs(FLAGS.workdir, exist_ok=True)
  path = os.path.join(FLAGS.workdir, f'plan-{FLAGS.topology.replace(":", "")}.json')
  plan.write(report, path)
  print(f'wrote {path}')


def _parse_flags(argv):
  """absl's parsing, except that a config file's own error (its get_config raised) is shown
  as its message alone, not inside ml_collections' traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    if 'Error whilst parsing config file' not in str(e):
      # absl's own message (a value of the wrong type, say); parsing again, as absl's
      # parse_flags_with_usage would, redefines the config's flags and hides it
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    last = str(e).strip().splitlines()[-1].strip()
    message = re.sub(r'^[\w.]+Error: ', '', last)
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: _exit_on_unknown_key(lambda: _parse_flags(argv)))
