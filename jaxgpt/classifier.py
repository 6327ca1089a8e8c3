"""A text classifier on a pretrained decoder: the model, its loss and its batch.

The decoder sits under 'backbone', so a pretrained Transformer's params drop in there; the
head reads the final state of each row's last token.
"""

import flax.linen as nn
import jax.numpy as jnp
import optax

from jaxgpt import model as model_lib


class Classifier(nn.Module):
  """tokens_BxL, last_B -> class logits_BxC (float32)."""

  cfg: model_lib.ModelConfig
  num_classes: int

  @nn.compact
  def __call__(self, tokens_BxL, last_B, *, deterministic: bool = True):
    backbone = model_lib.Transformer(self.cfg, name='backbone')
    h_BxLxD = backbone.hidden(tokens_BxL, deterministic=deterministic)
    h_BxD = jnp.take_along_axis(h_BxLxD, last_B[:, None, None], axis=1)[:, 0]
    logits_BxC = model_lib.Dense((self.num_classes,), ('embed', None), self.cfg, name='head')(h_BxD)
    return logits_BxC.astype(jnp.float32)


def loss(model: Classifier, params, batch, rng=None):
  """(summed cross-entropy over batch['weights'], summed weights); an `rng` turns dropout on."""
  logits_BxC = model.apply(
    {'params': params},
    batch['inputs'],
    batch['last'],
    deterministic=rng is None,
    rngs=None if rng is None else {'dropout': rng},
  )
  nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch['labels'])
  return (nll_B * batch['weights']).sum(), batch['weights'].sum()


def init_fn(model: Classifier):
  """Boxed params of the classifier, from a dummy batch of one sequence."""
  tokens = jnp.zeros((1, model.cfg.seq_len), jnp.int32)
  return lambda rng: model.init(rng, tokens, jnp.zeros((1,), jnp.int32))['params']


def batch_shapes(seq_len: int, batch_size: int) -> dict:
  """A classification batch: what finetune_data.encode_classification's rows make."""
  rows = (batch_size,)
  return {
    'inputs': ((batch_size, seq_len), jnp.int32),
    'last': (rows, jnp.int32),
    'labels': (rows, jnp.int32),
    'weights': (rows, jnp.float32),
  }
