"""Hugging Face GPT-2 in and out: `--mode=import` and `--mode=export_hf`.

Import reads a local GPT-2 checkpoint directory (config.json with model.safetensors, its
index, or pytorch_model.bin; vocab.json + merges.txt) onto this machine's mesh and writes
a jaxgpt checkpoint at step 0, config and tokenizer included, with the params alone (no
optimizer state, no data position): evaluation, sampling, fine-tunes and further
pretraining start from it as from a run of our own.
Export writes a run's params (an instruction fine-tune's with its adapters merged) as a
directory that transformers' GPT2LMHeadModel and GPT2TokenizerFast load.
"""

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections

from jaxgpt import checkpoint as checkpoint_lib
from jaxgpt import hf_gpt2
from jaxgpt import inference
from jaxgpt import model as model_lib
from jaxgpt import runstate
from jaxgpt import sharding
from jaxgpt import workdir as workdir_lib
from jaxgpt.data import bpe
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')

# Hugging Face's names for GPT-2's tokenizer files, then OpenAI's.
TOKENIZER_FILES = (('vocab.json', 'merges.txt'), ('encoder.json', 'vocab.bpe'))


def imported_config(config, hf_path: str, hf: dict):
  """config with the model of config.json and GPT-2's tokenizer from the checkpoint's files
  (or data.tokenizer's paths when the directory has none)."""
  config = config.copy_and_resolve_references()
  config.unlock()
  config.model.update(hf_gpt2.model_fields(hf))
  t = config.data.tokenizer
  found = next(
    (
      (os.path.join(hf_path, v), os.path.join(hf_path, m))
      for v, m in TOKENIZER_FILES
      if os.path.isfile(os.path.join(hf_path, v)) and os.path.isfile(os.path.join(hf_path, m))
    ),
    None,
  )
  if found is None and not (t.vocab_path and t.merges_path):
    raise UserError(
      f'--hf_path={hf_path} has no vocab.json + merges.txt (or encoder.json + vocab.bpe); '
      'copy them there or name them with --config.data.tokenizer.vocab_path and merges_path'
    )
  t.kind = 'gpt2'
  if found:
    t.vocab_path, t.merges_path = (os.path.abspath(p) for p in found)
  t.vocab_size = hf['vocab_size']
  config.lock()
  return config


def import_hf(config, workdir: str, hf_path: str, devices=None) -> str:
  """Writes the GPT-2 checkpoint in `hf_path` as step 0 of a run in workdir, its params
  placed on config.mesh over `devices` (all by default)."""
  hf = hf_gpt2.read_config(hf_path)
  config = imported_config(config, hf_path, hf)
  tokenizer = bpe.from_files(config.data.tokenizer.vocab_path, config.data.tokenizer.merges_path)
  if tokenizer.vocab_size > hf['vocab_size']:
    raise UserError(
      f'the tokenizer has {tokenizer.vocab_size} ids but config.json a vocab_size of '
      f"{hf['vocab_size']}: the files are not this checkpoint's"
    )
  weights = hf_gpt2.Weights(hf_path)
  mesh = sharding.make_mesh(config.mesh, devices)
  runstate.check_config(config, mesh)
  model_cfg = model_lib.ModelConfig.from_config(config, tokenizer.vocab_size)
  run = runstate.pretraining(config, model_cfg, mesh)
  with workdir_lib.owned(workdir, jax.process_index() == 0):
    ckpt = checkpoint_lib.Checkpointer(workdir, async_save=False)
    if ckpt.latest_step() is not None:
      raise UserError(
        f'--workdir={workdir} already holds a run (checkpoint step {ckpt.latest_step()}); '
        'import into a new workdir'
      )
    params = _on_mesh(hf_gpt2.to_params(weights, model_cfg), run.abstract_state.params)
    # Params alone: the optimizer's moments at step 0 are zeros, twice the model's size in
    # memory; training makes them when it starts (train._restore_state).
    state = {'step': jnp.zeros((), jnp.int32), 'params': params}
    ckpt.save(0, state, None, config, tokenizer, force=True)
    ckpt.wait()
    ckpt.close()
  log.info(
    'imported %s (%s params, vocabulary %d padded to %d) into %s at step 0',
    hf_path,
    f'{model_lib.param_count(model_cfg):,}',
    tokenizer.vocab_size,
    model_cfg.vocab_size,
    workdir,
  )
  return workdir


def _on_mesh(readers: dict, abstract: dict):
  """Params onto the shardings of `abstract`, read one leaf at a time (hf_gpt2.to_params),
  each process giving its own shards."""
  flat_abstract = dict(_leaves(abstract))
  if dict(_leaves(readers)).keys() != flat_abstract.keys():
    differ = sorted(dict(_leaves(readers)).keys() ^ flat_abstract.keys())
    raise UserError(f'the converted GPT-2 params do not fit the model: {differ[:5]}')

  def put(path, a):
    x = _dig(readers, path)()
    if x.shape != a.shape:
      raise UserError(
        f'GPT-2 param {"/".join(path)} has shape {x.shape}, the model wants {a.shape}: '
        'does config.json describe these weights?'
      )
    return jax.make_array_from_callback(x.shape, a.sharding, lambda i: x[i].astype(a.dtype))

  return _map_with_path(put, abstract)


def _dig(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _leaves(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _leaves(v, (*prefix, k))
    else:
      yield '/'.join((*prefix, k)), v


def _map_with_path(fn, tree, prefix=()):
  return {
    k: _map_with_path(fn, v, (*prefix, k)) if isinstance(v, dict) else fn((*prefix, k), v)
    for k, v in tree.items()
  }


def export_hf(config, workdir: str, out_dir: str, step: int | None = None) -> str:
  """Writes the run in workdir (latest or `step`) as a Hugging Face GPT-2 directory."""
  if not out_dir:
    raise UserError('--mode=export_hf needs --out=DIR, the directory to write')
  if config.train.kind == 'classify':
    raise UserError(
      '--mode=export_hf writes a language model (GPT2LMHeadModel): a classification '
      "fine-tune's head has no place in one; export its base run instead"
    )
  if config.train.kind in ('instruct', 'dpo'):  # adapters merged into a plain checkpoint first
    from jaxgpt import finetune

    workdir = finetune.export(config, workdir)
    ckpt = checkpoint_lib.Checkpointer(workdir, async_save=False)
    config = ml_collections.ConfigDict(ckpt.restore_json(ckpt.latest_step(), 'config'))
    ckpt.close()
    step = None
  config = config.copy_and_resolve_references()
  config.unlock()
  config.execution.scan_layers = False  # the restore unrolls scanned layers
  config.lock()
  config, run, params, tokenizer, step = inference.restore(config, workdir, step)
  model_cfg = run.model.cfg
  if model_cfg.parametrization != 'sp':
    raise UserError(
      f"--mode=export_hf: this run is model.parametrization='{model_cfg.parametrization}', "
      "whose logit and attention multipliers GPT-2's layout has no place for; export an 'sp' run"
    )
  gpt2 = {'position': 'learned', 'norm': 'layernorm', 'mlp': 'gelu', 'qk_norm': False}
  differ = [
    f'model.{k}={getattr(model_cfg, k)!r}' for k, v in gpt2.items() if getattr(model_cfg, k) != v
  ]
  if model_cfg.kv_heads != model_cfg.num_heads:
    differ.append(f'model.num_kv_heads={model_cfg.num_kv_heads}')
  if differ:
    raise UserError(
      f"--mode=export_hf writes GPT-2's architecture, and this run has {', '.join(differ)}: "
      'only runs with the default decoder options export'
    )
  if jax.process_count() > 1:  # every process's shards, gathered
    from jax.experimental import multihost_utils

    params = multihost_utils.process_allgather(params, tiled=True)
  state_dict = hf_gpt2.from_params(jax.device_get(params), model_cfg)
  if jax.process_index() == 0:
    _write(
      out_dir, state_dict, hf_gpt2.hf_config(model_cfg, tokenizer.eod_id), tokenizer, model_cfg
    )
  log.info('wrote step %d of %s as a Hugging Face GPT-2 model in %s', step, workdir, out_dir)
  return out_dir


def _write(out_dir, state_dict, hf_config, tokenizer, model_cfg):
  """All files into OUT.tmp, then renamed: a killed export leaves no half directory."""
  from safetensors.numpy import save_file

  tmp = out_dir.rstrip('/') + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  save_file(state_dict, os.path.join(tmp, 'model.safetensors'), metadata={'format': 'pt'})
  files = {'config.json': json.dumps(hf_config, indent=2)}
  if tokenizer.kind == 'gpt2':
    files.update(tokenizer.hf_files())
    eot = bpe.EOT
    files['tokenizer_config.json'] = json.dumps(
      {
        'tokenizer_class': 'GPT2Tokenizer',
        'model_max_length': model_cfg.seq_len,
        'bos_token': eot,
        'eos_token': eot,
        'unk_token': eot,
        'add_prefix_space': False,
      },
      indent=2,
    )
  else:
    # SentencePiece with our escapes has no Hugging Face tokenizer class: the model file
    # goes along for jaxgpt.data.tokenizer.load, and the weights load without it.
    log.warning(
      'the run has a SentencePiece tokenizer: transformers loads the model, but '
      'not its tokenizer (tokenizer.model is written for jaxgpt)'
    )
    with open(os.path.join(tmp, 'tokenizer.model'), 'wb') as f:
      f.write(tokenizer.proto)
  for name, text in files.items():
    with open(os.path.join(tmp, name), 'w', encoding='utf-8') as f:
      f.write(text)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
  total = sum(v.nbytes for v in state_dict.values())
  log.info('%s: %d tensors, %.1f MB', out_dir, len(state_dict), total / 1e6)
