"""Fine-tuning a tiny pretrained run: classification, instructions, LoRA export, resume."""

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import finetune as finetune_configs
from jaxgpt import checkpoint as checkpoint_lib
from jaxgpt import finetune, inference, lora, runstate
from jaxgpt import model as model_lib
from tests.helpers import tiny_config, write_classification_data, write_instruction_data

# One pytest-xdist worker runs this file's tests, so that the base run (conftest) is made once.
pytestmark = pytest.mark.xdist_group('base_run')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(task, base_run, train_path, steps, **finetune_fields):
  c = finetune_configs.get_config(task)
  c.train.batch_size = 16 if task == 'classify' else 8
  c.train.steps = steps
  c.loop.log_every = 5
  c.loop.eval_every = 1000
  c.loop.checkpoint_every = 1000
  c.loop.peak_flops = 1e9
  c.optim.lr = 3e-3
  c.finetune.base_workdir = base_run
  c.finetune.train_path = train_path
  c.finetune.update(finetune_fields)
  return c


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r['loss'] for r in map(json.loads, f) if r['kind'] == 'train']


def test_lora_classifier_reaches_95_percent_and_reports_each_split(base_run, tmp_path):
  data = write_classification_data(tmp_path / 'reviews.jsonl')
  workdir = str(tmp_path / 'run')
  report = finetune.train_and_evaluate(_config('classify', base_run, data, 100), workdir)
  assert report['labels'] == ['neg', 'pos']
  assert report['test']['accuracy'] >= 0.95 and report['test']['examples'] > 10
  assert set(report['test']['per_class']['pos']) == {'precision', 'recall', 'f1', 'support'}
  assert np.sum(report['test']['confusion']) == report['test']['examples']
  for split in ('train', 'val', 'test'):
    assert os.path.getsize(os.path.join(workdir, f'confusion-{split}.png')) > 1000
  with open(os.path.join(workdir, 'labels.json')) as f:
    assert json.load(f) == ['neg', 'pos']
  # Only the adapters and the head were saved: the checkpoint is the fine-tune's own.
  with open(os.path.join(workdir, 'checkpoints', '100', 'state', '_METADATA')) as f:
    paths = [ast.literal_eval(k) for k in json.load(f)['tree_metadata']]
  params = [p[1:] for p in paths if p[0] == 'params']
  assert params and all(p[-1] in ('lora_a', 'lora_b') or p[0] == 'head' for p in params)
  assert ('head', 'kernel') in params
  texts = tmp_path / 'new.txt'
  texts.write_text('alpha beta gamma alpha\nleft right key size\n')
  predictions = finetune.predict(_config('classify', base_run, data, 100), workdir, str(texts))
  assert [p['label'] for p in predictions] == ['pos', 'neg']


def test_fine_tunes_agree_across_meshes_and_resume_exactly(base_run, tmp_path):
  data = write_classification_data(tmp_path / 'd.jsonl', n=120)

  def run(workdir, mesh, **loop_fields):
    c = _config('classify', base_run, data, 8, trainable='all', dropout=0.0)
    c.loop.log_every = 1
    c.mesh.shape.data, c.mesh.shape.fsdp, c.mesh.shape.tensor = mesh
    c.loop.update(loop_fields)
    return finetune.train_and_evaluate(c, str(tmp_path / workdir))

  run('dp', (8, 1, 1))
  run('sharded', (2, 2, 2))
  np.testing.assert_allclose(_losses(tmp_path / 'sharded'), _losses(tmp_path / 'dp'), atol=1e-5)
  assert run('halves', (2, 2, 2), run_steps=4) == {'step': 4}
  run('halves', (2, 2, 2))  # resumes from step 4
  assert _losses(tmp_path / 'halves') == _losses(tmp_path / 'sharded')


def test_instruction_lora_run_writes_responses_and_exports_a_merged_model(base_run, tmp_path):
  data = write_instruction_data(tmp_path / 'alpaca.jsonl')
  workdir = str(tmp_path / 'run')
  c = _config(
    'instruct',
    base_run,
    data,
    12,
    packed=True,
    num_generate=4,
    prompt_template='{instruction}: {input}\n',
    prompt_template_no_input='{instruction}\n',
  )
  c.eval.sample_tokens = 6
  result = finetune.train_and_evaluate(c, workdir)
  assert result['responses'] == 4 and np.isfinite(result['val']['loss'])
  with open(os.path.join(workdir, 'responses.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 4 and all(r['reference'] and isinstance(r['response'], str) for r in rows)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert any(r['kind'] == 'eval' for r in map(json.loads, f))  # held-out loss in training

  merged_dir = finetune.export(c, workdir)
  # The merged plain model's logits equal the adapted model's.
  base = finetune.open_base(c.finetune)
  tuned = finetune.with_base_model(c, base)
  s, params, _ = finetune._restore_finetuned(tuned, workdir, base)
  tokens = np.asarray(base.tokenizer.encode('join with a dash: alpha beta\n')[:16])[None]
  with lora.adapters(lora.of_finetune(tuned.finetune)):
    adapted = s.model.apply({'params': params}, tokens)
  plain_cfg = model_lib.ModelConfig.from_config(tuned, base.tokenizer.vocab_size)
  plain = runstate.pretraining(tuned, plain_cfg, s.mesh)
  ckpt = checkpoint_lib.Checkpointer(merged_dir, async_save=False)
  merged = ckpt.restore_params(ckpt.latest_step(), plain.abstract_state.params)
  np.testing.assert_allclose(plain.model.apply({'params': merged}, tokens), adapted, atol=1e-5)
  # ... and it is a plain checkpoint: the pretraining modes read it.
  base_config = tiny_config(c.finetune.base_workdir)
  samples = inference.sample_checkpoint(base_config, merged_dir, ['next after alpha\n'])
  assert len(samples) == 1 and samples[0]['new_tokens'] > 0


@pytest.mark.slow
def test_run_py_trains_and_predicts_a_classifier(base_run, tmp_path):
  data = write_classification_data(tmp_path / 'd.jsonl')
  texts = tmp_path / 'new.txt'
  texts.write_text('alpha beta\nkey size limit\n')
  common = [
    sys.executable,
    'run.py',
    '--config=experiments/finetune_classify.py',
    f'--workdir={tmp_path / "run"}',
    f'--config.finetune.base_workdir={base_run}',
    f'--config.finetune.train_path={data}',
    '--config.train.steps=60',
    '--config.loop.peak_flops=1e9',
    '--config.optim.lr=0.003',
  ]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_NUM_CPU_DEVICES': '2'}
  proc = subprocess.run(common, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'test: accuracy' in proc.stderr
  proc = subprocess.run(
    common + ['--mode=predict', f'--input_file={texts}'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  labels = [json.loads(line)['label'] for line in proc.stdout.splitlines() if line.startswith('{')]
  assert labels == ['pos', 'neg']
  fresh = [
    f'--workdir={tmp_path / "new"}' if a.startswith('--workdir=') else a for a in common[:-3]
  ]
  bad = subprocess.run(
    fresh + ['--config.finetune.train_path=/nonexistent.jsonl'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert bad.returncode == 2 and 'data file /nonexistent.jsonl does not exist' in bad.stderr
