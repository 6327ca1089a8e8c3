"""Preference tuning with DPO: the loss against a direct computation, the frozen
reference, the data layouts, a synthetic preference learned (held-out reward accuracy and
generations), and the fine-tune's guarantees (any mesh, exact resume)."""

import json
import os
import random

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import finetune as finetune_configs
from jaxgpt import dpo, finetune, finetune_eval, sharding
from jaxgpt import model as model_lib
from jaxgpt import step as step_lib
from jaxgpt.data import finetune_data as fdata
from jaxgpt.errors import UserError
from tests.helpers import _WORDS, write_preference_data

# One pytest-xdist worker runs this file's tests, so that the base run (conftest) is made once.
pytestmark = pytest.mark.xdist_group('base_run')


def _config(base_run, train_path, steps, task='dpo', **finetune_fields):
  c = finetune_configs.get_config(task)
  c.train.batch_size = 8
  c.train.steps = steps
  c.loop.update(log_every=1, eval_every=1000, checkpoint_every=1000, peak_flops=1e9)
  c.optim.update(warmup_steps=5, lr=1e-3, min_lr=1e-3)
  c.eval.sample_tokens = 4
  c.finetune.update(base_workdir=base_run, train_path=train_path, num_generate=16)
  c.finetune.update(finetune_fields)
  return c


def _prepared(config, mesh_shape=(8, 1, 1)):
  """(config, run, arrays, initial params) of a DPO fine-tune, its reference added."""
  base = finetune.open_base(config.finetune)
  config = finetune.with_base_model(config, base)
  config.unlock()
  config.mesh.shape.update(dict(zip(('data', 'fsdp', 'tensor'), mesh_shape)))
  mesh = sharding.make_mesh(config.mesh)
  _, arrays, _ = finetune.prepare(config, None, base)
  run = finetune.build_run(config, mesh, base.tokenizer.vocab_size)
  with run.context():
    params = finetune.initial_params(config, run, base, 0)
    finetune.add_reference(config, run, params, arrays)
  return config, run, arrays, params, base


class Chars:
  """A tokenizer of code points: ids known without training one."""

  eod_id, pad_id, vocab_size = 1, 0, 128
  encode = staticmethod(lambda s: [ord(c) for c in s])


@pytest.mark.parametrize('smoothing', [0.0, 0.2])
def test_loss_equals_a_direct_computation_from_token_log_probs(tmp_path, smoothing):
  """dpo.loss on pairs encoded as training encodes them, against log-softmax in float64
  numpy: a freshly initialised model is as good a policy as a trained one for the formula."""
  fc = finetune_configs.get_config('dpo').finetune
  records = fdata.read_records(write_preference_data(tmp_path / 'p.jsonl', n=4))
  examples = fdata.preference_examples(records, Chars, fc)
  batch = fdata.encode_preferences(examples, 32, Chars.pad_id, 'train')
  cfg = model_lib.ModelConfig(
    vocab_size=Chars.vocab_size, seq_len=32, num_layers=2, num_heads=4, d_model=32, mlp_dim=64
  )
  model = model_lib.Transformer(cfg)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), batch['inputs'][:1, 0])['params'])
  # A reference other than the policy, so that the rewards are not all zero.
  policy = jax.jit(lambda p, b: dpo.pair_logps(model, p, b))(params, batch)
  batch['reference'] = np.asarray(policy) + np.array([[0.3, -0.2]], np.float32) * np.arange(1, 5)[
    :, None
  ].astype(np.float32)
  beta = fc.dpo.beta
  total, pairs = jax.jit(lambda p, b: dpo.loss(model, p, b, None, beta, smoothing))(params, batch)

  logits_Bx2xLxV = np.asarray(
    jax.jit(lambda p, x: model.apply({'params': p}, x))(params, batch['inputs'].reshape(8, 32))
  ).reshape(4, 2, 32, -1)
  want = []
  for i in range(4):
    logps = []
    for j in range(2):  # chosen, rejected: log-softmax of each row, response tokens summed
      logits = logits_Bx2xLxV[i, j]
      shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
      logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
      picked = logp[np.arange(len(logp)), batch['targets'][i, j]]
      mask = batch['weights'][i, j] > 0
      assert mask.sum() in (4, 3)  # 'yes' or 'no' and the end-of-document id, nothing else
      logps.append(picked[mask].sum())
    z = beta * ((logps[0] - batch['reference'][i, 0]) - (logps[1] - batch['reference'][i, 1]))
    sig = lambda x: 1 / (1 + np.exp(-x))
    want.append(-(1 - smoothing) * np.log(sig(z)) - smoothing * np.log(sig(-z)))
  assert float(pairs) == 4
  np.testing.assert_allclose(float(total), np.sum(want), rtol=1e-5)


def test_the_reference_is_the_starting_point_and_never_changes(base_run, tmp_path):
  data = write_preference_data(tmp_path / 'p.jsonl', n=48)
  config, run, arrays, params, base = _prepared(_config(base_run, data, 4, trainable='lora'))
  reference = arrays['train']['reference'].copy()
  d = config.finetune.dpo
  eval_fn = dpo.make_eval_fn(run.model, run.mesh, d.beta, d.label_smoothing)
  with run.context():
    # At the start the policy is the reference: every reward is 0 and the loss log 2.
    start = dpo.evaluate(eval_fn, params, arrays['val'], 8, run.mesh)
    assert start['chosen_reward'] == start['rejected_reward'] == 0.0
    np.testing.assert_allclose(start['loss'], np.log(2), rtol=1e-6)
    state = run.init_state(params=params)
    step = step_lib.jit_train_step(run, config)
    source = fdata.ArraySource(arrays['train'], 'pairs')
    for i in range(4):
      rows = {k: np.stack([source[8 * i + r][k] for r in range(8)]) for k in arrays['train']}
      state, _ = step(state, sharding.global_batch(rows, run.mesh))
    # The policy moved; the reference computed again from the base is what training used.
    again = {k: v for k, v in arrays['train'].items() if k != 'reference'}
    finetune.add_reference(config, run, finetune.initial_params(config, run, base, 0), {'t': again})
    logps_fn = dpo.make_logps_fn(run.model, run.mesh)
    moved = dpo.reference_logps(
      logps_fn, finetune_eval.plain_params(config, run)(state.params), again, 8, run.mesh
    )
  np.testing.assert_array_equal(again['reference'], reference)
  assert np.abs(moved - reference).max() > 1e-3


def test_both_record_layouts_and_bad_records(tmp_path):
  fc = finetune_configs.get_config('dpo').finetune
  prompt_layout = write_preference_data(tmp_path / 'a.jsonl', n=4)
  instruction_layout = write_preference_data(tmp_path / 'b.jsonl', n=4, layout='instruction')
  records = fdata.read_records(prompt_layout) + fdata.read_records(instruction_layout)
  prompts = [fdata.preference_prompt(r, fc) for r in records]
  assert prompts[0].startswith('is ') and prompts[0].endswith('?\n')
  assert prompts[4].startswith(fc.prompt_template[:40]) and '### Input:\n' in prompts[4]

  examples = fdata.preference_examples(records, Chars, fc)
  arrays = fdata.encode_preferences(examples, 400, 0, 'train')
  assert arrays['inputs'].shape == (8, 2, 400)
  # Weights on the response and its end-of-document id only: 'yes' + eod, 'no' + eod.
  for i in (0, 4):
    np.testing.assert_array_equal(arrays['weights'][i].sum(-1), [4, 3])
    start = len(Chars.encode(prompts[i])) - 1  # the first target is the response's
    assert arrays['targets'][i, 0, start] == ord('y') and arrays['weights'][i, 0, start - 1] == 0
  # Alpaca's instruction prompt leaves no room at 24 tokens: those pairs are dropped.
  assert len(fdata.encode_preferences(examples, 24, 0, 'train')['inputs']) == 4
  bad = tmp_path / 'bad.jsonl'
  bad.write_text(json.dumps({'question': 'x', 'chosen': 'a', 'rejected': 'b'}) + '\n')
  with pytest.raises(UserError, match=r"bad.jsonl:1: a preference pair needs a 'prompt' field"):
    fdata.preference_prompt(fdata.read_records(str(bad))[0], fc)
  with pytest.raises(UserError, match='every train prompt takes up all of model.seq_len=4'):
    fdata.encode_preferences(examples, 4, 0, 'train')


@pytest.mark.slow
def test_a_synthetic_preference_is_learned_after_instruction_tuning(base_run, tmp_path):
  """Instruction tuning on answers that are 'yes' or 'no' at random, then DPO preferring
  'yes': held-out reward accuracy above 0.9, and the greedy answers turn to 'yes'."""
  rng = random.Random(1)
  with open(tmp_path / 'sft.jsonl', 'w') as f:
    for _ in range(160):
      a, b = rng.sample(_WORDS, 2)
      answer = rng.choice(['yes', 'no'])
      f.write(json.dumps({'instruction': f'is {a} {b}?\n', 'output': answer}) + '\n')
  sft = _config(base_run, str(tmp_path / 'sft.jsonl'), 40, 'instruct', trainable='all')
  sft.finetune.prompt_template_no_input = '{instruction}'
  sft.optim.lr = sft.optim.min_lr = 3e-3
  finetune.train_and_evaluate(sft, str(tmp_path / 'sft'))
  merged = finetune.export(sft, str(tmp_path / 'sft'))

  pairs = write_preference_data(tmp_path / 'pairs.jsonl')
  workdir = str(tmp_path / 'dpo')
  result = finetune.train_and_evaluate(_config(merged, pairs, 40, trainable='lora'), workdir)
  assert result['val']['reward_accuracy'] > 0.9 and result['val']['pairs'] >= 10
  assert result['val']['reward_margin'] > 0
  with open(os.path.join(workdir, 'generations.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  share = lambda key, start: np.mean([r[key].startswith(start) for r in rows])
  assert share('before', 'n') > 0.2  # the starting point answers both ways ...
  assert share('after', 'y') >= 0.9 and share('after', 'n') == 0  # ... the tuned one 'yes'
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    evals = [r for r in map(json.loads, f) if r['kind'] == 'eval']
  assert evals and {'reward_accuracy', 'reward_margin', 'loss'} <= set(evals[-1])


@pytest.mark.slow
def test_dpo_agrees_across_meshes_and_resumes_exactly(base_run, tmp_path):
  data = write_preference_data(tmp_path / 'p.jsonl', n=64)

  def run(workdir, mesh, **loop_fields):
    c = _config(base_run, data, 6, trainable='all', num_generate=2)
    c.mesh.shape.data, c.mesh.shape.fsdp, c.mesh.shape.tensor = mesh
    c.loop.update(loop_fields)
    return finetune.train_and_evaluate(c, str(tmp_path / workdir))

  def losses(workdir):
    with open(tmp_path / workdir / 'metrics.jsonl') as f:
      return [r['loss'] for r in map(json.loads, f) if r['kind'] == 'train']

  run('dp', (8, 1, 1))
  run('sharded', (2, 2, 2))
  np.testing.assert_allclose(losses('sharded'), losses('dp'), atol=1e-5)
  assert run('halves', (2, 2, 2), run_steps=3) == {'step': 3}
  run('halves', (2, 2, 2))  # resumes from step 3
  assert losses('halves') == losses('sharded')


def test_bad_dpo_settings_are_refused_before_the_data(base_run, tmp_path):
  c = _config(base_run, str(tmp_path / 'missing.jsonl'), 4)
  c.finetune.dpo.beta = 0.0
  with pytest.raises(UserError, match=r'finetune.dpo.beta=0.0 must be positive'):
    finetune.train_and_evaluate(c, str(tmp_path / 'run'))
  c.finetune.dpo.beta, c.finetune.trainable = 0.1, 'head'
  with pytest.raises(UserError, match='finetune.trainable=head is for classification; a dpo'):
    finetune.train_and_evaluate(c, str(tmp_path / 'run'))
