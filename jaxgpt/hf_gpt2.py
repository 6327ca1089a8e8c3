"""Hugging Face GPT-2 checkpoints <-> jaxgpt params, in numpy.

What GPT-2 does differently from this codebase, and how it is bridged:
  * Conv1D layers keep kernels as (in, out), as our Dense does: no transpose.
  * `c_attn` fuses query, key and value as (D, 3D) columns [q | k | v], each heads-major;
    our `qkv` kernel is (D, H, 3, K), heads first, so it is reshaped (D, 3, H, K) and
    transposed; `c_proj`'s (D, D) rows become our (H, K, D) `out`.
  * `lm_head` is tied to `wte` (tie_word_embeddings), as our tied output table.
  * The activation is GELU's tanh form (`gelu_new`), flax's `nn.gelu` default.
  * LayerNorm's epsilon is config.json's `layer_norm_epsilon` (model.norm_eps).
  * The vocabulary (50257) is padded to model.vocab_multiple (50304) with zero rows, whose
    logits the model masks (model.valid_vocab): they are never predicted or sampled.
Layer arrays are stacked for scanned layers (execution.scan_layers).
"""

import json
import os

import numpy as np

from jaxgpt.errors import UserError

# Activations whose formula is GELU's tanh approximation, the one our model computes.
TANH_GELU = ('gelu_new', 'gelu_pytorch_tanh', 'gelu_fast')
WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin')


def read_config(directory: str) -> dict:
  path = os.path.join(directory, 'config.json')
  if not os.path.isfile(path):
    raise UserError(
      f'--hf_path={directory} has no config.json: name a Hugging Face GPT-2 checkpoint '
      'directory (config.json with model.safetensors or pytorch_model.bin)'
    )
  with open(path, encoding='utf-8') as f:
    hf = json.load(f)
  if hf.get('model_type', 'gpt2') != 'gpt2':
    raise UserError(f'{path}: model_type {hf.get("model_type")!r} is not GPT-2 (gpt2)')
  act = hf.get('activation_function', 'gelu_new')
  if act not in TANH_GELU:
    raise UserError(
      f'{path}: activation_function {act!r}: jaxgpt computes the tanh GELU ({", ".join(TANH_GELU)})'
    )
  if hf.get('scale_attn_by_inverse_layer_idx') or not hf.get('scale_attn_weights', True):
    raise UserError(
      f'{path}: attention scaled other than by 1/sqrt(head_dim) '
      '(scale_attn_by_inverse_layer_idx or scale_attn_weights=false) is not supported'
    )
  return hf


def model_fields(hf: dict) -> dict:
  """config.model fields for a GPT-2 config.json."""
  d = hf['n_embd']
  inner = hf.get('n_inner') or 4 * d
  return {
    'num_layers': hf['n_layer'],
    'num_heads': hf['n_head'],
    'd_model': d,
    'mlp_dim': 0 if inner == 4 * d else inner,
    'seq_len': hf['n_positions'],
    'vocab_size': hf['vocab_size'],
    'norm_eps': hf.get('layer_norm_epsilon', 1e-5),
    'use_bias': True,
    'tie_embeddings': hf.get('tie_word_embeddings', True),
  }


def hf_config(cfg, eod_id: int) -> dict:
  """A GPT-2 config.json for a jaxgpt ModelConfig (its unpadded vocabulary)."""
  return {
    'architectures': ['GPT2LMHeadModel'],
    'model_type': 'gpt2',
    'vocab_size': cfg.valid_vocab or cfg.vocab_size,
    'n_positions': cfg.seq_len,
    'n_embd': cfg.d_model,
    'n_layer': cfg.num_layers,
    'n_head': cfg.num_heads,
    'n_inner': cfg.mlp_dim,
    'activation_function': 'gelu_new',
    'layer_norm_epsilon': cfg.norm_eps,
    'resid_pdrop': cfg.dropout,
    'embd_pdrop': cfg.dropout,
    'attn_pdrop': cfg.dropout,
    'initializer_range': cfg.init_std,
    'tie_word_embeddings': cfg.tie_embeddings,
    'bos_token_id': eod_id,
    'eos_token_id': eod_id,
    'torch_dtype': 'float32',
  }


class Weights:
  """The tensors of a checkpoint directory by GPT-2 name ('h.0.attn.c_attn.weight'), read
  one at a time as float32 numpy: a 1.5B model is never held twice."""

  def __init__(self, directory: str):
    found = [f for f in WEIGHT_FILES if os.path.isfile(os.path.join(directory, f))]
    if not found:
      raise UserError(f'{directory} has none of {", ".join(WEIGHT_FILES)}')
    path = os.path.join(directory, found[0])
    if path.endswith('.bin'):
      self._files = {None: _torch_tensors(path)}
      names = self._files[None].keys()
      self._where = {n: None for n in names}
    else:
      from safetensors import safe_open

      files = [found[0]]
      if path.endswith('.json'):
        with open(path) as f:
          files = sorted(set(json.load(f)['weight_map'].values()))
      self._files = {f: safe_open(os.path.join(directory, f), 'np') for f in files}
      self._where = {n: f for f, h in self._files.items() for n in h.keys()}
    # GPT2LMHeadModel saves 'transformer.'-prefixed names; GPT2Model (the hub's) bare ones.
    self._names = {n.removeprefix('transformer.'): n for n in self._where}

  def __contains__(self, name):
    return name in self._names

  def __getitem__(self, name) -> np.ndarray:
    if name not in self._names:
      raise UserError(f'the checkpoint has no tensor {name!r}: is it a GPT-2 checkpoint?')
    full = self._names[name]
    handle = self._files[self._where[full]]
    if isinstance(handle, dict):  # torch tensors, memory-mapped
      return handle[full].float().numpy()
    return np.asarray(handle.get_tensor(full), np.float32)


def _torch_tensors(path):
  try:
    import torch
  except ImportError:
    raise UserError(
      f'{path} is a PyTorch file, which needs torch to read (pip install torch); a '
      'model.safetensors needs nothing more'
    ) from None
  state = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
  return {k: v for k, v in state.items() if k.endswith(('.weight', '.bias'))}


def _layer(w: Weights, i: int, cfg) -> dict:
  """Layer i's params as functions that read and convert them (see to_params)."""
  d, h, k = cfg.d_model, cfg.num_heads, cfg.head_dim
  t = lambda name: lambda: w[f'h.{i}.{name}']
  return {
    'ln_attn': {'scale': t('ln_1.weight'), 'bias': t('ln_1.bias')},
    'attn': {
      'qkv': {
        'kernel': lambda: w[f'h.{i}.attn.c_attn.weight'].reshape(d, 3, h, k).transpose(0, 2, 1, 3),
        'bias': lambda: w[f'h.{i}.attn.c_attn.bias'].reshape(3, h, k).transpose(1, 0, 2),
      },
      'out': {
        'kernel': lambda: w[f'h.{i}.attn.c_proj.weight'].reshape(h, k, d),
        'bias': t('attn.c_proj.bias'),
      },
    },
    'ln_mlp': {'scale': t('ln_2.weight'), 'bias': t('ln_2.bias')},
    'mlp': {
      'fc_in': {'kernel': t('mlp.c_fc.weight'), 'bias': t('mlp.c_fc.bias')},
      'fc_out': {'kernel': t('mlp.c_proj.weight'), 'bias': t('mlp.c_proj.bias')},
    },
  }


def _padded_rows(table_VxD, vocab):
  if table_VxD.shape[0] > vocab:
    raise UserError(
      f'the checkpoint has {table_VxD.shape[0]} token embeddings, more than the '
      f'model vocabulary {vocab}'
    )
  return np.pad(table_VxD, ((0, vocab - table_VxD.shape[0]), (0, 0)))


def to_params(w: Weights, cfg) -> dict:
  """jaxgpt's param tree for ModelConfig `cfg` of a GPT-2 checkpoint, each leaf a function
  that reads and converts it to float32 numpy: placed on devices one at a time, a model is
  never held twice in host memory."""
  layers = [_layer(w, i, cfg) for i in range(cfg.num_layers)]
  params = {
    'tok_embed': lambda: _padded_rows(w['wte.weight'], cfg.vocab_size),
    'pos_embed': lambda: w['wpe.weight'][: cfg.seq_len],
    'ln_final': {'scale': lambda: w['ln_f.weight'], 'bias': lambda: w['ln_f.bias']},
  }
  if cfg.scan_layers:
    params['blocks'] = _stack(layers)
  else:
    params.update({f'block_{i}': layer for i, layer in enumerate(layers)})
  if not cfg.tie_embeddings:
    params['head'] = {'kernel': lambda: _padded_rows(w['lm_head.weight'], cfg.vocab_size).T}
  return params


def _stack(layers: list[dict]) -> dict:
  first = layers[0]
  if isinstance(first, dict):
    return {k: _stack([layer[k] for layer in layers]) for k in first}
  return lambda: np.stack([read() for read in layers])


def from_params(params: dict, cfg) -> dict[str, np.ndarray]:
  """GPT2LMHeadModel's state dict (numpy) of jaxgpt params (unrolled layers), cut to the
  unpadded vocabulary; layers without biases (model.use_bias=False) get zero ones."""
  d, vocab = cfg.d_model, cfg.valid_vocab or cfg.vocab_size
  get = lambda tree, *keys: np.asarray(_dig(tree, keys), np.float32)
  zeros = lambda n: np.zeros(n, np.float32)
  bias = lambda tree, n: get(tree, 'bias') if 'bias' in tree else zeros(n)
  out = {
    'transformer.wte.weight': get(params, 'tok_embed')[:vocab],
    'transformer.wpe.weight': get(params, 'pos_embed'),
    'transformer.ln_f.weight': get(params, 'ln_final', 'scale'),
    'transformer.ln_f.bias': bias(params['ln_final'], d),
  }
  for i in range(cfg.num_layers):
    b, p = params[f'block_{i}'], f'transformer.h.{i}.'
    qkv = get(b, 'attn', 'qkv', 'kernel')  # D x H x 3 x K
    qkv_bias = b['attn']['qkv'].get('bias')
    out.update(
      {
        p + 'ln_1.weight': get(b, 'ln_attn', 'scale'),
        p + 'ln_1.bias': bias(b['ln_attn'], d),
        p + 'attn.c_attn.weight': qkv.transpose(0, 2, 1, 3).reshape(d, 3 * d),
        p + 'attn.c_attn.bias': (
          zeros(3 * d) if qkv_bias is None else np.asarray(qkv_bias).transpose(1, 0, 2).reshape(-1)
        ),
        p + 'attn.c_proj.weight': get(b, 'attn', 'out', 'kernel').reshape(d, d),
        p + 'attn.c_proj.bias': bias(b['attn']['out'], d),
        p + 'ln_2.weight': get(b, 'ln_mlp', 'scale'),
        p + 'ln_2.bias': bias(b['ln_mlp'], d),
        p + 'mlp.c_fc.weight': get(b, 'mlp', 'fc_in', 'kernel'),
        p + 'mlp.c_fc.bias': bias(b['mlp']['fc_in'], cfg.mlp_dim),
        p + 'mlp.c_proj.weight': get(b, 'mlp', 'fc_out', 'kernel'),
        p + 'mlp.c_proj.bias': bias(b['mlp']['fc_out'], d),
      }
    )
  if not cfg.tie_embeddings:  # a tied head is wte itself: Hugging Face ties it on loading
    out['lm_head.weight'] = get(params, 'head', 'kernel').T[:vocab]
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _dig(tree, keys):
  for k in keys:
    tree = tree[k]
  return tree
