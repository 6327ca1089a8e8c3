"""The run: the immutable value built once per run, before anything compiles.

`Run` holds the mesh, the logical-axis rules, the model, the optimizer, the loss the step
minimises and the shardings and shapes of the train state. Pretraining builds one with
`pretraining`; a fine-tune builds its own (finetune.py) from the same `build`, with its
model, its loss and its optimizer's freezing. Everything that compiles for the run (the
train step, evaluation, sampling, planning) takes it; nothing assigns to it. Code that
traces the model runs inside `run.context()`, which each entry point enters once.
"""

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgpt import attention
from jaxgpt import checkpoint as checkpoint_lib
from jaxgpt import generate as generate_lib
from jaxgpt import loss as loss_lib
from jaxgpt import metrics as metrics_lib
from jaxgpt import model as model_lib
from jaxgpt import optim
from jaxgpt import sharding
from jaxgpt import trees
from jaxgpt.data import loader
from jaxgpt.errors import UserError

RUN_KINDS = ('pretrain', 'classify', 'instruct', 'dpo')


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class Run:
  """What a run is made of (see the module's docstring); `build` makes one."""

  mesh: jax.sharding.Mesh
  rules: tuple
  model: nn.Module
  tx: optax.GradientTransformation
  lr: optax.Schedule
  loss_fn: Callable  # loss_fn(params, batch, rng) -> (summed loss, summed weight)
  init_fn: Callable  # init_fn(rng) -> fresh params, boxed with their logical axes
  state_shardings: TrainState
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
  flops_per_token: float  # model FLOPs of a train step per token, for MFU
  batch_shapes: Callable  # batch_shapes(batch_size) -> {field: (shape, dtype)} the loss reads

  def context(self):
    """Mesh and logical rules for tracing: what the model's constraints resolve against."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def init_params(self, seed: int):
    """Fresh params on their shardings."""
    init = lambda rng: trees.strip_boxes(self.init_fn(rng))
    return jax.jit(init, out_shardings=self.state_shardings.params)(jax.random.key(seed))

  def init_state(self, seed: int = 0, params=None) -> TrainState:
    """Step 0 with fresh params (or `params`, whose buffers the state takes over: a large
    model is not held twice) and their optimizer state."""
    params = self.init_params(seed) if params is None else params
    make = lambda p: TrainState(jnp.zeros((), jnp.int32), p, self.tx.init(p))
    return jax.jit(make, out_shardings=self.state_shardings, donate_argnums=0)(params)


def build(
  config, mesh, model, loss_fn, init_fn, tx, lr, flops_per_token: float, batch_shapes=None
) -> Run:
  """The Run of `model` on `mesh`: param shardings from config.mesh's rules, the
  optimizer state's from the params'."""
  rules = sharding.model_rules(config.mesh, mesh, model.cfg)
  rng = jax.eval_shape(jax.random.key, 0)  # abstract: the mesh may be a remote topology's
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_fn, rng)
  param_sh = sharding.logical_shardings(boxed, mesh, rules)
  params = trees.strip_boxes(boxed)
  sharding.check_divisible(params, param_sh)
  opt_state = jax.eval_shape(tx.init, params)
  replicated = NamedSharding(mesh, P())
  opt_sh = _mirror_params(opt_state, params, param_sh, replicated)
  shardings = TrainState(replicated, param_sh, opt_sh)
  abstract = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, opt_state)
  abstract = checkpoint_lib.abstract_with_shardings(abstract, shardings)
  batch_shapes = batch_shapes or functools.partial(lm_batch_shapes, model.cfg.seq_len)
  return Run(
    mesh, rules, model, tx, lr, loss_fn, init_fn, shardings, abstract, flops_per_token, batch_shapes
  )


def lm_batch_shapes(seq_len: int, batch_size: int) -> dict:
  """A next-token batch: what loader.train_loader yields."""
  rows = (batch_size, seq_len)
  return {'inputs': (rows, jnp.int32), 'targets': (rows, jnp.int32), 'weights': (rows, jnp.float32)}


def _mirror_params(opt_state, params, param_sh, replicated):
  """Shardings for the optimizer state: a leaf whose key path ends in a param's path, with
  that param's shape (AdamW's moments, also under optax's masks and multi_transform), takes
  the param's sharding; counts and the rest are replicated."""
  by_path = {
    keys: (p.shape, sh) for (keys, p), sh in zip(_keyed_leaves(params), jax.tree.leaves(param_sh))
  }

  def sharding_of(path, leaf):
    keys = _keys(path)
    for i in range(len(keys)):
      shape, sh = by_path.get(keys[i:], (None, None))
      if shape == leaf.shape:
        return sh
    return replicated

  return jax.tree_util.tree_map_with_path(sharding_of, opt_state)


def _keys(path) -> tuple:
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _keyed_leaves(tree):
  return [(_keys(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def init_fn(model: model_lib.Transformer):
  """Boxed (logically named) params of a Transformer, from a dummy batch of one sequence."""
  tokens = jnp.zeros((1, model.cfg.seq_len), jnp.int32)
  return lambda rng: model.init(rng, tokens)['params']


def pretraining(config, model_cfg: model_lib.ModelConfig, mesh) -> Run:
  """The Run of a language model trained from scratch on config.train's objective."""
  model_cfg = model_lib.on_platform(model_cfg, sharding.platform(mesh))
  model = model_lib.Transformer(model_cfg)
  tx, lr = optim.make(config.optim, config.train.steps, lr_scale=model_lib.lr_scale(model_cfg))
  tc = config.train
  loss_fn = lambda params, batch, rng: loss_lib.next_token_loss(
    model, params, batch, rng=rng, z_loss=tc.z_loss, label_smoothing=tc.label_smoothing
  )
  return build(
    config, mesh, model, loss_fn, init_fn(model), tx, lr, metrics_lib.flops_per_token(model_cfg)
  )


def check_kind(config):
  """train.kind names a kind of run, and a fine-tune's comes with its finetune section."""
  kind = config.train.kind
  if kind not in RUN_KINDS:
    raise UserError(f'train.kind={kind!r}: use one of {", ".join(RUN_KINDS)}')
  if kind == 'pretrain' and 'finetune' in config:
    raise UserError(
      "train.kind='pretrain' with a finetune section: set train.kind to classify, instruct or dpo"
    )
  if kind != 'pretrain' and 'finetune' not in config:
    raise UserError(
      f'train.kind={kind!r} needs a finetune section: start from experiments/finetune_*.py'
    )


def check_config(config, mesh):
  """Everything about the config that can be checked before data or compilation."""
  model_lib.ModelConfig.from_config(config, tokenizer_vocab=1)
  m = config.model  # an attention kernel these devices cannot run, before any data work
  attention.choose(m.attention_impl, sharding.platform(mesh), m.dtype, m.dropout, m.seq_len)
  generate_lib.Sampling.from_config(config.eval)
  tc = config.train
  check_kind(config)
  fields = (
    [('train', k) for k in ('batch_size', 'steps')]
    + [('loop', k) for k in ('log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints')]
    + [('execution', 'micro_batches')]
  )
  for section, key in fields:
    if config[section][key] <= 0:
      raise UserError(f'{section}.{key}={config[section][key]} must be a positive integer')
  for key, zero in (('run_steps', 'all steps'), ('eval_batches', 'the whole split')):
    if config.loop[key] < 0:
      raise UserError(f'loop.{key}={config.loop[key]} must be 0 ({zero}) or positive')
  profile = tuple(config.loop.profile_steps)
  if profile and not (
    len(profile) == 2 and all(isinstance(s, int) for s in profile) and 1 <= profile[0] <= profile[1]
  ):
    raise UserError(
      f'loop.profile_steps={profile}: give (first, last) steps, 1 <= first <= last, or () '
      'for no trace'
    )
  if tc.z_loss < 0:
    raise UserError(f'train.z_loss={tc.z_loss} must be >= 0 (0: off; PaLM used 1e-4)')
  if not 0 <= tc.label_smoothing < 1:
    raise UserError(f'train.label_smoothing={tc.label_smoothing} must be in [0, 1) (0: off)')
  sharding.check_batch(tc.batch_size, config.execution.micro_batches, mesh)
  loader.check_batch(tc.batch_size, jax.process_count())
