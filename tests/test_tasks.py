"""Multiple-choice and cloze scoring, on layouts of the common releases and on a model that
has learned the answers by heart."""

import copy
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxgpt import inference, sharding, tasks, train
from jaxgpt import model as model_lib
from jaxgpt.errors import UserError
from tests.helpers import FACTS, run_py, tiny_config, write_facts_corpus

# One pytest-xdist worker runs this file's tests: the run that learned the facts is made once.
pytestmark = pytest.mark.xdist_group('facts')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, records):
  with open(path, 'w') as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r)) + '\n')
  return str(path)


def test_layouts_of_hellaswag_piqa_arc_and_lambada(tmp_path):
  hellaswag = tasks.load(
    _write(
      tmp_path / 'hs.jsonl',
      [{'ctx': 'A man', 'endings': [' sits.', ' runs.', ' eats.', ' naps.'], 'label': 2}],
    )
  )
  piqa = tasks.load(
    _write(
      tmp_path / 'piqa.jsonl',
      [{'goal': 'Open a jar', 'sol1': ' twist', 'sol2': ' shout', 'label': 0}],
    )
  )
  arc = tasks.load(
    _write(
      tmp_path / 'arc.jsonl',
      [
        {
          'question': {
            'stem': 'Sky?',
            'choices': [{'text': ' red', 'label': 'A'}, {'text': ' blue', 'label': 'B'}],
          },
          'answerKey': 'B',
        },
        {
          'question': 'Sun?',
          'choices': {'text': [' hot', ' cold'], 'label': ['1', '2']},
          'answerKey': '1',
        },
      ],
    )
  )
  lambada = tasks.load(_write(tmp_path / 'lambada.jsonl', [{'text': 'he said hello'}]))
  assert hellaswag['examples'] == [
    {'context': 'A man', 'choices': [' sits.', ' runs.', ' eats.', ' naps.'], 'label': 2}
  ]
  assert piqa['examples'][0] == {
    'context': 'Open a jar',
    'choices': [' twist', ' shout'],
    'label': 0,
  }
  assert [e['label'] for e in arc['examples']] == [1, 0]
  assert arc['examples'][0]['context'] == 'Sky?'
  assert lambada == {
    'name': 'lambada',
    'kind': 'cloze',
    'examples': [{'context': 'he said', 'choices': [' hello'], 'label': 0}],
  }


def test_choices_without_a_leading_space_are_not_glued_to_the_context(tmp_path):
  # HellaSwag's and ARC's releases put no space before an ending; PIQA's goal ends in one
  # here: exactly one space separates context and choice either way.
  task = tasks.load(
    _write(
      tmp_path / 'hs.jsonl',
      [
        {'ctx': 'A man', 'endings': ['sits.', 'runs.'], 'label': 0},
        {'goal': 'Open a jar ', 'sol1': 'twist', 'sol2': 'shout', 'label': 0},
        {'ctx': 'Then\n', 'endings': ['he sat.', ' he ran.'], 'label': 1},
      ],
    )
  )
  assert [e['choices'] for e in task['examples']] == [
    [' sits.', ' runs.'],
    ['twist', 'shout'],
    ['he sat.', ' he ran.'],
  ]


@pytest.mark.parametrize(
  'line, message',
  [
    ('{"context": "a", "choices": [" b"], "label": 1', 'bad.jsonl:2 is not JSON'),
    ('{"context": "a", "choices": [" b", " c"], "label": 5}', 'bad.jsonl:2: label 5 names none'),
    ('{"context": "a", "label": 0}', 'bad.jsonl:2: a multiple-choice line needs'),
    ('["a", "b"]', 'bad.jsonl:2: each line must be a JSON object'),
  ],
)
def test_bad_task_lines_are_named(tmp_path, line, message):
  path = _write(tmp_path / 'bad.jsonl', [{'context': 'x', 'choices': [' y'], 'label': 0}, line])
  with pytest.raises(UserError, match=message):
    tasks.load(path)
  with pytest.raises(UserError, match='does not exist'):
    tasks.load(str(tmp_path / 'missing.jsonl'))


@pytest.mark.parametrize('chunks, on_mesh', [(1, False), (3, True)])
def test_scores_equal_a_direct_forward_of_each_sequence(chunks, on_mesh):
  """Whole logits on one device; or in 3 chunks of positions (which divide no bucket
  width), with params on an 8-device mesh whose batch axes split the 4 rows, made 8."""
  cfg = model_lib.ModelConfig(
    vocab_size=64, seq_len=16, num_layers=2, num_heads=2, d_model=16, mlp_dim=32, loss_chunks=chunks
  )
  m = model_lib.Transformer(cfg)
  params = nn.unbox(jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))['params'])
  if on_mesh:
    mesh = Mesh(
      np.array(jax.devices()).reshape(4, 2, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3
    )
    params = jax.device_put(params, NamedSharding(mesh, P()))
  else:
    mesh = Mesh(jax.devices()[:1], ('devices',))
    params = jax.device_put(params)
  rng = np.random.default_rng(0)
  # Lengths from 2 to 30 tokens: the longest are cut from the left to the window.
  pairs = [
    (
      rng.integers(3, 64, rng.integers(1, 20)).tolist(),
      rng.integers(3, 64, rng.integers(1, 11)).tolist(),
    )
    for _ in range(11)
  ]
  scorer = tasks.Scorer(m, params, mesh, batch_size=4)
  assert scorer.batch_size == (8 if on_mesh else 4)
  logp, greedy = scorer.score(pairs)
  forward = jax.jit(lambda p, tokens: m.apply({'params': p}, tokens))  # a program per length
  for (context, cont), lp, gr in zip(pairs, logp, greedy):
    row = (context + cont)[-(cfg.seq_len + 1) :]
    logits = forward(params, jnp.asarray([row[:-1]]))[0]
    logp_all = jax.nn.log_softmax(logits)[jnp.arange(len(row) - 1), jnp.asarray(row[1:])]
    n = min(len(cont), len(row) - 1)
    assert lp == pytest.approx(float(logp_all[-n:].sum()), abs=1e-4)
    assert gr == bool((logits.argmax(-1)[-n:] == jnp.asarray(row[1:])[-n:]).all())


@pytest.fixture(scope='module')
def facts_run(tmp_path_factory):
  """A tiny model trained until it knows the eight capitals."""
  corpus = write_facts_corpus(tmp_path_factory.mktemp('facts'))
  config = tiny_config(corpus, steps=400, log_every=100, eval_batches=0)
  config.data.extensions = ('.txt',)
  config.data.dedup.exact = config.data.dedup.near = False  # the documents share sentences
  config.model.d_model = 64
  config.optim.lr = 3e-3
  workdir = str(tmp_path_factory.mktemp('facts_run'))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def _facts_tasks(tmp_path, wrong_labels=(), wrong_words=()):
  cities = list(FACTS.values())
  choice, cloze = [], []
  for i, (country, city) in enumerate(FACTS.items()):
    options = [f' {cities[(i + 1) % 8]}.', f' {city}.', f' {cities[(i + 3) % 8]}.']
    choice.append(
      {
        'context': f'the capital of {country} is',
        'choices': options,
        'label': 0 if country in wrong_labels else 1,
      }
    )
    word = cities[(i + 2) % 8] if country in wrong_words else city
    cloze.append({'text': f'the capital of {country} is {word}.'})
  return _write(tmp_path / 'capitals.jsonl', choice), _write(tmp_path / 'last_word.jsonl', cloze)


def test_known_answers_are_scored_correctly(facts_run, tmp_path):
  config, workdir = copy.deepcopy(facts_run)
  # Two labels of eight point at a wrong choice, and one cloze word is wrong: the model
  # (right on all eight) must then score exactly 6/8 and 7/8.
  config.eval.tasks = _facts_tasks(tmp_path, wrong_labels=('peru', 'japan'), wrong_words=('kenya',))
  result = inference.evaluate_checkpoint(config, workdir)
  choice, cloze = result['tasks']['capitals'], result['tasks']['last_word']
  assert choice['examples'] == 8 and choice['acc'] == 0.75 and choice['acc_norm'] == 0.75
  assert choice['acc_stderr'] == pytest.approx(math.sqrt(0.75 * 0.25 / 7))
  assert cloze['kind'] == 'cloze' and cloze['acc'] == 7 / 8
  with open(os.path.join(workdir, f'eval-step{result["step"]}.json')) as f:
    saved = json.load(f)
  assert saved['tasks'] == json.loads(json.dumps(result['tasks'])) and 'loss' in saved


def test_sampling_a_checkpoint_on_one_device_and_on_eight(facts_run, tmp_path):
  config, workdir = copy.deepcopy(facts_run)
  config.eval.temperature = 0.0
  config.eval.sample_tokens = 8
  prompts = [f'the capital of {c} is' for c in ('japan', 'peru', 'norway')]
  on_one = inference.sample_checkpoint(config, workdir, prompts, devices=jax.devices()[:1])
  on_eight = inference.sample_checkpoint(config, workdir, prompts)
  assert on_one == on_eight
  assert [r['completion'][:7] for r in on_one] == [' tokyo.', ' lima.\n', ' oslo.\n']


@pytest.mark.slow
def test_run_py_samples_prompts_from_flags_and_a_file(facts_run, tmp_path):
  config, workdir = facts_run
  prompts_file = _write(
    tmp_path / 'prompts.jsonl',
    ['"the capital of egypt is"', {'prompt': 'the capital of\nspain is'}],
  )
  proc = subprocess.run(
    [
      sys.executable,
      'run.py',
      f'--config=tests/tiny_experiment.py:{config.data.paths[0]}',
      f'--workdir={workdir}',
      '--mode=sample',
      '--prompt=the capital of italy is',
      f'--prompts_file={prompts_file}',
      '--config.model.d_model=64',
      '--config.eval.temperature=0.9',
      '--config.eval.top_p=0.5',
      '--config.eval.sample_tokens=7',
      '--config.eval.seed=4',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_NUM_CPU_DEVICES': '2'},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'the capital of italy is rome.' in proc.stdout
  assert 'the capital of egypt is cairo.' in proc.stdout
  with open(os.path.join(workdir, 'samples-step400.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert [r['prompt'] for r in records] == [
    'the capital of italy is',
    'the capital of egypt is',
    'the capital of\nspain is',
  ]
  assert all(r['new_tokens'] == 7 and r['top_p'] == 0.5 and r['seed'] == 4 for r in records)


REAL_LAYOUTS = [
  # As the releases ship them: no choice starts with a space.
  {
    'ctx': 'A man is sitting on a roof. he',
    'endings': ['is using wrap to wrap a pair of skis.', 'starts pulling up roofing.'],
    'label': '1',
  },
  {
    'goal': 'How do I ready a guinea pig cage?',
    'sol1': 'Put bedding in it.',
    'sol2': 'Burn it.',
    'label': 0,
  },
  {
    'question': {
      'stem': 'Which factor will most likely cause a person to develop a fever?',
      'choices': [
        {'text': 'a leg muscle relaxing', 'label': 'A'},
        {'text': 'a bacterial population in the bloodstream', 'label': 'B'},
      ],
    },
    'answerKey': 'B',
  },
]


@pytest.mark.parametrize('delimiter', [' ', '\n', ''])
def test_real_layouts_join_context_and_choice_with_the_delimiter(tmp_path, delimiter):
  for i, line in enumerate(REAL_LAYOUTS):
    task = tasks.load(_write(tmp_path / f'{i}.jsonl', [line]), delimiter)
    (example,) = task['examples']
    assert example['label'] == (0 if i == 1 else 1)
    assert all(
      c.startswith(delimiter) and not c[len(delimiter) :].startswith(' ')
      for c in example['choices']
    )
  # The default is lm-eval's: a space, so 'he' and 'is' do not run together as 'heis'.
  (example,) = tasks.load(_write(tmp_path / 'hs.jsonl', REAL_LAYOUTS[:1]))['examples']
  assert (example['context'] + example['choices'][0]).startswith(
    'A man is sitting on a roof. he is'
  )


def _lm_eval_tasks(directory):
  """Three lm-eval tasks over local JSONL (nothing fetched): multiple choice in HellaSwag's
  layout (choices without a leading space), greedy generation with a stop string, and
  rolling log-likelihood."""
  cities = list(FACTS.values())
  rows = [
    {
      'ctx': f'the capital of {country} is',
      'endings': [f'{cities[(i + 1) % 8]}.', f'{city}.', f'{cities[(i + 5) % 8]}.'],
      'label': 1,
      'city': city,
      'text': f'the capital of {country} is {city}.',
    }
    for i, (country, city) in enumerate(FACTS.items())
  ]
  data = _write(directory / 'capitals.jsonl', rows)
  common = (
    f'dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n'
  )
  yamls = {
    'capitals_mc': 'output_type: multiple_choice\ndoc_to_text: "{{ctx}}"\n'
    'doc_to_choice: "{{endings}}"\ndoc_to_target: "{{label}}"\n'
    'metric_list:\n  - metric: acc\n  - metric: acc_norm\n',
    'capitals_gen': 'output_type: generate_until\ndoc_to_text: "{{ctx}}"\n'
    'doc_to_target: " {{city}}"\ngeneration_kwargs:\n  until: ["."]\n  max_gen_toks: 8\n'
    'metric_list:\n  - metric: exact_match\n',
    'capitals_ppl': 'output_type: loglikelihood_rolling\ndoc_to_text: ""\n'
    'doc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n'
    '  - metric: bits_per_byte\n',
  }
  for name, body in yamls.items():
    (directory / f'{name}.yaml').write_text(f'task: {name}\n{common}{body}')
  return data, rows


def test_lm_eval_harness_scores_equal_the_tasks_module(facts_run, tmp_path, monkeypatch):
  monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
  from jaxgpt import lm_eval_model

  config, workdir = copy.deepcopy(facts_run)
  data, rows = _lm_eval_tasks(tmp_path)
  lm, out = lm_eval_model.evaluate(
    config, workdir, ['capitals_mc', 'capitals_gen', 'capitals_ppl'], include=str(tmp_path)
  )
  results = out['results']
  ours = tasks.evaluate(lm.scorer, lm.tokenizer, tasks.load(data))
  assert results['capitals_mc']['acc,none'] == ours['acc'] == 1.0
  assert results['capitals_mc']['acc_norm,none'] == ours['acc_norm']
  # The harness's log-likelihood of each choice is that of tasks.py's pair for it.
  task = tasks.load(data)
  pairs = [
    tasks.encode_pair(lm.tokenizer, e['context'], c) for e in task['examples'] for c in e['choices']
  ]
  want, _ = lm.scorer.score(pairs)
  samples = sorted(out['samples']['capitals_mc'], key=lambda s: s['doc_id'])
  got = [float(r[0][0]) for s in samples for r in s['resps']]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Generation stops at the stop string; the model knows every capital.
  assert results['capitals_gen']['exact_match,none'] == 1.0
  # Rolling: each text's log-likelihood after the end-of-document id.
  texts = [r['text'] for r in rows]
  logp, _ = lm.scorer.score([([lm.tokenizer.eod_id], lm.tokenizer.encode(t)) for t in texts])
  bpb = -logp.sum() / sum(len(t.encode()) for t in texts) / math.log(2)
  assert results['capitals_ppl']['bits_per_byte,none'] == pytest.approx(bpb, rel=1e-5)


def test_run_py_lm_eval_prints_the_table_then_writes_it(facts_run, tmp_path):
  _, workdir = facts_run
  _lm_eval_tasks(tmp_path)
  args = ['--config=tests/tiny_experiment.py:.', f'--workdir={workdir}', '--mode=lm_eval']
  out = run_py(*args, '--lm_eval_tasks=nope', f'--lm_eval_include={tmp_path}')
  assert out.returncode == 2 and out.stderr.strip().startswith('error: lm-eval knows no task nope')
  out = run_py(*args, '--lm_eval_tasks=capitals_mc', f'--lm_eval_include={tmp_path}')
  assert out.returncode == 0, out.stderr[-3000:]
  assert '|capitals_mc|' in out.stdout.replace(' ', '') and 'acc_norm' in out.stdout
  written = [f for f in os.listdir(workdir) if f.startswith('lm_eval-step')]
  with open(os.path.join(workdir, written[0])) as f:
    assert json.load(f)['results']['capitals_mc']['acc,none'] == 1.0


def test_lm_evals_own_command_line_runs_the_jaxgpt_model(facts_run, tmp_path):
  """`python -m jaxgpt.lm_eval_model` is lm-eval's CLI with --model jaxgpt registered; it
  passes batch_size, max_batch_size and device, which the model takes."""
  _, workdir = facts_run
  _lm_eval_tasks(tmp_path)
  args = ['--model', 'jaxgpt', '--model_args', f'workdir={workdir}', '--batch_size', '8']
  args += ['--tasks', 'capitals_mc', '--include_path', str(tmp_path)]
  out = subprocess.run(
    [sys.executable, '-m', 'jaxgpt.lm_eval_model', *args],
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'HF_DATASETS_OFFLINE': '1'},
  )
  assert out.returncode == 0, out.stderr[-3000:]
  row = next(line for line in out.stdout.splitlines() if 'capitals_mc' in line)
  assert row.replace(' ', '').startswith('|capitals_mc|Yaml|none|0|acc|↑|1|')  # all right
