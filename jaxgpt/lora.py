"""Which params a fine-tune trains, and LoRA adapters merged into plain kernels.

A fine-tune's state holds only its trainable params (and their optimizer moments); the
frozen rest is a separate argument of the train step, so it gets no gradients, no moments
and is not rewritten by checkpoints. `split` and `merge` move between the two halves and
the full tree by path.
"""

import math

import jax
from flax import traverse_util

from jaxgpt import model as model_lib
from jaxgpt.errors import UserError

TRAINABLE = ('head', 'last_k', 'all', 'lora')


def predicate(trainable: str, cfg: model_lib.ModelConfig, last_k: int = 1, prefix=()):
  """is_trainable(path) for a param path of the model (its decoder under `prefix`)."""
  if trainable not in TRAINABLE:
    raise UserError(f'finetune.trainable={trainable!r}: use one of {", ".join(TRAINABLE)}')
  decoder = len(prefix)
  if trainable == 'last_k':
    if cfg.scan_layers:
      raise UserError(
        'finetune.trainable=last_k needs model.scan_layers=False: scanned '
        'layers are stacked in one array per param'
      )
    if not 1 <= last_k <= cfg.num_layers:
      raise UserError(f'finetune.last_k={last_k} must be between 1 and {cfg.num_layers}')
    blocks = {f'block_{i}' for i in range(cfg.num_layers - last_k, cfg.num_layers)}

  def is_trainable(path: tuple) -> bool:
    inner = path[decoder:] if path[:decoder] == tuple(prefix) else None
    if inner is None:  # outside the decoder: the task head
      return True
    if trainable == 'all':
      return True
    if trainable == 'lora':
      return path[-1] in ('lora_a', 'lora_b')
    if trainable == 'last_k':
      return inner[0] in blocks or inner[0] == 'ln_final'
    return False  # 'head'

  return is_trainable


def split(params: dict, is_trainable) -> tuple[dict, dict]:
  flat = traverse_util.flatten_dict(params)
  pick = lambda keep: traverse_util.unflatten_dict(
    {k: v for k, v in flat.items() if is_trainable(k) == keep}
  )
  return pick(True), pick(False)


def merge(*trees: dict) -> dict:
  flat = {}
  for tree in trees:
    flat.update(traverse_util.flatten_dict(tree))
  return traverse_util.unflatten_dict(flat)


def count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def adapter_count(cfg: model_lib.ModelConfig) -> int:
  """Closed form of the LoRA params: rank * (fan-in + fan-out) per adapted layer."""
  d, f = cfg.d_model, cfg.mlp_dim
  fans = {'qkv': (d, 3 * d), 'out': (d, d), 'fc_in': (d, f), 'fc_out': (f, d)}
  return cfg.num_layers * sum(cfg.lora_rank * sum(fans[t]) for t in cfg.lora_targets)


def merge_adapters(params: dict, cfg: model_lib.ModelConfig) -> dict:
  """Params with every kernel += A B * alpha / rank and no adapters: a plain model's."""
  flat = traverse_util.flatten_dict(params)
  out = {k: v for k, v in flat.items() if k[-1] not in ('lora_a', 'lora_b')}
  scale = cfg.lora_alpha / max(cfg.lora_rank, 1)
  for k, a in flat.items():
    if k[-1] != 'lora_a':
      continue
    layer = k[:-1]
    b, kernel = flat[layer + ('lora_b',)], flat[layer + ('kernel',)]
    stacked = cfg.scan_layers and 'blocks' in layer  # a leading layer axis on all three
    lead = 1 if stacked else 0
    rank = a.shape[-1]
    a2 = a.reshape(*a.shape[:lead], -1, rank)
    b2 = b.reshape(*b.shape[:lead], rank, -1)
    delta = (a2 @ b2).reshape(kernel.shape) * scale
    out[layer + ('kernel',)] = kernel + delta.astype(kernel.dtype)
  return traverse_util.unflatten_dict(out)


def check_targets(targets) -> tuple[str, ...]:
  unknown = [t for t in targets if t not in model_lib.LORA_TARGETS]
  if unknown or not targets:
    raise UserError(
      f'finetune.lora.targets={tuple(targets)}: choose among {", ".join(model_lib.LORA_TARGETS)}'
    )
  return tuple(targets)
