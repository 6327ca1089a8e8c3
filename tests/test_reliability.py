"""Faults and bad input a new user met: each is refused with one message, or survived with
nothing lost. One small run (steps 2 and 4 saved, a model wider than the tests' default,
its corpus moved away after training) serves most cases; each works on a copy of it."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import pytest

from jaxgpt import checkpoint
from jaxgpt import inference
from jaxgpt import metrics
from jaxgpt import model as model_lib
from jaxgpt import runstate
from jaxgpt import sharding
from jaxgpt import train
from jaxgpt import workdir as workdir_lib
from jaxgpt.data import loader
from jaxgpt.data import pipeline
from jaxgpt.errors import UserError
from tests.helpers import ROOT, run_py, tiny_config, write_corpus
from tests.test_errors import no_compilation

# One pytest-xdist worker runs this file's tests, so that the trained run is made once.
pytestmark = pytest.mark.xdist_group('trained')


def _config(corpus):
  c = tiny_config(corpus, steps=4, checkpoint_every=2)
  c.model.d_model = 48  # trained wider than tiny_config says: eval must use the saved model
  return c


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(workdir, config) of a finished run whose raw corpus is gone."""
  root = tmp_path_factory.mktemp('trained')
  corpus = write_corpus(root / 'corpus')
  config = _config(corpus)
  train.train_and_evaluate(config, str(root / 'run'))
  shutil.move(corpus, root / 'moved-away')
  return root / 'run', config


@pytest.fixture
def run_copy(trained, tmp_path):
  workdir, config = trained
  shutil.copytree(workdir, tmp_path / 'run')
  return tmp_path / 'run', config


# 1. A workdir belongs to one run at a time ------------------------------------------------


def test_a_second_run_on_a_workdir_in_use_is_refused_naming_the_first(run_copy):
  workdir, config = run_copy
  with workdir_lib.Lock(str(workdir)), no_compilation():
    with pytest.raises(
      UserError,
      match=rf'--workdir={workdir} is in use by process '
      rf'{os.getpid()} on ',
    ):
      train.train_and_evaluate(config, str(workdir))


def test_a_killed_run_leaves_no_lock_behind(tmp_path):
  holder = subprocess.Popen(
    [
      sys.executable,
      '-c',
      (
        'import sys, time; from jaxgpt import workdir; '
        f'lock = workdir.Lock({str(tmp_path)!r}).__enter__(); print("locked", flush=True); '
        'time.sleep(60)'
      ),
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == 'locked'
  with pytest.raises(UserError, match=f'in use by process {holder.pid} '):
    workdir_lib.Lock(str(tmp_path)).__enter__()
  holder.kill()
  holder.wait()
  with workdir_lib.Lock(str(tmp_path)):  # the kernel released it with the process
    pass


# 2. A damaged checkpoint: the newest intact step, said so ---------------------------------


def _damage(workdir, step, how):
  root = workdir / 'checkpoints' / str(step)
  if how == 'truncated state':  # every array data file cut short, as a full disk leaves them
    for data in (root / 'state').rglob('d/*'):
      data.write_bytes(data.read_bytes()[:100])
  else:
    os.remove(
      root
      / {
        'no _METADATA': 'state/_METADATA',
        'no tokenizer': 'tokenizer/metadata',
        'no data state': 'data/process_0-of-1.json',
        'no config': 'config/metadata',
      }[how]
    )


DAMAGE = ['truncated state', 'no _METADATA', 'no data state', 'no tokenizer', 'no config']


@pytest.mark.parametrize('how', DAMAGE)
def test_evaluation_skips_a_damaged_latest_checkpoint(run_copy, how, caplog):
  workdir, config = run_copy
  _damage(workdir, 4, how)
  with caplog.at_level(logging.WARNING, logger='jaxgpt'):
    result = inference.evaluate_checkpoint(config, str(workdir))
  if how == 'no data state':  # evaluation needs no loader state: step 4 is fine for it
    assert result['step'] == 4
    return
  assert result['step'] == 2
  assert 'checkpoint step 4 is damaged and was skipped' in caplog.text


def test_training_resumes_from_the_newest_intact_step_and_sets_the_damaged_one_aside(
  run_copy, caplog
):
  workdir, config = run_copy
  _damage(workdir, 4, 'truncated state')
  config = config.copy_and_resolve_references()
  config.train.steps, config.loop.allow_config_change = 6, True  # two steps more
  with caplog.at_level(logging.WARNING, logger='jaxgpt'):
    result = train.train_and_evaluate(config, str(workdir))
  assert result['step'] == 6
  assert 'checkpoint step 4 is damaged and was skipped' in caplog.text
  assert (workdir / 'checkpoints' / '4.damaged').is_dir()
  assert checkpoint.Checkpointer(str(workdir)).manager.all_steps() == [2, 4, 6]
  steps = [
    json.loads(line)['step']
    for line in open(workdir / 'metrics.jsonl')
    if json.loads(line)['kind'] == 'train'
  ]
  assert steps == [1, 2, 3, 4, 5, 6]  # steps 3 and 4 once each: the resumed run's


def test_when_no_checkpoint_is_intact_the_error_names_the_damaged_files(run_copy):
  workdir, config = run_copy
  _damage(workdir, 4, 'no _METADATA')
  _damage(workdir, 2, 'no config')
  with pytest.raises(
    UserError,
    match=r'no intact checkpoint in .*step 4: missing .*'
    r'4/state/_METADATA.*step 2: missing .*2/config/metadata',
  ):
    inference.evaluate_checkpoint(config, str(workdir))


# 3., 4. The saved model is the model; shapes never resume ---------------------------------


def test_eval_and_sample_use_the_saved_model_whatever_the_command_line_defaults(trained):
  workdir, config = trained
  narrow = tiny_config(config.data.paths[0])  # d_model 32: what the README's command gives
  assert inference.evaluate_checkpoint(narrow, str(workdir))['step'] == 4
  assert len(inference.sample_checkpoint(narrow, str(workdir), ['def '])) == 1
  with pytest.raises(
    UserError,
    match=r'model.d_model=32 \(the checkpoint has 48\): evaluation '
    'and sampling use the saved model',
  ):
    inference.sample_checkpoint(narrow, str(workdir), ['def '], overrides=['model.d_model'])


def test_the_readme_eval_command_on_a_run_trained_with_model_overrides(trained, tmp_path):
  workdir, _ = trained  # trained with --config.model.d_model=48; its corpus moved away
  somewhere_else = tmp_path / 'corpus'  # the command line names another corpus: not used
  proc = run_py(
    f'--config=tests/tiny_experiment.py:{somewhere_else}',
    f'--workdir={workdir}',
    '--mode=eval',
    '--config.eval.top_k=5',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout[proc.stdout.index('{') :])
  assert result['step'] == 4 and result['loss'] > 0
  proc = run_py(
    f'--config=tests/tiny_experiment.py:{somewhere_else}',
    f'--workdir={workdir}',
    '--mode=sample',
    '--config.model.d_model=32',
  )
  assert proc.returncode == 2
  assert 'error: model.d_model=32 (the checkpoint has 48)' in proc.stderr


def test_a_shape_change_is_refused_before_restoring_even_when_changes_are_allowed(run_copy):
  workdir, config = run_copy
  wider = config.copy_and_resolve_references()
  wider.train.steps, wider.loop.allow_config_change = 6, True
  wider.model.d_model = 64
  with (
    no_compilation(),
    pytest.raises(
      UserError,
      match=r'other shapes than this config gives '
      r'.*the fields that differ: model.d_model',
    ),
  ):
    train.train_and_evaluate(wider, str(workdir))


# 6. Fields out of range: one line, before anything compiles -------------------------------


@pytest.mark.parametrize(
  'field, value, match',
  [
    ('eval.top_p', 0.0, r'eval.top_p=0.0 must be in \(0, 1\]'),
    ('eval.top_k', -1, r'eval.top_k=-1 must be 0 \(all tokens\) to the vocabulary size'),
    ('eval.temperature', -0.5, r'eval.temperature=-0.5 must be >= 0'),
    ('train.batch_size', 0, r'train.batch_size=0 must be a positive integer'),
    ('model.d_model', 0, r'model.d_model=0 must be a positive integer'),
    ('model.dropout', 1.0, r'model.dropout=1.0 must be in \[0, 1\)'),
  ],
)
def test_fields_out_of_range(corpus_dir, tmp_path, field, value, match):
  c = tiny_config(corpus_dir)
  section, key = field.split('.')
  c[section][key] = value
  with no_compilation(), pytest.raises(UserError, match=match):
    train.train_and_evaluate(c, str(tmp_path))
  assert not os.path.exists(tmp_path / 'data')


def test_top_k_above_the_vocabulary_is_refused_for_sampling(trained):
  workdir, config = trained
  c = config.copy_and_resolve_references()
  c.eval.top_k = 100_000
  with pytest.raises(
    UserError,
    match=r'eval.top_k=100000 must be 0 \(all tokens\) to the '
    r'vocabulary size 300',
  ):
    inference.sample_checkpoint(c, str(workdir), ['def '])


# 7. A workdir that cannot be written: refused before the work ------------------------------


@pytest.fixture
def read_only(tmp_path):
  """A directory nobody may write, not even root (chattr +i where the user is root)."""
  path = tmp_path / 'read-only'
  path.mkdir()
  (path / 'checkpoints').mkdir()
  if os.geteuid() == 0:
    if subprocess.run(['chattr', '+i', str(path)], capture_output=True).returncode:
      pytest.skip('chattr +i is not available here')
    yield path
    subprocess.run(['chattr', '-i', str(path)], check=True)
  else:
    path.chmod(0o555)
    yield path
    path.chmod(0o755)


def test_a_read_only_workdir_is_refused_before_training(corpus_dir, read_only):
  with no_compilation(), pytest.raises(UserError, match=r'is not writable .*fix its permissions'):
    train.train_and_evaluate(tiny_config(corpus_dir), str(read_only))


def test_a_read_only_workdir_is_refused_before_evaluating(trained, read_only):
  with no_compilation(), pytest.raises(UserError, match=r'is not writable'):
    inference.evaluate_checkpoint(trained[1], str(read_only))


# 8. A prompts file that is not UTF-8 -------------------------------------------------------


def test_a_prompts_file_that_is_not_utf8(tmp_path):
  path = tmp_path / 'prompts.txt'
  path.write_bytes('caf\xe9\n'.encode('latin-1'))
  with pytest.raises(UserError, match=r'prompts.txt is not UTF-8 text .*iconv'):
    inference.read_prompts([], str(path))


# 10. Each step once in metrics.jsonl after a resume ----------------------------------------


def test_a_resumed_run_drops_what_the_attempt_before_logged_past_its_checkpoint(tmp_path):
  writer = metrics.Writer(str(tmp_path))
  for step in range(1, 7):
    writer.write(step, 'train', {'loss': 10.0 - step})
  writer.close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 7, "kind": "tr')  # the line a kill cut short
  resumed = metrics.Writer(str(tmp_path), start_step=4)
  resumed.write(5, 'train', {'loss': 1.0})
  resumed.close()
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [(r['step'], r['loss']) for r in records] == [
    (1, 9.0),
    (2, 8.0),
    (3, 7.0),
    (4, 6.0),
    (5, 1.0),
  ]


# 11. A stop signal ends the run after the step it arrived in -------------------------------


def test_a_stop_signal_saves_the_step_it_arrived_in(corpus_dir, tmp_path):
  c = tiny_config(corpus_dir, steps=50)
  mesh = sharding.make_mesh(c.mesh)
  prepared = pipeline.prepare(c.data, str(tmp_path))
  s = runstate.pretraining(
    c, model_lib.ModelConfig.from_config(c, prepared.tokenizer.vocab_size), mesh
  )
  batches = iter(loader.train_loader(prepared, c.model.seq_len, c.train.batch_size, 0))

  def signalling():  # SIGTERM while the batch of step 7 is drawn
    for i, batch in enumerate(batches, 1):
      if i == 7:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  saved = []
  state, _, stopped = train.train_loop(
    c,
    s,
    s.init_state(0),
    signalling(),
    metrics.Writer(str(tmp_path), enabled=False),
    lambda params, step: {},
    lambda step, st: saved.append(step),
  )
  assert stopped and int(state.step) == 7 and saved == [7]


# 12. A finished run whose end-of-run records were lost gets them back ---------------------


def test_a_complete_run_without_its_samples_writes_them(run_copy):
  workdir, config = run_copy
  os.remove(workdir / 'samples.txt')
  assert train.train_and_evaluate(config, str(workdir))['complete']
  assert (workdir / 'samples.txt').read_text().startswith('--- sample 0')


# 13. A non-finite loss on a fresh run ------------------------------------------------------


def test_a_non_finite_loss_before_any_checkpoint_says_so_and_stops_at_once(corpus_dir, tmp_path):
  c = tiny_config(corpus_dir, steps=30, checkpoint_every=1000, eval_every=1000)
  c.optim.lr, c.optim.warmup_steps, c.optim.grad_clip = 1e30, 0, 0.0
  with pytest.raises(
    UserError,
    match=r'non-finite at step (\d+); stopped without saving it: '
    r'no checkpoint was saved before it',
  ) as err:
    train.train_and_evaluate(c, str(tmp_path))
  bad = int(str(err.value).split('at step ')[1].split(';')[0])
  logged = [json.loads(line)['step'] for line in open(tmp_path / 'metrics.jsonl')]
  assert bad <= 3 and max(logged) <= bad + 1  # not stepping on to step 30
  assert not os.path.exists(tmp_path / 'checkpoints' / '0')


# 14. A validation split shorter than a window, before training ----------------------------


def test_a_validation_split_shorter_than_a_window_is_refused_before_training(corpus_dir, tmp_path):
  c = tiny_config(corpus_dir)
  c.model.seq_len = 4096
  c.execution.attention_block = 0
  with (
    no_compilation(),
    pytest.raises(
      UserError,
      match=r'the validation split holds fewer than '
      r'4097 tokens',
    ),
  ):
    train.train_and_evaluate(c, str(tmp_path))


# 15. A refused resume touches nothing ------------------------------------------------------


def test_a_refused_resume_leaves_the_token_store_alone(run_copy):
  workdir, config = run_copy
  manifest = workdir / 'data' / 'manifest.json'
  before = manifest.stat().st_mtime_ns, sorted(os.listdir(workdir / 'data'))
  other = config.copy_and_resolve_references()
  other.data.clean.min_chars = 200
  with (
    no_compilation(),
    pytest.raises(
      UserError,
      match=r'holds a run with a different config '
      r'\(data.clean.min_chars: 16 -> 200\)',
    ),
  ):
    train.train_and_evaluate(other, str(workdir))
  assert (manifest.stat().st_mtime_ns, sorted(os.listdir(workdir / 'data'))) == before


# 16. A store that is present is enough to evaluate ----------------------------------------


def test_evaluation_needs_the_store_not_the_raw_corpus(trained):
  workdir, config = trained
  assert not os.path.exists(config.data.paths[0])  # the fixture moved it away
  assert inference.evaluate_checkpoint(config, str(workdir))['loss'] > 0


# 17. Messages that point the right way ------------------------------------------------------


def test_a_mistyped_workdir_for_eval_or_a_fine_tune_base_is_not_created(tmp_path, trained):
  missing = tmp_path / 'runz' / 'defualt'
  with pytest.raises(UserError, match=rf'--workdir={missing} holds no run'):
    inference.evaluate_checkpoint(trained[1], str(missing))
  from jaxgpt import finetune
  from configs import finetune as finetune_configs

  c = finetune_configs.get_config('classify')
  c.finetune.base_workdir = str(missing)
  with pytest.raises(UserError, match=r'finetune.base_workdir=.*holds no pretrained run'):
    finetune.open_base(c.finetune)
  assert not os.path.exists(tmp_path / 'runz')


def test_one_big_file_dropped_as_too_long_names_max_chars(tmp_path):
  (tmp_path / 'corpus').mkdir()
  (tmp_path / 'corpus' / 'big.txt').write_text('x = 1\n' * 200_000)
  c = tiny_config(tmp_path / 'corpus')
  with pytest.raises(
    UserError,
    match=r"dropped: \{'too_long': 1\}.*raise it \(0: no limit\), "
    r'or split a big file into documents',
  ):
    pipeline.prepare(c.data, str(tmp_path / 'run'))


@pytest.mark.parametrize(
  'args, message',
  [
    (
      ['--config=experiments/gpt3.py:7b'],
      "error: unknown GPT-3 preset '7b'; choose one of 125m, 350m",
    ),
    (
      ['--config=experiments/default.py:big'],
      "error: experiments/default.py takes no :argument (got 'big')",
    ),
    (
      ['--config=experiments/finetune_classify.py', '--mode=predict'],
      'error: --mode=predict needs --input_file=FILE',
    ),
    (['--mode=plan', '--topology=cpu:abc'], 'error: --topology=cpu:abc: use cpu:N'),
  ],
)
def test_command_line_mistakes(tmp_path, args, message):
  proc = run_py(*args, f'--workdir={tmp_path / "w"}')
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'w')
