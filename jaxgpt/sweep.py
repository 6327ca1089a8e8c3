"""Sweeps: an experiment's runs, trained here one after another or handed to a cluster, and
their figures gathered in one table.

An experiment file defines `get_sweep(arg=None)` beside `get_config`, big_vision's way: a
list of `Run`s, or of dicts of config overrides (`{'model.d_model': 64}`). `product` and
`isoflop` build the grids of scaling studies. Each run trains in WORKDIR/runs/NAME from the
experiment's config, with the command line's overrides and then its own. The runs share one
token store, WORKDIR/data, unless a run changes the data.
"""

import copy
import dataclasses
import logging
import os
import shlex
import sys
import time

from jaxgpt import accounting
from jaxgpt import model as model_lib
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')


class Stopped(Exception):
  """A run was asked to stop (SIGTERM, SIGINT): the sweep ends after saving it."""


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: dict  # dotted config field -> value
  budget: float = 0.0  # FLOPs of the IsoFLOP curve this run is on (0: none)


def short(x: float) -> str:
  """1e12 -> '1e12', 2.5e6 -> '2.5e6', 2**-10 -> '9.77e-4': short names for directories."""
  mantissa, exponent = f'{x:.2e}'.split('e')
  return f'{mantissa.rstrip("0").rstrip(".")}e{int(exponent)}'


def apply(config, overrides: dict, where: str = 'sweep'):
  """A copy of config with `overrides` set, each field checked as the command line would."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    *sections, field = key.split('.')
    node = config
    try:
      for s in sections:
        node = node[s]
      if field not in node:
        raise KeyError(field)
      node[field] = value
    except (KeyError, AttributeError):
      raise UserError(
        f'{where}: no config field {key!r}; check its spelling against configs/base.py'
      ) from None
    except TypeError as e:
      raise UserError(f'{where}: {key}={value!r} has the wrong type ({e})') from None
  return config


def model_counts(config) -> dict:
  if not config.model.vocab_size:
    raise UserError(
      'a FLOP-budgeted sweep needs model.vocab_size set in the experiment (e.g. the '
      "tokenizer's size), so that each run's parameters are known before the data is"
    )
  return accounting.counts(model_lib.ModelConfig.from_config(config, config.model.vocab_size))


def tokens_per_step(config) -> int:
  return config.train.batch_size * config.model.seq_len


def product(config, sizes: dict, tokens: list, extra=None) -> list[Run]:
  """Every size (name -> overrides) at every token budget; `extra(steps)` adds overrides
  that depend on the run's length (warmup, evaluation interval)."""
  runs = []
  for name, size in sizes.items():
    for d in tokens:
      steps = max(1, round(d / tokens_per_step(config)))
      more = extra(steps) if extra else {}
      runs.append(Run(f'{name}-D{short(d)}', {**size, 'train.steps': steps, **more}))
  return runs


def isoflop(config, sizes: dict, budgets: list, extra=None, min_steps: int = 1) -> list[Run]:
  """For each FLOP budget C, every size trained on D = C / (FLOPs per token) tokens: 6N
  plus attention, what each run's C counts. A run shorter than min_steps is left out."""
  runs = []
  for c in budgets:
    for name, size in sizes.items():
      fpt = model_counts(apply(config, size, f'size {name}'))['flops_per_token']
      steps = round(c / (fpt * tokens_per_step(config)))
      if steps < min_steps:
        log.info('sweep: %s at C=%s would run %d steps (< %d): left out', name, c, steps, min_steps)
        continue
      more = extra(steps) if extra else {}
      runs.append(Run(f'{name}-C{short(c)}', {**size, 'train.steps': steps, **more}, float(c)))
  return runs


@dataclasses.dataclass(frozen=True)
class Check:
  """The prediction check: fit on the sweep, then train the size the fit calls optimal
  at `factor` times the largest budget, and compare its loss with the prediction."""

  factor: float
  sizes: dict  # the candidates, name -> overrides
  extra: object = None  # as isoflop's


def runs_of(experiment, arg) -> list[Run]:
  """The experiment module's sweep, as Runs with unique names."""
  if not hasattr(experiment, 'get_sweep'):
    raise UserError(
      f'{experiment.__file__} defines no get_sweep(); --mode=sweep and --mode=fit need '
      'one (see experiments/scaling.py)'
    )
  runs = []
  for i, r in enumerate(experiment.get_sweep(arg)):
    if isinstance(r, dict):
      name = '-'.join(f'{k.split(".")[-1]}={v}' for k, v in r.items()) or f'run{i}'
      r = Run(name.replace('/', '_'), dict(r))
    runs.append(r)
  names = [r.name for r in runs]
  if not runs or len(set(names)) < len(names):
    raise UserError(
      f'{experiment.__file__}: get_sweep() must return runs with distinct names (got {names})'
    )
  return runs


def check_budgets(config, runs: list[Run]):
  """Each IsoFLOP run still spends its budget under `config` (the experiment's, with the
  command line's overrides): get_sweep sized the runs from the experiment file alone."""
  for r in runs:
    if r.budget and abs(planned_work(config, r) / r.budget - 1) > 0.05:
      raise UserError(
        f"sweep run {r.name}: with the command line's overrides it would spend "
        f'{planned_work(config, r):.3g} FLOPs, not its budget {r.budget:.3g}; change the '
        'model, batch or context in the experiment file, where get_sweep sizes the runs'
      )


def run_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, 'runs', name)


def config_for(config, run: Run, workdir: str):
  """The run's config: config with the run's overrides, its data shared with the others
  (WORKDIR/data) unless the run changes what the data is."""
  cfg = apply(config, run.overrides, f'sweep run {run.name}')
  if not cfg.data.prep.cache_dir and _shares_data(run):
    cfg.data.prep.cache_dir = os.path.join(workdir, 'data')
  return cfg


def _shares_data(run: Run) -> bool:
  return not any(k.startswith('data.') and not k.startswith('data.prep.') for k in run.overrides)


def is_done(workdir: str, name: str) -> bool:
  s = accounting.read(run_dir(workdir, name))
  return bool(s and s['complete'] and s['final_loss'] is not None)


def planned_work(config, run: Run) -> float:
  """The run's FLOPs, where its vocabulary is known; else its steps. The ETA's unit."""
  cfg = apply(config, run.overrides, f'sweep run {run.name}')
  if not cfg.model.vocab_size:
    return float(cfg.train.steps)
  return model_counts(cfg)['flops_per_token'] * cfg.train.steps * tokens_per_step(cfg)


def run_local(config, runs: list[Run], workdir: str, train_fn) -> list[str]:
  """Trains each run in turn, skipping finished ones; a run that was stopped resumes from its
  checkpoint. A run that fails with a user-facing error (a diverged loss, say) is reported
  and the sweep goes on; returns the names of those that failed."""
  from jaxgpt import metrics

  plan = [planned_work(config, r) for r in runs]
  todo = [i for i, r in enumerate(runs) if not is_done(workdir, r.name)]
  finished = len(runs) - len(todo)
  log.info('sweep: %d runs, %d finished already, %d to train', len(runs), finished, len(todo))
  if todo:
    prepare_data(config, workdir)
  failed, done, spent = [], 0.0, 0.0  # the ETA is from the runs that finished
  for k, i in enumerate(todo):
    run = runs[i]
    left = sum(plan[j] for j in todo[k:])
    eta = f', ETA {metrics.format_seconds(left * spent / done)}' if done else ''
    log.info('sweep: run %d of %d to train: %s%s', k + 1, len(todo), run.name, eta)
    start = time.perf_counter()
    try:
      result = train_fn(config_for(config, run, workdir), run_dir(workdir, run.name))
    except UserError as e:
      log.error('sweep: run %s failed: %s', run.name, e)
      failed.append(run.name)
      continue
    if result.get('stopped'):  # a stop signal: the sweep stops too, resumable
      raise Stopped(f'sweep stopped during {run.name}; run the same command to resume')
    done += plan[i]
    spent += time.perf_counter() - start
  return failed


def prepare_data(config, workdir: str):
  """The runs' shared token store, built before the first run: a problem with the data
  stops the sweep here, with its message, rather than failing every run in turn."""
  from jaxgpt.data import pipeline

  if not config.data.prep.cache_dir:
    config = apply(config, {'data.prep.cache_dir': os.path.join(workdir, 'data')})
  pipeline.prepare(config.data, workdir)


def command(config_arg: str, cli: list[str], run: Run, workdir: str, mode: str = '') -> str:
  """The run.py command that trains `run` on its own (a cluster's job)."""
  parts = [
    sys.executable,
    'run.py',
    f'--config={config_arg}',
    f'--workdir={run_dir(workdir, run.name)}',
  ]
  parts += [a for a in cli if a.startswith('--config.')]
  parts += [f'--config.{k}={_flag_value(v)}' for k, v in run.overrides.items()]
  if _shares_data(run) and not any(a.startswith('--config.data.prep.cache_dir=') for a in cli):
    parts.append(f'--config.data.prep.cache_dir={os.path.join(workdir, "data")}')
  if mode:
    parts.append(f'--mode={mode}')
  return shlex.join(parts)


def _flag_value(v) -> str:
  return repr(v) if isinstance(v, (tuple, list)) else str(v)


def write_slurm(commands: list[str], workdir: str) -> str:
  """A Slurm array script, one task per command (WORKDIR/sweep_commands.txt), logs in
  WORKDIR/slurm; partition, time and resources go on sbatch's command line."""
  from jaxgpt import metrics

  os.makedirs(os.path.join(workdir, 'slurm'), exist_ok=True)
  listing = os.path.join(workdir, 'sweep_commands.txt')
  metrics.write_text(listing, ''.join(c + '\n' for c in commands))
  script = os.path.join(workdir, 'sweep.sbatch')
  metrics.write_text(
    script,
    '#!/bin/bash\n'
    '#SBATCH --job-name=jaxgpt-sweep\n'
    f'#SBATCH --array=0-{len(commands) - 1}\n'
    f'#SBATCH --output={os.path.join(workdir, "slurm", "%A_%a.out")}\n'
    'set -euo pipefail\n'
    f'cd {shlex.quote(os.getcwd())}\n'
    f'eval "$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(listing)})"\n',
  )
  return script
