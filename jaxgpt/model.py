"""A GPT-style decoder in Flax linen: GPT-2's by default, Llama's parts by config
(architecture.py lists them).

Shape legend for tensor names and einsum strings:
  B batch, L length (query positions), S key positions, D model width, H heads,
  G key/value heads, K head dim, F MLP width, V vocabulary, N layers, T new tokens in a
  cached call.

Every parameter and the key activations carry logical axis names (batch, length, embed,
heads, kv_heads, head_dim, mlp, vocab, layers); only the config's rules (configs/mesh.py)
say which mesh axes those map to.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgpt import attention
from jaxgpt import rotary
from jaxgpt.architecture import (  # noqa: F401  (the model's config, re-exported)
  REMAT_POLICIES,
  ModelConfig,
  on_platform,
  param_count,
)


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


def layer_norm(cfg: ModelConfig, name: str, axis: str = 'embed'):
  """The config's norm (LayerNorm or RMSNorm) over the last axis, named `axis`."""
  common = dict(
    epsilon=cfg.norm_eps,
    dtype=jnp.dtype(cfg.dtype),
    param_dtype=jnp.float32,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
    name=name,
  )
  if cfg.norm == 'rmsnorm':
    return nn.RMSNorm(**common)
  return nn.LayerNorm(
    use_bias=cfg.use_bias,
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)),
    **common,
  )


def _qk_norm(cfg: ModelConfig, name: str):
  """RMSNorm of each head's K dims (QK-norm as OLMo 2 and Qwen 3), one scale shared by heads."""
  return layer_norm(dataclasses.replace(cfg, norm='rmsnorm'), name, 'head_dim')


class Attention(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD, cache, lengths_B, segments_BxL, positions_BxL, deterministic):
    cfg = self.cfg
    h, g, k = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    if g == h:
      # One matmul for query, key and value: a third as many calls, each three times wider,
      # which XLA's CPU backend runs faster than three (D, D) products. Heads come first in
      # the output so that a tensor-parallel shard of the kernel is one contiguous block.
      qkv_BxLxHx3xK = Dense((h, 3, k), ('embed', 'heads', None, 'head_dim'), cfg, name='qkv')(
        x_BxLxD
      )
      q_BxLxHxK, k_BxLxGxK, v_BxLxGxK = (qkv_BxLxHx3xK[:, :, :, i] for i in range(3))
    else:
      # Grouped-query attention: queries and keys/values shard over `tensor` separately,
      # so the query heads stay split when the key/value heads are too few to be.
      q_BxLxHxK = Dense((h, k), ('embed', 'heads', 'head_dim'), cfg, name='q')(x_BxLxD)
      kv_BxLxGx2xK = Dense((g, 2, k), ('embed', 'kv_heads', None, 'head_dim'), cfg, name='kv')(
        x_BxLxD
      )
      k_BxLxGxK, v_BxLxGxK = kv_BxLxGx2xK[:, :, :, 0], kv_BxLxGx2xK[:, :, :, 1]
    if cfg.qk_norm:
      q_BxLxHxK = _qk_norm(cfg, 'q_norm')(q_BxLxHxK)
      k_BxLxGxK = _qk_norm(cfg, 'k_norm')(k_BxLxGxK)
    if cfg.position == 'rope':
      q_BxLxHxK = rotary.rotate(q_BxLxHxK, positions_BxL, cfg.rope_theta)
      k_BxLxGxK = rotary.rotate(k_BxLxGxK, positions_BxL, cfg.rope_theta)
    if cfg.parametrization == 'mup':
      # 1/K rather than 1/sqrt(K) (query and key grow correlated under muP), equal to
      # 1/sqrt(K) at the base width: every attention path then applies its own 1/sqrt(K).
      q_BxLxHxK = q_BxLxHxK / math.sqrt(cfg.width_mult)
    q_names = ('batch', 'length', 'heads', 'head_dim')
    kv_names = ('batch', 'length', 'heads' if g == h else 'kv_heads', 'head_dim')
    q_BxLxHxK = nn.with_logical_constraint(q_BxLxHxK, q_names)
    k_BxLxGxK = nn.with_logical_constraint(k_BxLxGxK, kv_names)
    v_BxLxGxK = nn.with_logical_constraint(v_BxLxGxK, kv_names)
    if cache is None:
      dropout = nn.Dropout(cfg.dropout, deterministic=deterministic)
      out_BxLxHxK = attention.self_attention(
        cfg.attention,
        q_BxLxHxK,
        k_BxLxGxK,
        v_BxLxGxK,
        cfg.attention_block,
        dropout,
        segments_BxL,
        cfg.platform or jax.default_backend(),
      )
    else:
      out_BxLxHxK, cache = attention.cached(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, cache, lengths_B)
    out_BxLxHxK = nn.with_logical_constraint(out_BxLxHxK, q_names)
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
    f = cfg.mlp_dim
    if cfg.mlp == 'swiglu':
      # Gate and up projections in one kernel, D x F x 2: a tensor-parallel shard of F holds
      # both halves of its units, so the product needs no communication.
      h_BxLxFx2 = Dense((f, 2), ('embed', 'mlp', None), cfg, name='fc_in')(x_BxLxD)
      h_BxLxF = nn.silu(h_BxLxFx2[..., 0]) * h_BxLxFx2[..., 1]
    else:
      h_BxLxF = nn.gelu(Dense((f,), ('embed', 'mlp'), cfg, name='fc_in')(x_BxLxD))
    h_BxLxF = nn.with_logical_constraint(h_BxLxF, ('batch', 'length', 'mlp'))
    return Dense(
      (cfg.d_model,),
      ('mlp', 'embed'),
      cfg,
      init_scale=1 / math.sqrt(2 * cfg.num_layers),
      name='fc_out',
    )(h_BxLxF)


class Block(nn.Module):
  """Pre-norm transformer block: (x, layer cache or None, lengths, segments, positions,
  deterministic) -> (x, layer cache).

  The residual stream is the carry, so nn.scan runs it unchanged. Scanned layers that
  decode pass the carry (x, stacked cache, layer index) instead, and each layer writes
  its slice back into the stack: as a scanned output the stack would be rebuilt, which
  ran decoding 1.6x slower here.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD, cache, lengths_B, segments_BxL, positions_BxL, deterministic):
    stacked = None
    if isinstance(x_BxLxD, tuple):
      x_BxLxD, stacked, layer = x_BxLxD
      cache = tuple(jax.lax.dynamic_index_in_dim(c, layer, keepdims=False) for c in stacked)
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=deterministic)
    attn_BxLxD, cache = Attention(cfg, name='attn')(
      layer_norm(cfg, 'ln_attn')(x_BxLxD),
      cache,
      lengths_B,
      segments_BxL,
      positions_BxL,
      deterministic,
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
    # static_argnums counts self as 0: `deterministic` is argument 6, a Python bool.
    block = nn.remat(
      block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers, static_argnums=(6,)
    )
  return block


def init_cache(cfg: ModelConfig, batch: int):
  """An empty key/value cache for `Transformer(cfg).decode`, each array B x G x S x K (G
  key/value heads: fewer than the query heads under grouped-query attention).

  Scanned layers take one (k, v) pair stacked over the layers (N x B x G x S x K); unrolled
  layers a tuple of N pairs, which a decode loop updates in place rather than restacking.
  """
  shape = (batch, cfg.kv_heads, cfg.seq_len, cfg.head_dim)
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
    if cfg.position == 'learned':
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
        in_axes=(nn.broadcast,) * 5,
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
    if positions_BxL is None:
      positions_BxL = jnp.arange(tokens_BxL.shape[1])[None]
    args = (None, None, segments_BxL, positions_BxL, deterministic)
    if self.cfg.scan_layers:
      x_BxLxD, _ = self.blocks(x_BxLxD, *args)
    else:
      for block in self.blocks:
        x_BxLxD, _ = block(x_BxLxD, *args)
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
      (x_BxTxD, cache, _), _ = self.blocks(
        (x_BxTxD, cache, 0), None, lengths_B, None, positions_BxT, True
      )
    else:
      layer_caches = []
      for block, layer_cache in zip(self.blocks, cache):
        x_BxTxD, layer_cache = block(x_BxTxD, layer_cache, lengths_B, None, positions_BxT, True)
        layer_caches.append(layer_cache)
      cache = tuple(layer_caches)
    return self._logits(self._final(x_BxTxD)), cache

  def _final(self, x_BxLxD):
    """The final norm; under muP also the readout's 1/m, which keeps the logits' size
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
    x_BxLxD = jnp.take(table_VxD, tokens_BxL, axis=0)
    if cfg.position == 'learned':  # (RoPE acts inside attention instead)
      pos_LxD = nn.with_logical_constraint(self.pos_embed, (None, None))
      if positions_BxL is None:
        pos_LxD = pos_LxD[: tokens_BxL.shape[1]]
      else:
        pos_LxD = jnp.take(pos_LxD, positions_BxL, axis=0)  # B x L x D
      x_BxLxD = x_BxLxD + pos_LxD
    x_BxLxD = x_BxLxD.astype(jnp.dtype(cfg.dtype))
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
