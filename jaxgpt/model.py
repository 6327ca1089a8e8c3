"""A GPT-2 style decoder in Flax linen.

Shape legend for tensor names and einsum strings:
  B batch, L length (query positions), S key positions, D model width, H heads,
  K head dim, F MLP width, V vocabulary, N layers, T new tokens in a cached call.

Every parameter and the key activations carry logical axis names (batch, length, embed,
heads, head_dim, mlp, vocab, layers); only the config's rules (configs/mesh.py) say which
mesh axes those map to.
"""

import dataclasses
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgpt import attention
from jaxgpt.errors import UserError

PARAMETRIZATIONS = ('sp', 'mup')
REMAT_POLICIES = {
  'full': None,  # save nothing: recompute the whole block in the backward pass
  'dots': jax.checkpoint_policies.checkpoint_dots,
  'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  seq_len: int
  num_layers: int
  num_heads: int
  d_model: int
  mlp_dim: int
  dropout: float = 0.0
  use_bias: bool = True
  tie_embeddings: bool = True
  dtype: str = 'float32'
  scan_layers: bool = False
  remat: str = 'none'
  attention_block: int = 0
  loss_chunks: int = 1
  init_std: float = 0.02
  norm_eps: float = 1e-5
  # Ids from here to vocab_size only pad the vocabulary (to a multiple that tiles well, or
  # to a checkpoint's size): their logits are masked, so they are never predicted, sampled
  # or given probability. 0: every id is a token.
  valid_vocab: int = 0
  # How whole sequences attend (attention.IMPLS), and the platform the model compiles for
  # ('' until `on_platform` sets it: then jax's default backend), which resolves 'auto'.
  attention_impl: str = 'auto'
  platform: str = ''
  parametrization: str = 'sp'  # or 'mup' (configs/base.py says what changes)
  mup_base_width: int = 256

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def width_mult(self) -> float:
    """muP's m = d_model / mup_base_width; 1 under the standard parametrization."""
    return self.d_model / self.mup_base_width if self.parametrization == 'mup' else 1.0

  @classmethod
  def from_config(cls, config, tokenizer_vocab: int = 0) -> 'ModelConfig':
    """The model's config from config.model (the architecture) and config.execution (how a
    step computes it), checking what the user can get wrong."""
    m, x = config.model, config.execution
    for key in ('num_layers', 'num_heads', 'd_model', 'seq_len'):
      if m[key] <= 0:
        raise UserError(f'model.{key}={m[key]} must be a positive integer')
    if m.mlp_dim < 0 or m.vocab_size < 0:
      raise UserError(
        f'model.mlp_dim={m.mlp_dim} and model.vocab_size={m.vocab_size} must be '
        '0 (the default size) or positive'
      )
    if not 0 <= m.dropout < 1:
      raise UserError(f'model.dropout={m.dropout} must be in [0, 1)')
    if not 0 < m.norm_eps < 1:
      raise UserError(f'model.norm_eps={m.norm_eps} must be in (0, 1), e.g. 1e-5')
    vocab = m.vocab_size or tokenizer_vocab
    if m.vocab_multiple:
      vocab = -(-vocab // m.vocab_multiple) * m.vocab_multiple
    if vocab < tokenizer_vocab:
      raise UserError(
        f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's "
        f'{tokenizer_vocab} ids; set it to 0 to follow the tokenizer'
      )
    if m.num_heads <= 0 or m.d_model % m.num_heads:
      raise UserError(
        f'model.num_heads={m.num_heads} does not divide model.d_model='
        f'{m.d_model}; pick heads that divide the width (e.g. '
        f'{_divisor_near(m.d_model, m.num_heads)})'
      )
    if x.remat != 'none' and x.remat not in REMAT_POLICIES:
      raise UserError(f'execution.remat={x.remat!r}: use one of none, {", ".join(REMAT_POLICIES)}')
    if m.dtype not in ('float32', 'bfloat16', 'float16'):
      raise UserError(f'model.dtype={m.dtype!r}: use float32, bfloat16 or float16')
    if x.attention_block and m.seq_len % x.attention_block:
      raise UserError(
        f'execution.attention_block={x.attention_block} does not divide '
        f'model.seq_len={m.seq_len}; use a divisor or 0'
      )
    attention.check_name(m.attention_impl)
    if m.parametrization not in PARAMETRIZATIONS or m.mup_base_width <= 0:
      raise UserError(
        f'model.parametrization={m.parametrization!r}, model.mup_base_width='
        f"{m.mup_base_width}: use 'sp' or 'mup', and a positive base width"
      )
    if not 1 <= x.loss_chunks <= m.seq_len:
      raise UserError(
        f'execution.loss_chunks={x.loss_chunks}: use 1 to model.seq_len='
        f'{m.seq_len} chunks (1: all positions at once)'
      )
    return cls(
      vocab_size=vocab,
      seq_len=m.seq_len,
      num_layers=m.num_layers,
      num_heads=m.num_heads,
      d_model=m.d_model,
      mlp_dim=m.mlp_dim or 4 * m.d_model,
      dropout=m.dropout,
      use_bias=m.use_bias,
      tie_embeddings=m.tie_embeddings,
      dtype=m.dtype,
      scan_layers=x.scan_layers,
      remat=x.remat,
      attention_block=x.attention_block,
      loss_chunks=x.loss_chunks,
      init_std=m.init_std,
      norm_eps=m.norm_eps,
      valid_vocab=tokenizer_vocab if 0 < tokenizer_vocab < vocab else 0,
      attention_impl=m.attention_impl,
      parametrization=m.parametrization,
      mup_base_width=m.mup_base_width,
    )

  @property
  def attention(self) -> str:
    """The attention implementation this model runs (see attention.choose)."""
    platform = self.platform or jax.default_backend()
    return attention.choose(self.attention_impl, platform, self.dtype, self.dropout, self.seq_len)


def on_platform(cfg: ModelConfig, platform: str) -> ModelConfig:
  """cfg for a mesh of `platform` devices ('cpu', 'gpu', 'tpu'): its attention resolved
  there, or refused there by name before anything compiles."""
  cfg = dataclasses.replace(cfg, platform=platform)
  if cfg.attention == 'splash' and platform != 'tpu':
    logging.warning(
      "model.attention_impl='splash' on %s runs the kernel in Pallas' interpreter: for "
      'checking it, far slower than einsum',
      platform,
    )
  return cfg


def _divisor_near(width, heads):
  divisors = [h for h in range(1, width + 1) if width % h == 0]
  return min(divisors, key=lambda h: abs(h - heads))


def param_count(cfg: ModelConfig) -> int:
  """The closed-form parameter count of `Transformer(cfg)`."""
  d, f, v = cfg.d_model, cfg.mlp_dim, cfg.vocab_size
  bias = int(cfg.use_bias)
  norm = d * (1 + bias)
  attn = 4 * d * d + bias * 4 * d
  mlp = 2 * d * f + bias * (f + d)
  block = 2 * norm + attn + mlp
  head = 0 if cfg.tie_embeddings else d * v
  return v * d + cfg.seq_len * d + cfg.num_layers * block + norm + head


class Dense(nn.Module):
  """x_...xI @ kernel_IxO... with logical axes; the product runs on 2-D operands.

  Folding the leading dims into one before the matmul matters on CPU, where XLA runs a
  (B*L, D) x (D, F) product about twice as fast as the (B, L, D) form.
  """

  features: tuple[int, ...]
  axes: tuple[str | None, ...]  # (input axis, *output axes)
  cfg: ModelConfig
  in_dims: int = 1  # trailing input dims contracted (2 for heads x head_dim)
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[-self.in_dims :]
    # muP keeps hidden activations' updates the same size at any width: smaller matrices.
    std = self.cfg.init_std * self.init_scale / math.sqrt(self.cfg.width_mult)
    init = nn.initializers.normal(std)
    kernel = self.param(
      'kernel',
      nn.with_logical_partitioning(init, self.axes),
      (*in_shape, *self.features),
      jnp.float32,
    )
    dtype = jnp.dtype(self.cfg.dtype)
    x_2d = x.reshape(-1, math.prod(in_shape)).astype(dtype)
    y_2d = x_2d @ kernel.reshape(math.prod(in_shape), -1).astype(dtype)
    if self.cfg.use_bias:
      bias = self.param(
        'bias',
        nn.with_logical_partitioning(nn.initializers.zeros, self.axes[self.in_dims :]),
        self.features,
        jnp.float32,
      )
      y_2d = y_2d + bias.reshape(-1).astype(dtype)
    return y_2d.reshape(*x.shape[: -self.in_dims], *self.features)


def layer_norm(cfg: ModelConfig, name: str):
  return nn.LayerNorm(
    epsilon=cfg.norm_eps,
    use_bias=cfg.use_bias,
    dtype=jnp.dtype(cfg.dtype),
    param_dtype=jnp.float32,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
    name=name,
  )


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD, cache, lengths_B, segments_BxL, deterministic: bool):
    cfg = self.cfg
    h, k = cfg.num_heads, cfg.head_dim
    # One matmul for query, key and value: a third as many calls, each three times wider,
    # which XLA's CPU backend runs faster than three (D, D) products. Heads come first in
    # the output so that a tensor-parallel shard of the kernel is one contiguous block.
    qkv_BxLxHx3xK = Dense((h, 3, k), ('embed', 'heads', None, 'head_dim'), cfg, name='qkv')(x_BxLxD)
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (qkv_BxLxHx3xK[:, :, :, i] for i in range(3))
    if cfg.parametrization == 'mup':
      # 1/K rather than 1/sqrt(K) (query and key grow correlated under muP), equal to
      # 1/sqrt(K) at the base width: every attention path then applies its own 1/sqrt(K).
      q_BxLxHxK = q_BxLxHxK / math.sqrt(cfg.width_mult)
    names = ('batch', 'length', 'heads', 'head_dim')
    q_BxLxHxK = nn.with_logical_constraint(q_BxLxHxK, names)
    k_BxLxHxK = nn.with_logical_constraint(k_BxLxHxK, names)
    v_BxLxHxK = nn.with_logical_constraint(v_BxLxHxK, names)
    if cache is None:
      dropout = nn.Dropout(cfg.dropout, deterministic=deterministic)
      out_BxLxHxK = attention.self_attention(
        cfg.attention,
        q_BxLxHxK,
        k_BxLxHxK,
        v_BxLxHxK,
        cfg.attention_block,
        dropout,
        segments_BxL,
        cfg.platform or jax.default_backend(),
      )
    else:
      out_BxLxHxK, cache = attention.cached(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, cache, lengths_B)
    out_BxLxHxK = nn.with_logical_constraint(out_BxLxHxK, names)
    # GPT-2 scales the init of projections into the residual stream by 1/sqrt(2N).
    out_BxLxD = Dense(
      (cfg.d_model,),
      ('heads', 'head_dim', 'embed'),
      cfg,
      in_dims=2,
      init_scale=1 / math.sqrt(2 * cfg.num_layers),
      name='out',
    )(out_BxLxHxK)
    return out_BxLxD, cache


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    h_BxLxF = Dense((cfg.mlp_dim,), ('embed', 'mlp'), cfg, name='fc_in')(x_BxLxD)
    h_BxLxF = nn.with_logical_constraint(nn.gelu(h_BxLxF), ('batch', 'length', 'mlp'))
    return Dense(
      (cfg.d_model,),
      ('mlp', 'embed'),
      cfg,
      init_scale=1 / math.sqrt(2 * cfg.num_layers),
      name='fc_out',
    )(h_BxLxF)


class Block(nn.Module):
  """Pre-LayerNorm transformer block: (x, layer cache or None, lengths, segments,
  deterministic) -> (x, layer cache).

  The residual stream is the carry, so nn.scan runs it unchanged. Scanned layers that
  decode pass the carry (x, stacked cache, layer index) instead, and each layer writes
  its slice back into the stack: as a scanned output the stack would be rebuilt, which
  ran decoding 1.6x slower here.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD, cache, lengths_B, segments_BxL, deterministic: bool):
    stacked = None
    if isinstance(x_BxLxD, tuple):
      x_BxLxD, stacked, layer = x_BxLxD
      cache = tuple(jax.lax.dynamic_index_in_dim(c, layer, keepdims=False) for c in stacked)
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=deterministic)
    attn_BxLxD, cache = Attention(cfg, name='attn')(
      layer_norm(cfg, 'ln_attn')(x_BxLxD), cache, lengths_B, segments_BxL, deterministic
    )
    x_BxLxD = x_BxLxD + drop(attn_BxLxD)
    x_BxLxD = x_BxLxD + drop(Mlp(cfg, name='mlp')(layer_norm(cfg, 'ln_mlp')(x_BxLxD)))
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, ('batch', 'length', 'embed'))
    if stacked is not None:
      stacked = tuple(
        jax.lax.dynamic_update_index_in_dim(s, c, layer, 0) for s, c in zip(stacked, cache)
      )
      return (x_BxLxD, stacked, layer + 1), None
    return x_BxLxD, cache


def _block_class(cfg: ModelConfig):
  block = Block
  if cfg.remat != 'none':
    # static_argnums counts self as 0: `deterministic` is argument 5, a Python bool.
    block = nn.remat(
      block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers, static_argnums=(5,)
    )
  return block


def init_cache(cfg: ModelConfig, batch: int):
  """An empty key/value cache for `Transformer(cfg).decode`, each array B x H x S x K.

  Scanned layers take one (k, v) pair stacked over the layers (N x B x H x S x K); unrolled
  layers a tuple of N pairs, which a decode loop updates in place rather than restacking.
  """
  shape = (batch, cfg.num_heads, cfg.seq_len, cfg.head_dim)
  if cfg.scan_layers:
    return (jnp.zeros((cfg.num_layers, *shape), cfg.dtype),) * 2
  return tuple((jnp.zeros(shape, cfg.dtype),) * 2 for _ in range(cfg.num_layers))


class Transformer(nn.Module):
  """The decoder, with one meaning per method (as flax's lm1b separates train, eval and decode):

    hidden(tokens_BxL, ...) -> h_BxLxD: the final normed states, for the loss and other heads
    __call__(tokens_BxL, ...) -> logits_BxLxV (float32): the logits of those states
    decode(tokens_BxT, cache, lengths_B) -> (logits_BxTxV, cache): one cached step

  Packed rows pass `segments_BxL` (tokens attend within their segment) and `positions_BxL`
  (restarting at each segment). In `decode`, row b's tokens take positions lengths_B[b],
  lengths_B[b] + 1, ... and attend to the cache (from init_cache) before them; the caller
  advances lengths_B.
  """

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    init = nn.initializers.normal(cfg.init_std)
    self.tok_embed = self.param(
      'tok_embed',
      nn.with_logical_partitioning(init, ('vocab', 'embed')),
      (cfg.vocab_size, cfg.d_model),
      jnp.float32,
    )
    self.pos_embed = self.param(
      'pos_embed',
      nn.with_logical_partitioning(init, (None, 'embed')),
      (cfg.seq_len, cfg.d_model),
      jnp.float32,
    )
    block = _block_class(cfg)
    if cfg.scan_layers:
      self.blocks = nn.scan(
        block,
        variable_axes={'params': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(nn.broadcast,) * 4,
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: 'layers'},
      )(cfg, name='blocks')
    else:
      self.blocks = [block(cfg, name=f'block_{i}') for i in range(cfg.num_layers)]
    self.ln_final = layer_norm(cfg, 'ln_final')
    # Named as the compact form named it, so that a seed draws the same dropout masks.
    self.embed_dropout = nn.Dropout(cfg.dropout, name='Dropout_0')
    if not cfg.tie_embeddings:
      self.head = Dense(
        (cfg.vocab_size,), ('embed', 'vocab'), dataclasses.replace(cfg, use_bias=False), name='head'
      )

  def hidden(
    self, tokens_BxL, *, segments_BxL=None, positions_BxL=None, deterministic: bool = True
  ):
    x_BxLxD = self._embed(tokens_BxL, positions_BxL, deterministic)
    if self.cfg.scan_layers:
      x_BxLxD, _ = self.blocks(x_BxLxD, None, None, segments_BxL, deterministic)
    else:
      for block in self.blocks:
        x_BxLxD, _ = block(x_BxLxD, None, None, segments_BxL, deterministic)
    return self._final(x_BxLxD)

  def __call__(
    self, tokens_BxL, *, segments_BxL=None, positions_BxL=None, deterministic: bool = True
  ):
    h_BxLxD = self.hidden(
      tokens_BxL,
      segments_BxL=segments_BxL,
      positions_BxL=positions_BxL,
      deterministic=deterministic,
    )
    return self._logits(h_BxLxD)

  def decode(self, tokens_BxT, cache, lengths_B):
    positions_BxT = lengths_B[:, None] + jnp.arange(tokens_BxT.shape[1])
    x_BxTxD = self._embed(tokens_BxT, positions_BxT, deterministic=True)
    if self.cfg.scan_layers:
      (x_BxTxD, cache, _), _ = self.blocks((x_BxTxD, cache, 0), None, lengths_B, None, True)
    else:
      layer_caches = []
      for block, layer_cache in zip(self.blocks, cache):
        x_BxTxD, layer_cache = block(x_BxTxD, layer_cache, lengths_B, None, True)
        layer_caches.append(layer_cache)
      cache = tuple(layer_caches)
    return self._logits(self._final(x_BxTxD)), cache

  def _final(self, x_BxLxD):
    """The final LayerNorm; under muP also the readout's 1/m, which keeps the logits' size
    constant in width (and so applies to every head read from these states)."""
    h_BxLxD = self.ln_final(x_BxLxD)
    if self.cfg.parametrization == 'mup':
      h_BxLxD = h_BxLxD / self.cfg.width_mult
    return h_BxLxD

  def _embed(self, tokens_BxL, positions_BxL, deterministic):
    cfg = self.cfg
    # Gather the table's fsdp shards first (as for any fsdp weight) and look up in the
    # vocab-sharded table: left to itself, the SPMD partitioner replicates the whole lookup.
    table_VxD = nn.with_logical_constraint(self.tok_embed, ('vocab', None))
    pos_LxD = nn.with_logical_constraint(self.pos_embed, (None, None))
    if positions_BxL is None:
      pos_LxD = pos_LxD[: tokens_BxL.shape[1]]
    else:
      pos_LxD = jnp.take(pos_LxD, positions_BxL, axis=0)  # B x L x D
    x_BxLxD = (jnp.take(table_VxD, tokens_BxL, axis=0) + pos_LxD).astype(jnp.dtype(cfg.dtype))
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, ('batch', 'length', 'embed'))
    return self.embed_dropout(x_BxLxD, deterministic=deterministic)

  def _logits(self, h_BxLxD):
    cfg = self.cfg
    if cfg.tie_embeddings:
      table_VxD = self.tok_embed.astype(jnp.dtype(cfg.dtype))
      logits_BxLxV = (h_BxLxD.reshape(-1, cfg.d_model) @ table_VxD.T).reshape(
        *h_BxLxD.shape[:2], cfg.vocab_size
      )
    else:
      logits_BxLxV = self.head(h_BxLxD)
    # The loss's softmax runs in float32 whatever the compute dtype.
    logits_BxLxV = mask_padding(logits_BxLxV.astype(jnp.float32), cfg.valid_vocab)
    return nn.with_logical_constraint(logits_BxLxV, ('batch', 'length', 'vocab'))


# Finite, so that a zero target probability times a padding id's log-probability stays zero.
PADDING_LOGIT = -1e9


def mask_padding(logits_xV, valid_vocab: int):
  """Logits whose ids from `valid_vocab` on (the vocabulary's padding) are PADDING_LOGIT:
  after a softmax in float32 they have probability exactly 0."""
  if not valid_vocab or valid_vocab >= logits_xV.shape[-1]:
    return logits_xV
  ids_xV = jax.lax.broadcasted_iota(jnp.int32, logits_xV.shape, logits_xV.ndim - 1)
  return jnp.where(ids_xV < valid_vocab, logits_xV, PADDING_LOGIT)


def lr_scale(cfg: ModelConfig):
  """muP's per-parameter learning rates for Adam: path -> multiplier, 1/m for the blocks'
  matrices (both sides grow with width) and 1 for the rest; None under 'sp'."""
  if cfg.parametrization != 'mup':
    return None
  hidden = lambda path: path[-1] == 'kernel' and any(str(k).startswith('block') for k in path)
  return lambda path: 1.0 / cfg.width_mult if hidden(path) else 1.0


def output_table(cfg: ModelConfig, params) -> jax.Array:
  """The (V, D) table whose product with the final states gives `Transformer`'s logits:
  the token embedding when tied, else the head's kernel transposed."""
  return params['tok_embed'] if cfg.tie_embeddings else params['head']['kernel'].T
