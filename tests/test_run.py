"""The whole pipeline, as a user runs it."""

import json
import os

import pytest

from jaxgpt import checkpoint
from jaxgpt import model as model_lib
from jaxgpt import train
from jaxgpt.errors import UserError
from configs import models
from experiments import gpt2, gpt3, llama
from tests.helpers import tiny_config


@pytest.mark.slow
def test_train_and_evaluate_writes_every_record(corpus_dir, tmp_path):
  config = tiny_config(
    corpus_dir, steps=8, log_every=2, eval_every=4, checkpoint_every=4, keep_checkpoints=1
  )
  config.eval.num_samples, config.eval.sample_tokens = 2, 6
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['step'] == 8 and result['bits_per_byte'] > 0
  assert result['perplexity'] == pytest.approx(2.718281828 ** result['loss'], rel=1e-6)
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in records if r['kind'] == 'train'] == [2, 4, 6, 8]
  assert [r['step'] for r in records if r['kind'] == 'eval'] == [4, 8]
  assert {'loss', 'lr', 'grad_norm', 'tokens_per_s', 'mfu', 'eta_s'} <= set(records[0])
  assert os.listdir(tmp_path / 'tensorboard')
  assert (tmp_path / 'loss.png').read_bytes()[:4] == b'\x89PNG'
  samples = (tmp_path / 'samples.txt').read_text()
  assert samples.count('--- sample') == 2
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert ckpt.manager.all_steps() == [8]  # keep_checkpoints=1
  assert ckpt.restore_json(8, 'config')['train']['steps'] == 8
  assert (
    ckpt.restore_json(8, 'tokenizer')['sha256']
    == json.load(open(tmp_path / 'data' / 'manifest.json'))['tokenizer']['sha256']
  )
  ckpt.close()


@pytest.mark.parametrize(
  'family,preset', [(f, p) for f in ('gpt2', 'gpt3') for p in models.PUBLISHED[f]]
)
def test_presets_match_published_sizes(family, preset):
  experiment = {'gpt2': gpt2, 'gpt3': gpt3}[family]
  cfg = model_lib.ModelConfig.from_config(experiment.get_config(preset))
  assert cfg.vocab_size == 50304 and cfg.seq_len == (1024 if family == 'gpt2' else 2048)
  assert abs(model_lib.param_count(cfg) / models.PUBLISHED[family][preset] - 1) < 0.02


@pytest.mark.parametrize(
  'preset, released',
  # The released checkpoints' weight counts (their Hugging Face configs, counted).
  [('150m', 134_105_856), ('1b', 1_100_048_384), ('7b', 6_738_415_616)],
)
def test_llama_presets_match_published_sizes(preset, released):
  cfg = model_lib.ModelConfig.from_config(llama.get_config(preset))
  assert cfg.vocab_size == 32000 and not cfg.tie_embeddings and not cfg.use_bias
  assert (cfg.position, cfg.norm, cfg.mlp) == ('rope', 'rmsnorm', 'swiglu')
  assert model_lib.param_count(cfg) == released
  assert abs(model_lib.param_count(cfg) / models.PUBLISHED['llama'][preset] - 1) < 0.01


def test_unknown_preset_names_the_choices():
  with pytest.raises(UserError, match="unknown GPT-3 preset '13b'; choose one of 125m, 350m"):
    gpt3.get_config('13b')
