"""GPT-2 in and out: a random transformers GPT2LMHeadModel imported (logits equal on 1, fsdp 8
and tensor 8 devices), exported back, fine-tuned and trained on; GPT-2's tokenizer against
GPT2TokenizerFast."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from configs import mesh as mesh_presets
from experiments import gpt2
from jaxgpt import checkpoint as checkpoint_lib
from jaxgpt import faults, finetune, inference, interop, model as model_lib, train
from jaxgpt.data import bpe
from jaxgpt.data import shards as shards_lib
from jaxgpt.data import tokenizer as tokenizer_lib
from jaxgpt.data.synthetic import write_gpt2_files
from jaxgpt.errors import UserError
from tests.helpers import run_py, tiny_config, write_classification_data

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

MIXED = (
  'def f(x):\n    return x  +  1\n\n\n\t# tab\r\nclass A:  pass\n'
  "it's they'll we've I'm  spaces   and\u00a0nbsp, café naïve 日本語 ℕ→∞ 🙂👍🏽 ٣٤٥ 12345\n"
  '<b>x</b> {"k": [1, 2.5e-3]}   \n  \n trailing  '
)


def _texts():
  lines = open(os.path.join(os.path.dirname(__file__), 'helpers.py'), encoding='utf-8').read()
  return [lines, MIXED * 3, 'the capital of france is paris. ' * 20]


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  """A GPT-2 checkpoint directory as transformers writes it: a small random model (weights
  drawn wider than GPT-2's init so that logits are far from zero), its tokenizer files."""
  directory = str(tmp_path_factory.mktemp('gpt2'))
  files = write_gpt2_files(_texts(), directory, merges=500)
  vocab = len(json.load(open(files['vocab.json'])))
  cfg = transformers.GPT2Config(
    vocab_size=vocab,
    n_positions=64,
    n_embd=64,
    n_layer=2,
    n_head=8,
    layer_norm_epsilon=1e-5,
    bos_token_id=vocab - 1,
    eos_token_id=vocab - 1,
  )
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * (0.1 if 'ln' not in name else 0.2) + ('ln' in name) * 1.0)
  model.save_pretrained(directory)
  return directory


def _tokens(directory, rows=8, length=48):
  tok = bpe.from_files(os.path.join(directory, 'vocab.json'), os.path.join(directory, 'merges.txt'))
  ids = tok.encode(' '.join(_texts()))
  return np.asarray([ids[i * length : (i + 1) * length] for i in range(rows)], np.int32)


def _torch_logits(directory, tokens):
  model = transformers.GPT2LMHeadModel.from_pretrained(directory, dtype=torch.float32).eval()
  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


def _our_logits(config, workdir, tokens, devices=None):
  config, run, params, tokenizer, _ = inference.restore(config, workdir, devices=devices)
  with run.context():
    logits = jax.jit(lambda p, x: run.model.apply({'params': p}, x))(params, tokens)
  return np.asarray(logits), run, tokenizer


def _import(corpus_dir, hf_dir, workdir, mesh='dp', devices=None, **execution):
  c = tiny_config(corpus_dir, **execution)
  c.mesh = mesh_presets.get(mesh)
  interop.import_hf(c, workdir, hf_dir, devices)
  return c


@pytest.mark.parametrize(
  'mesh, n_devices, scan', [('dp', 1, False), ('fsdp', 8, True), ('tp', 8, False)]
)
def test_imported_logits_equal_transformers(corpus_dir, hf_dir, tmp_path, mesh, n_devices, scan):
  devices = jax.devices()[:n_devices]
  workdir = str(tmp_path / 'run')
  c = _import(corpus_dir, hf_dir, workdir, mesh, devices, scan_layers=scan)
  tokens = _tokens(hf_dir)
  want = _torch_logits(hf_dir, tokens)
  got, run, tokenizer = _our_logits(c, workdir, tokens, devices)
  vocab = want.shape[-1]
  assert run.mesh.size == n_devices and run.model.cfg.vocab_size == 768 > vocab
  assert run.model.cfg.valid_vocab == vocab == tokenizer.vocab_size
  diff = np.abs(got[..., :vocab] - want).max()
  print(f'max abs logit difference, {mesh} on {n_devices} devices: {diff:.2e}')
  assert diff < 1e-4 and np.abs(want).max() > 1  # logits of size, not all near zero
  assert np.all(got[..., vocab:] == model_lib.PADDING_LOGIT)  # padding is never predicted


def test_a_pytorch_bin_imports_the_same(corpus_dir, hf_dir, tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir)
  torch.save(model.state_dict(), bin_dir / 'pytorch_model.bin')
  for name in ('config.json', 'vocab.json', 'merges.txt'):
    (bin_dir / name).write_bytes(open(os.path.join(hf_dir, name), 'rb').read())
  tokens = _tokens(hf_dir)
  c = _import(corpus_dir, str(bin_dir), str(tmp_path / 'a'))
  from_bin, _, _ = _our_logits(c, str(tmp_path / 'a'), tokens)
  c = _import(corpus_dir, hf_dir, str(tmp_path / 'b'))
  from_safetensors, _, _ = _our_logits(c, str(tmp_path / 'b'), tokens)
  np.testing.assert_array_equal(from_bin, from_safetensors)


def test_export_reloads_in_transformers_with_equal_logits_and_tokenizer(
  corpus_dir, hf_dir, tmp_path
):
  workdir, out = str(tmp_path / 'run'), str(tmp_path / 'hf')
  c = _import(corpus_dir, hf_dir, workdir, 'fsdp', scan_layers=True)
  interop.export_hf(c, workdir, out)
  tokens = _tokens(hf_dir)
  exported, original = _torch_logits(out, tokens), _torch_logits(hf_dir, tokens)
  print(
    f'max abs logit difference, exported against original: {np.abs(exported - original).max():.2e}'
  )
  np.testing.assert_allclose(exported, original, atol=1e-5)
  hf_tok = transformers.GPT2TokenizerFast.from_pretrained(out)
  _, _, tokenizer = _our_logits(c, workdir, tokens[:1])
  assert hf_tok(MIXED)['input_ids'] == tokenizer.encode(MIXED)
  assert hf_tok.eos_token_id == tokenizer.eod_id
  assert not os.path.exists(out + '.tmp')


def test_a_fine_tune_and_further_pretraining_start_from_the_import(corpus_dir, hf_dir, tmp_path):
  workdir = str(tmp_path / 'gpt2')
  c = _import(corpus_dir, hf_dir, workdir)
  tokens = _tokens(hf_dir)
  imported, _, _ = _our_logits(c, workdir, tokens)
  ckpt = checkpoint_lib.Checkpointer(workdir)
  assert not ckpt.has_optimizer(0) and not ckpt.has_data(0)  # params alone: no zero moments
  ckpt.close()
  # Further pretraining: the config the import wrote resumes from step 0 and trains on.
  config = interop.imported_config(c, hf_dir, json.load(open(os.path.join(hf_dir, 'config.json'))))
  result = train.train_and_evaluate(config, workdir)
  assert result['step'] == config.train.steps == 6 and np.isfinite(result['loss'])
  trained, _, _ = _our_logits(config, workdir, tokens)
  assert not np.allclose(trained, imported)
  # A classification fine-tune from the imported run: its loss falls.
  data = write_classification_data(tmp_path / 'reviews.jsonl', n=200)
  from configs import finetune as finetune_configs

  f = finetune_configs.get_config('classify')
  f.train.batch_size, f.train.steps = 16, 30
  f.loop.log_every, f.loop.eval_every, f.loop.peak_flops = 5, 1000, 1e9
  f.optim.lr = 3e-3
  f.finetune.base_workdir, f.finetune.base_step = workdir, 0
  f.finetune.train_path = data
  tuned = str(tmp_path / 'classify')
  report = finetune.train_and_evaluate(f, tuned)
  with open(os.path.join(tuned, 'metrics.jsonl')) as fh:
    losses = [r['loss'] for r in map(json.loads, fh) if r['kind'] == 'train']
  assert losses[-1] < 0.7 * losses[0] and report['test']['accuracy'] > 0.6


def test_the_gpt2_experiment_resumes_an_import_of_gpt2_124m(tmp_path):
  """The import of GPT-2 124M's own config.json (as on the hub) under experiments/gpt2.py
  differs from that experiment only where a resume may differ: training continues with the
  same command and the tokenizer files' paths."""
  hub_124m = {
    'activation_function': 'gelu_new',
    'architectures': ['GPT2LMHeadModel'],
    'layer_norm_epsilon': 1e-05,
    'model_type': 'gpt2',
    'n_ctx': 1024,
    'n_embd': 768,
    'n_head': 12,
    'n_layer': 12,
    'n_positions': 1024,
    'vocab_size': 50257,
  }
  for name in ('vocab.json', 'merges.txt'):
    (tmp_path / name).write_text('{}')
  config = gpt2.get_config('124m')
  imported = interop.imported_config(config, str(tmp_path), hub_124m)
  faults.check_resumable(config, json.loads(imported.to_json()), 'runs/gpt2-124m')
  assert imported.model.to_dict() == config.model.to_dict()
  assert imported.data.tokenizer.vocab_path == str(tmp_path / 'vocab.json')


@pytest.mark.parametrize('names', [('encoder.json', 'vocab.bpe'), ('vocab.json', 'merges.txt')])
def test_gpt2_tokenizer_equals_gpt2_tokenizer_fast(hf_dir, names):
  ours = bpe.from_files(*(os.path.join(hf_dir, n) for n in names))
  theirs = transformers.GPT2TokenizerFast.from_pretrained(hf_dir)
  texts = [MIXED, *_texts(), '   leading', 'x' * 300, '\n\n\n', '']
  for text in texts:
    ids = ours.encode(text)
    assert ids == theirs(text)['input_ids'], text
    assert ours.decode(ids) == text  # exact round trip
  assert ours.encode_batch(texts) == [ours.encode(t) for t in texts]
  assert ours.eod_id == ours.pad_id == theirs.eos_token_id == ours.vocab_size - 1
  # A literal end-of-text marker in a document is text, not a document boundary.
  assert ours.eod_id not in ours.encode('a <|endoftext|> b')
  lengths = ours.byte_lengths(ours.vocab_size + 11)
  assert lengths[ours.eod_id] == 0 and not lengths[ours.vocab_size :].any()
  ids = ours.encode(MIXED)
  assert lengths[ids].sum() == len(MIXED.encode('utf-8'))
  # Saved and loaded as every tokenizer is (data directory, checkpoints).
  path = os.path.join(hf_dir, 'saved.tokenizer')
  ours.save(path)
  again = tokenizer_lib.load(path)
  assert again.kind == 'gpt2' and again.sha256 == ours.sha256 and again.encode(MIXED) == ids


def test_gpt2_tokenizer_files_that_do_not_fit_are_named(hf_dir, tmp_path):
  with pytest.raises(UserError, match='vocab_path'):
    bpe.from_files(str(tmp_path / 'nope.json'), os.path.join(hf_dir, 'merges.txt'))
  shuffled = json.load(open(os.path.join(hf_dir, 'vocab.json')))
  keys = list(shuffled)
  shuffled[keys[300]], shuffled[keys[301]] = shuffled[keys[301]], shuffled[keys[300]]
  (tmp_path / 'vocab.json').write_text(json.dumps(shuffled))
  with pytest.raises(UserError, match="GPT-2's layout"):
    bpe.from_files(str(tmp_path / 'vocab.json'), os.path.join(hf_dir, 'merges.txt'))


def test_run_py_imports_and_names_a_missing_hf_path(corpus_dir, hf_dir, tmp_path):
  args = [f'--config=tests/tiny_experiment.py:{corpus_dir}']
  out = run_py(*args, f'--workdir={tmp_path / "a"}', '--mode=import')
  assert out.returncode == 2 and out.stderr.strip().startswith('error: --mode=import needs')
  out = run_py(*args, f'--workdir={tmp_path / "b"}', '--mode=import', f'--hf_path={hf_dir}')
  assert out.returncode == 0, out.stderr[-2000:]
  out = run_py(*args, f'--workdir={tmp_path / "b"}', '--mode=import', f'--hf_path={hf_dir}')
  assert out.returncode == 2 and 'already holds a run' in out.stderr
  out = run_py(*args, f'--workdir={tmp_path / "b"}', '--mode=export_hf', f'--out={tmp_path / "x"}')
  assert out.returncode == 0 and os.path.isfile(tmp_path / 'x' / 'model.safetensors')
  out = run_py(*args, f'--workdir={tmp_path / "c"}', '--mode=import', f'--hf_path={tmp_path}')
  assert out.returncode == 2 and 'has no config.json' in out.stderr


def test_an_instruction_lora_fine_tune_exports_with_its_adapters_merged(
  corpus_dir, hf_dir, tmp_path
):
  from configs import finetune as finetune_configs
  from jaxgpt import lora
  from tests.helpers import write_instruction_data

  workdir, tuned, out = (str(tmp_path / n) for n in ('gpt2', 'instruct', 'hf'))
  _import(corpus_dir, hf_dir, workdir)
  f = finetune_configs.get_config('instruct')
  f.train.batch_size, f.train.steps = 8, 4
  f.loop.eval_every, f.loop.peak_flops = 1000, 1e9
  f.optim.lr, f.optim.warmup_steps = 1e-2, 1  # adapters that move the logits in 4 steps
  f.finetune.base_workdir, f.finetune.train_path = (
    workdir,
    write_instruction_data(tmp_path / 'alpaca.jsonl', n=64),
  )
  f.finetune.num_generate = 0
  f.finetune.prompt_template = '{instruction}: {input}\n'
  f.finetune.prompt_template_no_input = '{instruction}\n'
  finetune.train_and_evaluate(f, tuned)
  interop.export_hf(f, tuned, out)
  base = finetune.open_base(f.finetune)
  config = finetune.with_base_model(f, base)
  run, params, _ = finetune._restore_finetuned(config, tuned, base)
  tokens = _tokens(hf_dir)
  with lora.adapters(lora.of_finetune(config.finetune)):
    adapted = np.asarray(run.model.apply({'params': params}, tokens))
  vocab = base.tokenizer.vocab_size
  exported = _torch_logits(out, tokens)
  np.testing.assert_allclose(exported, adapted[..., :vocab], atol=1e-4)
  assert np.abs(exported - _torch_logits(hf_dir, tokens)).max() > 1e-3  # the tuning shows


def test_a_run_prepares_and_trains_with_gpt2s_tokenizer(corpus_dir, hf_dir, tmp_path):
  c = tiny_config(corpus_dir, steps=2)
  c.data.tokenizer.kind = 'gpt2'
  with pytest.raises(UserError, match='needs data.tokenizer.vocab_path'):
    train.train_and_evaluate(c, str(tmp_path / 'a'))
  c.data.tokenizer.vocab_path = os.path.join(hf_dir, 'encoder.json')
  c.data.tokenizer.merges_path = os.path.join(hf_dir, 'vocab.bpe')
  workdir = str(tmp_path / 'b')
  result = train.train_and_evaluate(c, workdir)
  assert result['step'] == 2 and np.isfinite(result['loss'])
  with open(os.path.join(workdir, 'data', 'manifest.json')) as f:
    manifest = json.load(f)
  tok = tokenizer_lib.load(os.path.join(workdir, 'data', 'tokenizer.model'))
  assert tok.kind == 'gpt2' and manifest['tokenizer']['sha256'] == tok.sha256
  # The store holds documents' GPT-2 ids, each followed by <|endoftext|>.
  texts = {open(os.path.join(corpus_dir, f)).read() for f in os.listdir(corpus_dir)}
  shards = glob.glob(os.path.join(workdir, 'data', 'shards', '*', '*.bin'))
  ids = np.concatenate([np.fromfile(p, shards_lib.token_dtype(tok.vocab_size)) for p in shards])
  ends = np.flatnonzero(ids == tok.eod_id)
  docs = [tok.decode(d[:-1]) for d in np.split(ids, ends + 1)[:-1]]
  assert len(docs) > 20 and all(d.endswith('\n') and d in texts for d in docs)
