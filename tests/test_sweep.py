"""Sweeps (jaxgpt/sweep.py, jaxgpt/study.py) and what each run records (jaxgpt/accounting.py)."""

import json
import logging
import os
import subprocess
import sys

import pytest

from jaxgpt import accounting
from jaxgpt import model as model_lib
from jaxgpt import scaling
from jaxgpt import study
from jaxgpt import sweep
from jaxgpt import train
from jaxgpt.errors import UserError
from tests.helpers import ROOT, tiny_config, write_corpus

# One pytest-xdist worker runs this file's tests, so that the swept runs are made once.
pytestmark = pytest.mark.xdist_group('sweep')

EXPERIMENT = """
import os
from tests.helpers import tiny_config, write_corpus
from jaxgpt import sweep

CORPUS = {corpus!r}
FIT_STARTS = 'coarse'  # the fit's plumbing is tested here, its numbers in test_scaling.py


def get_config(arg=None):
  c = tiny_config(CORPUS)
  c.model.vocab_size = 384
  c.loop.eval_every = 1000  # once, at the end: each save and evaluation costs a tiny run time
  c.loop.checkpoint_every = 1000
  c.eval.num_samples = 0
  c.lock()
  return c


def get_sweep(arg=None):
  sizes = {{f'w{{w}}': {{'model.d_model': w}} for w in {widths!r}}}
  return sweep.isoflop(get_config(), sizes, {budgets!r}, min_steps=2)


def get_check(arg=None):
  return sweep.Check(2.0, {{f'w{{w}}': {{'model.d_model': w}} for w in (16, 32, 48)}})
"""


def _experiment(tmp_path, widths=(16, 32), budgets=(1e9,), corpus=None):
  corpus = corpus or write_corpus(tmp_path / 'corpus', n_docs=30)
  path = tmp_path / f'experiment-{len(widths)}x{len(budgets)}.py'
  path.write_text(EXPERIMENT.format(corpus=str(corpus), widths=widths, budgets=budgets))
  return str(path)


@pytest.fixture(scope='module')
def experiments(tmp_path_factory):
  """Two sweeps over one corpus: 'two' runs (widths 16 and 32 at 1e9 FLOPs) and 'six' (16, 24
  and 32 at 1e9 and 2e9), whose runs w16-C1e9 and w32-C1e9 are the two of the first."""
  directory = tmp_path_factory.mktemp('experiments')
  corpus = write_corpus(directory / 'corpus', n_docs=30)
  return {
    'two': _experiment(directory, corpus=corpus),
    'six': _experiment(directory, (16, 24, 32), (1e9, 2e9), corpus=corpus),
  }


@pytest.fixture(scope='module')
def swept(experiments, tmp_path_factory):
  """The two-run sweep, trained end to end through run.py: (command, its output, workdir).
  The tests below reuse its finished runs rather than train them again; read only."""
  workdir = tmp_path_factory.mktemp('swept') / 'sweep'
  cmd = [
    sys.executable,
    'run.py',
    f'--config={experiments["two"]}',
    f'--workdir={workdir}',
    '--mode=sweep',
  ]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  return cmd, out, workdir


def _with_finished_runs(swept, workdir, names):
  """A new sweep workdir holding copies of the swept runs `names` and their token store."""
  import shutil

  source = swept[2]
  for name in names:
    shutil.copytree(sweep.run_dir(str(source), name), sweep.run_dir(str(workdir), name))
  shutil.copytree(source / 'data', workdir / 'data')
  return str(workdir)


def test_the_two_sweeps_share_their_runs(experiments):
  """What lets the tests reuse the swept runs: the same name is the same run."""
  two, six = (sweep.runs_of(study.load_experiment(experiments[k]), None) for k in ('two', 'six'))
  shared = {r.name: r.overrides for r in six if r.name in {t.name for t in two}}
  assert shared == {r.name: r.overrides for r in two} and len(shared) == 2


def _config(corpus_dir):
  c = tiny_config(corpus_dir)
  c.model.vocab_size = 384
  return c


def test_isoflop_runs_spend_their_budget(tmp_path):
  config = _config(tmp_path)
  sizes = {'w16': {'model.d_model': 16}, 'w64': {'model.d_model': 64}}
  runs = sweep.isoflop(config, sizes, [2e9, 8e9], lambda steps: {'optim.warmup_steps': steps // 10})
  assert [r.name for r in runs] == ['w16-C2e9', 'w64-C2e9', 'w16-C8e9', 'w64-C8e9']
  for r in runs:
    cfg = sweep.apply(config, r.overrides)
    fpt = accounting.counts(model_lib.ModelConfig.from_config(cfg, 384))['flops_per_token']
    spent = fpt * cfg.train.steps * cfg.train.batch_size * cfg.model.seq_len
    assert spent == pytest.approx(r.budget, rel=0.05)  # steps are whole
    assert cfg.optim.warmup_steps == cfg.train.steps // 10
  assert sweep.isoflop(config, sizes, [2e9], min_steps=20)[0].name == 'w16-C2e9'
  assert len(sweep.isoflop(config, sizes, [2e9], min_steps=20)) == 1  # w64 runs 7 steps


def test_product_trains_each_size_on_each_token_budget(tmp_path):
  config = _config(tmp_path)
  runs = sweep.product(config, {'a': {'model.d_model': 16}}, [2560, 5120])
  assert [(r.name, r.overrides['train.steps']) for r in runs] == [
    ('a-D2.56e3', 10),
    ('a-D5.12e3', 20),
  ]


def test_an_override_of_a_field_that_does_not_exist_names_it(tmp_path):
  with pytest.raises(UserError, match="no config field 'model.widht'"):
    sweep.apply(_config(tmp_path), {'model.widht': 3}, 'sweep run x')
  with pytest.raises(UserError, match='wrong type'):
    sweep.apply(_config(tmp_path), {'model.d_model': 'wide'}, 'sweep run x')


def test_a_flop_budget_needs_the_vocabulary_known(tmp_path):
  config = tiny_config(tmp_path)  # model.vocab_size = 0: the tokenizer's, unknown yet
  with pytest.raises(UserError, match='model.vocab_size'):
    sweep.isoflop(config, {'a': {}}, [1e9])


def test_counts_leave_the_tables_out_of_the_non_embedding_parameters(tmp_path):
  c = _config(tmp_path)
  cfg = model_lib.ModelConfig.from_config(c, 384)
  counts = accounting.counts(cfg)
  assert counts['params'] == model_lib.param_count(cfg)
  assert counts['params'] - counts['params_non_embedding'] == (384 + 32) * 32
  c.model.tie_embeddings = False
  untied = accounting.counts(model_lib.ModelConfig.from_config(c, 384))
  assert untied['params_non_embedding'] == counts['params_non_embedding']


def test_a_run_records_n_d_c_losses_and_wall_time(tmp_path):
  config = tiny_config(write_corpus(tmp_path / 'corpus', n_docs=30), steps=6)
  config.loop.eval_every = 2
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  s = accounting.read(str(tmp_path / 'run'))
  assert s['complete'] and s['step'] == 6
  assert s['tokens'] == 6 * 8 * 32
  assert s['flops'] == pytest.approx(s['flops_per_token'] * s['tokens'])
  assert [e[0] for e in s['evals']] == [2, 4, 6]
  assert s['final_loss'] == s['evals'][-1][1]
  assert s['best_loss'] == min(e[1] for e in s['evals'])
  assert s['wall_s'] > 0
  metrics = [json.loads(x) for x in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert s['final_loss'] == pytest.approx([m for m in metrics if m['kind'] == 'eval'][-1]['loss'])


def test_the_runner_skips_finished_runs_and_resumes_a_stopped_one(
  experiments, swept, tmp_path, caplog
):
  experiment = study.load_experiment(experiments['two'])
  config = experiment.get_config()
  runs = sweep.runs_of(experiment, None)
  first, second = runs
  # The first run finished (the swept one); the second was stopped at step 3 (a
  # checkpoint), as a killed run is.
  workdir = _with_finished_runs(swept, tmp_path / 'sweep', [first.name])
  stopped = sweep.apply(sweep.config_for(config, second, workdir), {'loop.run_steps': 3})
  train.train_and_evaluate(stopped, sweep.run_dir(workdir, second.name))
  stopped_at = accounting.read(sweep.run_dir(workdir, second.name))
  assert stopped_at['step'] == 3 and not stopped_at['complete']
  trained = []

  def train_fn(cfg, rundir):
    trained.append(os.path.basename(rundir))
    return train.train_and_evaluate(cfg, rundir)

  with caplog.at_level(logging.INFO, logger='jaxgpt'):
    assert sweep.run_local(config, runs, workdir, train_fn) == []
  assert trained == [second.name]
  assert 'resuming from step 3' in caplog.text
  s = accounting.read(sweep.run_dir(workdir, second.name))
  assert s['complete'] and s['step'] == second.overrides['train.steps']
  assert [e[0] for e in s['evals']] == [3, second.overrides['train.steps']]  # 3: before the stop
  assert s['wall_s'] > stopped_at['wall_s']  # both invocations' time


def test_commands_and_a_slurm_array_for_a_cluster(tmp_path, capsys):
  path = _experiment(tmp_path)
  experiment = study.load_experiment(path)
  workdir = str(tmp_path / 'sweep')
  cli = ['--config.train.seed=3']
  study.run(experiment.get_config(), path, cli, workdir, 'commands', None)
  commands = capsys.readouterr().out.strip().splitlines()
  assert len(commands) == 2
  assert f'--workdir={workdir}/runs/w16-C1e9' in commands[0]
  assert '--config.train.seed=3' in commands[0] and '--config.model.d_model=16' in commands[0]
  assert f'--config.data.prep.cache_dir={workdir}/data' in commands[0]
  study.run(experiment.get_config(), path, cli, workdir, 'slurm', None)
  script = open(os.path.join(workdir, 'sweep.sbatch')).read()
  assert '#SBATCH --array=0-1' in script
  listed = open(os.path.join(workdir, 'sweep_commands.txt')).read().splitlines()
  assert listed == commands
  assert '--mode=prepare' in capsys.readouterr().out


@pytest.mark.slow
def test_a_two_run_sweep_end_to_end_through_run_py(swept):
  cmd, out, workdir = swept
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.load(open(workdir / 'sweep.json'))
  assert [r['name'] for r in rows] == ['w16-C1e9', 'w32-C1e9']
  assert all(r['complete'] and r['final_loss'] > 0 for r in rows)
  assert 'w32-C1e9' in out.stdout and 'final_loss' in out.stdout  # the table, printed
  assert (workdir / 'sweep.csv').read_text().count('\n') == 3
  assert 'no fit' in out.stderr
  again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and '0 to train' in again.stderr


@pytest.mark.slow
def test_a_sweep_fits_plots_and_checks_its_prediction(experiments, swept, tmp_path):
  experiment = study.load_experiment(experiments['six'])
  config = experiment.get_config()
  # Two of its six runs are the swept ones: four are trained here, then the check.
  workdir = _with_finished_runs(swept, tmp_path / 'sweep', ['w16-C1e9', 'w32-C1e9'])
  out = study.run(
    experiment.get_config(),
    experiment.__file__,
    [],
    workdir,
    'local',
    train.train_and_evaluate,
    samples=4,
  )
  fit = json.load(open(os.path.join(workdir, 'fit.json')))
  assert fit['runs'] == 6 and 'approach2' in fit  # None where no minimum lies inside its curve
  assert set(fit['intervals_95']['approach3']) >= {'E', 'A', 'B', 'alpha', 'beta'}
  check = json.load(open(os.path.join(workdir, 'check.json')))
  assert check['run'] == out['check']['run'] and check['run'].startswith('check-')
  assert check['flops'] == pytest.approx(2 * 2e9, rel=0.1)
  assert check['measured_loss'] == pytest.approx(
    accounting.read(sweep.run_dir(workdir, check['run']))['final_loss']
  )
  assert check['error'] == pytest.approx(check['predicted_loss'] / check['measured_loss'] - 1)
  for png in ('loss_vs_tokens', 'frontier', 'residuals'):
    assert os.path.getsize(os.path.join(workdir, f'{png}.png')) > 1000
  assert config.train.steps  # the experiment's own config is untouched


def test_a_learning_rate_by_width_study_names_each_widths_best_rate(tmp_path, capsys):
  rows = [
    {
      'name': f'{kind}-{w}-{lr}',
      'final_loss': (lr - best) ** 2 + 1.0,
      'model.parametrization': kind,
      'model.d_model': w,
      'optim.lr': lr,
    }
    for kind, shift in (('sp', 2.0), ('mup', 1.0))
    for w in (32, 64)
    for best in [0.01 / shift ** (w // 64)]
    for lr in (0.0025, 0.005, 0.01)
  ]
  rows.append({**rows[0], 'name': 'diverged', 'final_loss': None, 'optim.lr': 0.1})
  best = study.lr_width(rows, str(tmp_path))
  assert best['sp 32']['lr'] == 0.01 and best['sp 64']['lr'] == 0.005
  assert best['mup 32']['lr'] == best['mup 64']['lr'] == 0.01
  assert 'sp 64: best lr 0.005' in capsys.readouterr().out
  assert os.path.getsize(tmp_path / 'lr_width.png') > 1000
  assert json.load(open(tmp_path / 'lr_width.json')) == best


def test_a_command_line_change_that_moves_a_runs_flops_is_refused(tmp_path):
  path = _experiment(tmp_path)
  experiment = study.load_experiment(path)
  config = sweep.apply(experiment.get_config(), {'model.seq_len': 16})
  with pytest.raises(UserError, match='not its budget'):
    study.run(config, path, ['--config.model.seq_len=16'], str(tmp_path / 's'), 'commands', None)
  sweep.check_budgets(experiment.get_config(), sweep.runs_of(experiment, None))  # unchanged: fine


def test_an_unknown_fit_grid_is_named(experiments):
  experiment = study.load_experiment(experiments['two'])
  assert study.fit_starts(experiment) is scaling.COARSE_STARTS
  experiment.FIT_STARTS = 'fine'
  with pytest.raises(UserError, match="FIT_STARTS = 'fine' in the experiment: use one of hoffmann"):
    study.fit_starts(experiment)
