"""optax AdamW with warmup + cosine decay, a weight-decay mask and global-norm clipping.

Gradient accumulation lives in train.py's step (a scan over micro-batches), so one
optimizer update sees exactly the gradient of the whole batch.
"""

import jax
import optax

from jaxgpt import trees


def schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr; cfg is config.optim."""
  decay_steps = cfg.decay_steps or total_steps
  warmup = min(cfg.warmup_steps, max(decay_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=cfg.lr,
    warmup_steps=warmup,
    decay_steps=max(decay_steps, warmup + 1),
    end_value=cfg.min_lr,
  )


def decay_mask(params, no_decay=('bias', 'scale', 'embed')):
  """True where weight decay applies: not to names in `no_decay` (norms, biases, embeddings)."""

  def keep(path, _):
    name = str(getattr(path[-1], 'key', path[-1]))
    return not any(word in name for word in no_decay)

  return jax.tree_util.tree_map_with_path(keep, params)


def scale_by_path(factor) -> optax.GradientTransformation:
  """Multiplies each update by factor(path): per-parameter learning rates (muP's)."""

  def update(updates, state, params=None):
    del params
    return trees.map_paths(lambda path, u: u * factor(path), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make(
  cfg, total_steps: int, trainable=None, lr_scale=None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW of config.optim. With `trainable(path) -> bool`, only those params train: the
  others get no update, no moments and no weight decay (freezing is the optimizer's
  business, as big_vision's per-parameter transforms do it). With `lr_scale(path) ->
  float` (model.lr_scale), each param's step, weight decay included, is scaled by it."""
  lr = schedule(cfg, total_steps)
  parts = []
  if cfg.grad_clip:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  no_decay = tuple(cfg.no_decay)
  parts.append(
    optax.adamw(
      lr,
      b1=cfg.b1,
      b2=cfg.b2,
      eps=cfg.eps,
      weight_decay=cfg.weight_decay,
      mask=lambda p: decay_mask(p, no_decay),
    )
  )
  if lr_scale is not None:
    parts.append(scale_by_path(lr_scale))
  tx = optax.chain(*parts)
  if trainable is not None:
    labels = lambda params: trees.map_paths(
      lambda path, _: 'train' if trainable(path) else 'frozen', params
    )
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
  return tx, lr
