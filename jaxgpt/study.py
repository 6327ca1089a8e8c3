"""A scaling study made of a sweep: run it (here, or as commands or a Slurm array for a
cluster), gather the runs' figures into one table, fit the laws, plot them, and check a
prediction against a bigger run.

Everything lands beside the runs in the sweep's workdir: sweep.csv and sweep.json (the
table), fit.json (both approaches, with bootstrap intervals), check.json, and the plots.
"""

import csv
import importlib.util
import io
import json
import logging
import os

from jaxgpt import accounting
from jaxgpt import metrics
from jaxgpt import scaling
from jaxgpt import sweep
from jaxgpt import workdir as workdir_lib
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')

COLUMNS = (
  'name',
  'budget',
  'params',
  'params_non_embedding',
  'tokens',
  'flops',
  'final_loss',
  'best_loss',
  'wall_s',
  'step',
  'complete',
)
N_KEY = 'params'  # what the laws call N: all parameters, as Hoffmann et al. count them
MIN_RUNS = 6  # L(N, D) has 5 parameters


def load_experiment(path: str):
  """The experiment file as a module (its get_sweep and get_check)."""
  spec = importlib.util.spec_from_file_location('jaxgpt_experiment', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def collect(runs: list[sweep.Run], workdir: str) -> list[dict]:
  """One row per run that has a summary: its counts, losses and time, and its overrides."""
  rows = []
  for r in runs:
    s = accounting.read(sweep.run_dir(workdir, r.name))
    if s is None:
      continue
    rows.append(
      {'name': r.name, 'budget': r.budget, **{k: s[k] for k in COLUMNS[2:]}, **r.overrides}
    )
  return rows


def table(rows: list[dict]) -> str:
  """The table as aligned text, for the console."""
  fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
  cells = [[fmt(r.get(c)) for c in COLUMNS] for r in rows]
  widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(COLUMNS)]
  lines = [' | '.join(c.rjust(w) for c, w in zip(COLUMNS, widths))]
  lines.append('-+-'.join('-' * w for w in widths))
  lines += [' | '.join(x.rjust(w) for x, w in zip(cell, widths)) for cell in cells]
  return '\n'.join(lines)


def write_table(rows: list[dict], workdir: str):
  """Prints the table, then writes it as sweep.csv and sweep.json."""
  print(table(rows), flush=True)
  fields = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
  out = io.StringIO()
  writer = csv.DictWriter(out, fields)
  writer.writeheader()
  writer.writerows({k: r.get(k, '') for k in fields} for r in rows)
  metrics.write_text(os.path.join(workdir, 'sweep.csv'), out.getvalue())
  metrics.write_text(os.path.join(workdir, 'sweep.json'), json.dumps(rows, indent=2))
  log.info('wrote %s and sweep.json', os.path.join(workdir, 'sweep.csv'))


# An experiment's FIT_STARTS: the grid approach 3's fit starts L-BFGS from. Hoffmann et
# al.'s 4,500 points take ~45 s here; the coarse 54 a second, for a quick look.
FIT_STARTS = {'hoffmann': scaling.HOFFMANN_STARTS, 'coarse': scaling.COARSE_STARTS}


def fit_starts(experiment) -> list:
  name = getattr(experiment, 'FIT_STARTS', 'hoffmann')
  if name not in FIT_STARTS:
    raise UserError(f'FIT_STARTS = {name!r} in the experiment: use one of {", ".join(FIT_STARTS)}')
  return FIT_STARTS[name]


def fit(rows: list[dict], samples: int = 200, starts=scaling.HOFFMANN_STARTS) -> dict:
  """Both approaches over the finished runs, with intervals at the largest budget."""
  done = [r for r in rows if r['complete'] and r['final_loss'] is not None]
  if len(done) < MIN_RUNS:
    raise UserError(f'fitting needs at least {MIN_RUNS} finished runs; {len(done)} are')
  c_max = max(r['budget'] or r['flops'] for r in done)
  n, d, loss = ([r[k] for r in done] for k in (N_KEY, 'tokens', 'final_loss'))
  fit3 = scaling.fit_law(n, d, loss, starts)
  fit2 = scaling.fit_isoflops(done, N_KEY)
  result = {
    'params_counted': N_KEY,
    'runs': len(done),
    'max_budget': c_max,
    'approach3': {**fit3, 'at_max_budget': scaling.optimal_allocation(fit3, c_max)},
    'approach2': fit2 and {**fit2, 'at_max_budget': scaling.frontier(fit2, c_max)},
  }
  result['intervals_95'] = scaling.bootstrap(done, c_max, samples, n_key=N_KEY, fit3=fit3)
  return result


def describe(result: dict) -> str:
  """The fit's figures in a few lines, with their intervals."""
  f3, ci = result['approach3'], result['intervals_95']
  iv = lambda part, k: '[{:.4g}, {:.4g}]'.format(*ci[part][k])
  lines = [
    f'approach 3, L(N, D) = E + A/N^alpha + B/D^beta over {result["runs"]} runs '
    f'(95% bootstrap intervals, {ci["samples"]} resamples):'
  ]
  lines += [f'  {k} = {f3[k]:.4g} {iv("approach3", k)}' for k in ('E', 'A', 'B', 'alpha', 'beta')]
  at = f3['at_max_budget']
  lines.append(
    f'  at C = {result["max_budget"]:.3g}: N_opt = {at["params"]:.4g}, D_opt = '
    f'{at["tokens"]:.4g}, {at["tokens_per_param"]:.3g} tokens per parameter '
    f'{iv("approach3", "tokens_per_param")}'
  )
  f2 = result['approach2']
  if f2:
    at = f2['at_max_budget']
    lines.append(
      f'approach 2, over {f2["minima_used"]} IsoFLOP minima within their curves (of '
      f'{len(f2["minima"])}): N_opt ~ C^{f2["n_exponent"]:.3f} '
      f'{iv("approach2", "n_exponent")}, D_opt ~ C^{f2["d_exponent"]:.3f} '
      f'{iv("approach2", "d_exponent")}; at C = {result["max_budget"]:.3g}: N_opt = '
      f'{at["params"]:.4g}, {at["tokens_per_param"]:.3g} tokens per parameter '
      f'{iv("approach2", "tokens_per_param")}'
    )
  else:
    lines.append('approach 2: needs two IsoFLOP curves of three sizes each')
  return '\n'.join(lines)


def check_run(config, check: sweep.Check, fit3: dict, c_max: float) -> tuple[sweep.Run, dict]:
  """The check's run (the candidate size the law predicts lowest at factor x c_max) and
  the prediction, made before it trains."""
  flops = check.factor * c_max
  best = None
  for run in sweep.isoflop(config, check.sizes, [flops], check.extra):
    cfg = sweep.apply(config, run.overrides, f'check run {run.name}')
    counts = sweep.model_counts(cfg)
    d = run.overrides['train.steps'] * sweep.tokens_per_step(cfg)
    predicted = float(scaling.law(fit3, counts[N_KEY], d))
    if best is None or predicted < best[1]['predicted_loss']:
      best = (
        run,
        {
          'params': counts[N_KEY],
          'tokens': d,
          'predicted_loss': predicted,
          'flops_per_token': counts['flops_per_token'],
        },
      )
  run, prediction = best
  run = sweep.Run(f'check-{run.name}', run.overrides, 0.0)
  flops_per_token = prediction.pop('flops_per_token')
  return run, {
    'run': run.name,
    'factor': check.factor,
    'fitted_up_to': c_max,
    'flops': prediction['tokens'] * flops_per_token,
    **prediction,
    'fit_closed_form': scaling.optimal_allocation(fit3, flops),
  }


def run_check(config, check, result, workdir, train_fn) -> dict:
  """Predicts, writes the prediction (check.json), trains the run, then records how close
  the prediction came: predicted / measured - 1."""
  path = os.path.join(workdir, 'check.json')
  run, record = check_run(config, check, result['approach3'], result['max_budget'])
  log.info(
    'prediction check: %s (N=%.4g, D=%.4g, C=%.3g) predicted loss %.4f; training it',
    run.name,
    record['params'],
    record['tokens'],
    record['flops'],
    record['predicted_loss'],
  )
  metrics.write_text(path, json.dumps(record, indent=2))
  trained = train_fn(sweep.config_for(config, run, workdir), sweep.run_dir(workdir, run.name))
  if trained.get('stopped'):
    raise sweep.Stopped(f'sweep stopped during {run.name}; run the same command to resume')
  s = accounting.read(sweep.run_dir(workdir, run.name))
  record.update(measured_loss=s['final_loss'], wall_s=s['wall_s'], flops=s['flops'])
  record['error'] = record['predicted_loss'] / record['measured_loss'] - 1
  print(
    f'prediction check {run.name}: predicted {record["predicted_loss"]:.4f}, measured '
    f'{record["measured_loss"]:.4f} ({100 * record["error"]:+.2f}%)',
    flush=True,
  )
  metrics.write_text(path, json.dumps(record, indent=2))
  return record


def plot_all(rows, result, workdir, check=None) -> list[str]:
  from jaxgpt import scaling_plots as plots

  done = [r for r in rows if r['complete'] and r['final_loss'] is not None]
  dirs = {r['name']: sweep.run_dir(workdir, r['name']) for r in done}
  paths = [plots.loss_vs_tokens(done, dirs, os.path.join(workdir, 'loss_vs_tokens.png'), N_KEY)]
  if result['approach2']:
    paths.append(
      plots.isoflops(done, result['approach2'], os.path.join(workdir, 'isoflops.png'), N_KEY)
    )
  paths.append(
    plots.frontier(
      result['approach2'], result['approach3'], os.path.join(workdir, 'frontier.png'), check
    )
  )
  paths.append(
    plots.residuals(done, result['approach3'], os.path.join(workdir, 'residuals.png'), N_KEY, check)
  )
  log.info('plots: %s', ', '.join(paths))
  return paths


def conclude(config, experiment, arg, workdir, train_fn=None, samples=200) -> dict:
  """Table, fit and plots from the sweep's finished runs; then, with train_fn and a check
  defined (get_check), the prediction check."""
  runs = sweep.runs_of(experiment, arg)
  rows = collect(runs, workdir)
  if not rows:
    raise UserError(
      f'no run of this sweep has started in {os.path.join(workdir, "runs")}; check '
      '--workdir, or train them first (--mode=sweep)'
    )
  write_table(rows, workdir)
  if getattr(experiment, 'STUDY', 'scaling') == 'lr_width':
    return {'lr_width': lr_width(rows, workdir)}
  finished = sum(1 for r in rows if r['complete'] and r['final_loss'] is not None)
  if finished < MIN_RUNS:
    log.warning(
      'no fit: L(N, D) has 5 parameters and %d of %d runs are finished (%d needed)',
      finished,
      len(runs),
      MIN_RUNS,
    )
    return {'fit': None, 'check': None}
  result = fit(rows, samples, fit_starts(experiment))
  print(describe(result), flush=True)
  metrics.write_text(os.path.join(workdir, 'fit.json'), json.dumps(result, indent=2))
  check = experiment.get_check(arg) if hasattr(experiment, 'get_check') else None
  record = None
  if check is not None and train_fn is not None:
    record = run_check(config, check, result, workdir, train_fn)
  elif check is not None:
    run, _ = check_run(config, check, result['approach3'], result['max_budget'])
    record = _read_json(os.path.join(workdir, 'check.json'))
    if not (record and record['run'] == run.name and record.get('measured_loss')):
      record = None
      print(f'the prediction check trains {run.name}; --mode=sweep runs it here')
  plot_all(rows, result, workdir, record)
  return {'fit': result, 'check': record}


def run(config, config_arg, cli, workdir, launch, train_fn, samples=200):
  """--mode=sweep: 'local' trains every run here, one after another, then concludes;
  'commands' prints one run.py command per run; 'slurm' writes an array script."""
  path, _, arg = config_arg.partition(':')
  experiment = load_experiment(path)
  runs = sweep.runs_of(experiment, arg or None)
  sweep.check_budgets(config, runs)
  fit_starts(experiment)  # a bad name stops the sweep now, not after its runs
  if launch == 'commands':
    for r in runs:
      print(sweep.command(config_arg, cli, r, workdir))
    return None
  if launch == 'slurm':
    os.makedirs(workdir, exist_ok=True)
    script = sweep.write_slurm([sweep.command(config_arg, cli, r, workdir) for r in runs], workdir)
    prep = sweep.command(config_arg, cli, runs[0], workdir, mode='prepare')
    print(
      f'wrote {script} ({len(runs)} tasks). Prepare the shared token store once, then submit:\n'
      f'  {prep}\n  sbatch --partition=P --time=T [--gres=gpu:1] {script}\n'
      f'and when the array is done: python run.py --config={config_arg} --workdir={workdir} '
      '--mode=fit'
    )
    return None
  with workdir_lib.Lock(workdir):
    try:
      failed = sweep.run_local(config, runs, workdir, train_fn)
      if failed:
        log.warning(
          'sweep: %d runs failed (%s); the fit leaves them out', len(failed), ', '.join(failed)
        )
      return conclude(config, experiment, arg or None, workdir, train_fn, samples)
    except sweep.Stopped as e:
      log.warning('%s', e)
      return None


def lr_width(rows: list[dict], workdir: str) -> dict:
  """A learning-rate x width sweep (experiments/mup.py): each parametrization's best
  learning rate at each width, printed, written (lr_width.json) and plotted
  (lr_width.png). Runs that diverged have no loss and are left out."""
  from jaxgpt import scaling_plots as plots

  keys = ('model.parametrization', 'model.d_model', 'optim.lr')
  done = [r for r in rows if r['final_loss'] is not None and all(k in r for k in keys)]
  best = {}
  for r in done:
    key = f'{r["model.parametrization"]} {r["model.d_model"]}'
    if key not in best or r['final_loss'] < best[key]['final_loss']:
      best[key] = {'lr': r['optim.lr'], 'final_loss': r['final_loss']}
  for key, b in sorted(best.items(), key=lambda kv: (kv[0].split()[0], int(kv[0].split()[1]))):
    print(f'{key:>10}: best lr {b["lr"]:.3g} (loss {b["final_loss"]:.4f})', flush=True)
  metrics.write_text(os.path.join(workdir, 'lr_width.json'), json.dumps(best, indent=2))
  log.info('plot: %s', plots.lr_by_width(done, os.path.join(workdir, 'lr_width.png')))
  return best
