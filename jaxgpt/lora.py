"""LoRA: low-rank adapters added to a model's dense layers from outside it, and merged back.

model.py knows nothing of adapters. Inside `with adapters(spec):`, every call of a
model.Dense named in spec.targets also adds x A B * alpha / rank, creating A and B as
params beside the layer's kernel (B starts at zero, so the adapted model starts as the
base model). A fine-tune traces its loss inside that context; evaluation and sampling
use `merge_adapters`, which folds A B into the kernels of a plain model.
"""

import contextlib
import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util

from jaxgpt import model as model_lib
from jaxgpt.errors import UserError

TARGETS = ('qkv', 'out', 'fc_in', 'fc_out')  # the dense layers that can take adapters
TARGET_OF = {'q': 'qkv', 'kv': 'qkv'}  # grouped-query attention's two projections are 'qkv'

TRAINABLE = ('head', 'last_k', 'all', 'lora')


@dataclasses.dataclass(frozen=True)
class Adapters:
  rank: int
  alpha: float = 16.0  # the update is scaled by alpha / rank
  dropout: float = 0.0  # on the adapter's input, while training
  targets: tuple[str, ...] = TARGETS

  @classmethod
  def from_config(cls, lc) -> 'Adapters':
    """finetune.lora's fields, checked."""
    if lc.rank <= 0:
      raise UserError(f'finetune.lora.rank={lc.rank} must be positive with finetune.trainable=lora')
    return cls(lc.rank, lc.alpha, lc.dropout, check_targets(lc.targets))


def of_finetune(fc) -> Adapters | None:
  """The adapters a fine-tune trains: finetune.lora's, when finetune.trainable=lora."""
  return Adapters.from_config(fc.lora) if fc.trainable == 'lora' else None


@contextlib.contextmanager
def adapters(spec: Adapters | None, deterministic: bool = True):
  """Models traced inside carry spec's adapters (none when spec is None)."""
  if spec is None:
    yield
    return

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    y = next_fun(*args, **kwargs)
    if (
      context.method_name != '__call__'
      or not isinstance(module, model_lib.Dense)
      or TARGET_OF.get(module.name, module.name) not in spec.targets
    ):
      return y
    return y + _delta(module, args[0], spec, deterministic).reshape(y.shape)

  with nn.intercept_methods(intercept):
    yield


def _delta(dense: model_lib.Dense, x, spec: Adapters, deterministic: bool):
  """x A B * alpha / rank for one Dense layer, on 2-D operands as the layer's own product."""
  in_shape, rank = x.shape[-dense.in_dims :], spec.rank
  a = dense.param(
    'lora_a',
    nn.with_logical_partitioning(
      nn.initializers.normal(1 / math.sqrt(math.prod(in_shape))),
      (*dense.axes[: dense.in_dims], None),
    ),
    (*in_shape, rank),
    jnp.float32,
  )
  b = dense.param(
    'lora_b',
    nn.with_logical_partitioning(nn.initializers.zeros, (None, *dense.axes[dense.in_dims :])),
    (rank, *dense.features),
    jnp.float32,
  )
  dtype = jnp.dtype(dense.cfg.dtype)
  x_2d = x.reshape(-1, math.prod(in_shape)).astype(dtype)
  x_2d = nn.Dropout(spec.dropout, deterministic=deterministic, parent=dense)(x_2d)
  h_2d = x_2d @ a.reshape(-1, rank).astype(dtype)
  return (h_2d @ b.reshape(rank, -1).astype(dtype)) * (spec.alpha / rank)


def predicate(trainable: str, cfg: model_lib.ModelConfig, last_k: int = 1, prefix=()):
  """is_trainable(path) for a param path of the model (its decoder under `prefix`)."""
  if trainable not in TRAINABLE:
    raise UserError(f'finetune.trainable={trainable!r}: use one of {", ".join(TRAINABLE)}')
  decoder = len(prefix)
  if trainable == 'last_k':
    if cfg.scan_layers:
      raise UserError(
        'finetune.trainable=last_k needs execution.scan_layers=False: scanned '
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


def adapter_count(cfg: model_lib.ModelConfig, spec: Adapters) -> int:
  """Closed form of the LoRA params: rank * (fan-in + fan-out) per adapted layer."""
  d, f, k = cfg.d_model, cfg.mlp_dim, cfg.head_dim
  qkv = [(d, 3 * d)]
  if cfg.kv_heads != cfg.num_heads:
    qkv = [(d, d), (d, 2 * cfg.kv_heads * k)]  # the 'q' and 'kv' layers
  fans = {
    'qkv': qkv,
    'out': [(d, d)],
    'fc_in': [(d, f * (2 if cfg.mlp == 'swiglu' else 1))],
    'fc_out': [(f, d)],
  }
  per_layer = sum(spec.rank * (a + b) for t in spec.targets for a, b in fans[t])
  return cfg.num_layers * per_layer


def merge_adapters(params: dict, spec: Adapters, scan_layers: bool) -> dict:
  """Params with every kernel += A B * alpha / rank and no adapters: a plain model's."""
  flat = traverse_util.flatten_dict(params)
  out = {k: v for k, v in flat.items() if k[-1] not in ('lora_a', 'lora_b')}
  scale = spec.alpha / spec.rank
  for k, a in flat.items():
    if k[-1] != 'lora_a':
      continue
    layer = k[:-1]
    b, kernel = flat[layer + ('lora_b',)], flat[layer + ('kernel',)]
    stacked = scan_layers and 'blocks' in layer  # a leading layer axis on all three
    lead = 1 if stacked else 0
    rank = a.shape[-1]
    a2 = a.reshape(*a.shape[:lead], -1, rank)
    b2 = b.reshape(*b.shape[:lead], rank, -1)
    delta = (a2 @ b2).reshape(kernel.shape) * scale
    out[layer + ('kernel',)] = kernel + delta.astype(kernel.dtype)
  return traverse_util.unflatten_dict(out)


def check_targets(targets) -> tuple[str, ...]:
  unknown = [t for t in targets if t not in TARGETS]
  if unknown or not targets:
    raise UserError(f'finetune.lora.targets={tuple(targets)}: choose among {", ".join(TARGETS)}')
  return tuple(targets)
