"""The decoder's config (`ModelConfig`), its checks, and its closed-form parameter count.

One model, two families of parts, each a field whose default is GPT-2's:

| field | GPT-2 (default) | Llama-style |
|---|---|---|
| position | 'learned' table | 'rope': rotary embeddings of q and k (rope_theta) |
| norm | 'layernorm' | 'rmsnorm' |
| mlp | 'gelu', D -> F -> D | 'swiglu': silu(x W_gate) * (x W_up), then W_down |
| num_kv_heads | = num_heads | fewer: grouped-query attention (1: multi-query) |
| qk_norm | off | RMSNorm of each head's queries and keys |
| use_bias | biases everywhere | none |
"""

import dataclasses
import logging

import jax

from jaxgpt import attention
from jaxgpt.errors import UserError

PARAMETRIZATIONS = ('sp', 'mup')
POSITIONS = ('learned', 'rope')
NORMS = ('layernorm', 'rmsnorm')
MLPS = ('gelu', 'swiglu')
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
  position: str = 'learned'
  rope_theta: float = 10_000.0
  norm: str = 'layernorm'
  mlp: str = 'gelu'
  num_kv_heads: int = 0  # 0: num_heads
  qk_norm: bool = False

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def kv_heads(self) -> int:
    """Key/value heads: num_heads, or fewer under grouped-query attention."""
    return self.num_kv_heads or self.num_heads

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
    _check_decoder(m)
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
      mlp_dim=m.mlp_dim or default_mlp_dim(m.d_model, m.mlp),
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
      position=m.position,
      rope_theta=m.rope_theta,
      norm=m.norm,
      mlp=m.mlp,
      num_kv_heads=m.num_kv_heads,
      qk_norm=m.qk_norm,
    )

  @property
  def attention(self) -> str:
    """The attention implementation this model runs (see attention.choose)."""
    platform = self.platform or jax.default_backend()
    return attention.choose(self.attention_impl, platform, self.dtype, self.dropout, self.seq_len)


def _check_decoder(m):
  """The decoder options (the table in this module's docstring)."""
  for key, choices in (('position', POSITIONS), ('norm', NORMS), ('mlp', MLPS)):
    if m[key] not in choices:
      raise UserError(f'model.{key}={m[key]!r}: use one of {", ".join(choices)}')
  if m.position == 'rope':
    if (m.d_model // m.num_heads) % 2:
      raise UserError(
        f"model.position='rope' rotates pairs of a head's dimensions, and model.d_model="
        f'{m.d_model} / model.num_heads={m.num_heads} = {m.d_model // m.num_heads} is odd: '
        'pick heads that give an even head size'
      )
  if m.rope_theta <= 1:
    raise UserError(f'model.rope_theta={m.rope_theta} must be above 1 (Llama: 10000, 500000)')
  kv = m.num_kv_heads
  if kv < 0 or kv > m.num_heads or (kv and m.num_heads % kv):
    divisors = [h for h in range(1, m.num_heads + 1) if m.num_heads % h == 0]
    raise UserError(
      f'model.num_kv_heads={kv} must divide model.num_heads={m.num_heads} (each key/value '
      f'head serves a group of query heads): use one of {divisors}, or 0 for num_heads'
    )


def default_mlp_dim(d_model: int, mlp: str) -> int:
  """4 D for GELU; for SwiGLU, whose three matrices should cost GELU's two, 2/3 of that
  rounded up to a multiple of 256 (Llama's rule: 11008 at width 4096)."""
  if mlp == 'swiglu':
    return -(-int(8 * d_model / 3) // 256) * 256
  return 4 * d_model


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


def position_params(cfg: ModelConfig) -> int:
  """The learned position table's size (none under RoPE)."""
  return cfg.seq_len * cfg.d_model if cfg.position == 'learned' else 0


def param_count(cfg: ModelConfig) -> int:
  """The closed-form parameter count of `Transformer(cfg)`."""
  d, f, v, k = cfg.d_model, cfg.mlp_dim, cfg.vocab_size, cfg.head_dim
  h, g = cfg.num_heads, cfg.kv_heads
  bias = int(cfg.use_bias)
  norm = d * (1 + bias * (cfg.norm == 'layernorm'))  # RMSNorm has no bias
  qkv = d * (h + 2 * g) * k + bias * (h + 2 * g) * k
  attn = qkv + h * k * d + bias * d + 2 * k * cfg.qk_norm
  mats = 3 if cfg.mlp == 'swiglu' else 2
  mlp = mats * d * f + bias * ((mats - 1) * f + d)
  block = 2 * norm + attn + mlp
  head = 0 if cfg.tie_embeddings else d * v
  return v * d + position_params(cfg) + cfg.num_layers * block + norm + head
