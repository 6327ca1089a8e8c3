"""KV-cache decoding: the cached path against the full forward pass, and sampling."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import generate
from jaxgpt import model as model_lib

CFG = model_lib.ModelConfig(
  vocab_size=96, seq_len=24, num_layers=2, num_heads=4, d_model=32, mlp_dim=64, attention_block=8
)
EOD, PAD = 2, 0


def _init(cfg):
  m = model_lib.Transformer(cfg)
  tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
  params = nn.unbox(jax.jit(m.init)(jax.random.key(0), tokens)['params'])
  return m, jax.device_put(params)


# Llama's parts (RoPE, RMSNorm, SwiGLU, no biases) with grouped-query attention and QK-norm;
# and multi-query attention with scanned layers.
LLAMA = dict(position='rope', norm='rmsnorm', mlp='swiglu', use_bias=False, num_kv_heads=2)
MQA = dict(position='rope', num_kv_heads=1, qk_norm=True, scan_layers=True)


@pytest.mark.parametrize(
  'overrides',
  [
    {},
    {'scan_layers': True, 'remat': 'full'},
    {'use_bias': False, 'tie_embeddings': False},
    dict(LLAMA, qk_norm=True),
    MQA,
  ],
)
def test_cached_logits_equal_full_forward_at_every_position(overrides):
  cfg = dataclasses.replace(CFG, **overrides)
  m, params = _init(cfg)
  decode = jax.jit(lambda p, t, c, n: m.apply({'params': p}, t, c, n, method='decode'))
  tokens = np.asarray(jax.random.randint(jax.random.key(3), (3, cfg.seq_len), 3, cfg.vocab_size))
  prompt_lengths = np.array([1, 7, 13])  # rows of different lengths share the batch
  # Prefill: the prompts right-padded with junk that must not leak into any logits.
  padded = np.where(np.arange(13) < prompt_lengths[:, None], tokens[:, :13], 5)
  cache = model_lib.init_cache(cfg, 3)
  assert cache_heads(cache) == cfg.kv_heads  # the cache holds key/value heads only
  logits, cache = decode(params, padded, cache, jnp.zeros(3, int))
  cached = [[logits[b, t] for t in range(n)] for b, n in enumerate(prompt_lengths)]
  lengths = prompt_lengths.copy()
  while lengths.min() < cfg.seq_len:  # then one token at a time, all rows together
    step_tokens = tokens[np.arange(3), np.minimum(lengths, cfg.seq_len - 1)][:, None]
    logits, cache = decode(
      params, step_tokens, cache, jnp.asarray(np.minimum(lengths, cfg.seq_len - 1))
    )
    for b in np.flatnonzero(lengths < cfg.seq_len):
      cached[b].append(logits[b, 0])
    lengths += 1
  full = jax.jit(lambda p, t: m.apply({'params': p}, t))(params, tokens)
  for b in range(3):
    np.testing.assert_allclose(np.stack(cached[b]), full[b], atol=1e-5, rtol=0)


def cache_heads(cache) -> int:
  """The head axis of a cache's key array: B x G x S x K, after a layer axis when scanned."""
  keys = jax.tree.leaves(cache)[0]
  return keys.shape[-3]


def _generator(s: generate.Sampling, eod=EOD, cfg=CFG):
  m, params = _init(cfg)
  mesh = jax.sharding.Mesh(jax.devices()[:1], ('data',))
  return generate.Generator(m, params, mesh, s, eod_id=eod, pad_id=PAD)


PROMPTS = [[5, 6, 7], [9] * 11, [4], list(range(10, 17))]


@pytest.mark.parametrize(
  's',
  [
    generate.Sampling(10, temperature=0.0),
    generate.Sampling(12, 1.0, top_k=20, top_p=0.9, seed=3),
    generate.Sampling(9, 0.7, top_p=0.5, seed=1),
  ],
)
def test_cached_and_uncached_decoding_draw_the_same_tokens(s):
  gen = _generator(s)
  cached = gen.generate(PROMPTS)
  assert cached == gen.generate_uncached(PROMPTS)
  assert [len(x) for x in cached] == [s.max_new_tokens] * len(PROMPTS)


def test_grouped_query_decoding_draws_as_the_full_forward_pass():
  gen = _generator(
    generate.Sampling(12, 1.0, top_k=20, seed=2), cfg=dataclasses.replace(CFG, **LLAMA)
  )
  cached = gen.generate(PROMPTS)
  assert cached == gen.generate_uncached(PROMPTS)
  assert [len(x) for x in cached] == [12] * len(PROMPTS)


def test_sampling_is_reproducible_from_a_seed():
  first = _generator(generate.Sampling(10, 1.0, seed=7)).generate(PROMPTS)
  assert first == _generator(generate.Sampling(10, 1.0, seed=7)).generate(PROMPTS)
  assert first != _generator(generate.Sampling(10, 1.0, seed=8)).generate(PROMPTS)


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
  probs = np.array([[0.4, 0.3, 0.15, 0.1, 0.05], [0.05, 0.9, 0.02, 0.02, 0.01]])
  logits = jnp.log(jnp.asarray(probs))
  kept = lambda k, p: np.isfinite(generate.filter_logits(logits, k, p))
  np.testing.assert_array_equal(kept(2, 1.0), [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]])
  # Nucleus 0.8: tokens until the mass above them reaches 0.8 (0.4+0.3 < 0.8, so the third).
  np.testing.assert_array_equal(kept(0, 0.8), [[1, 1, 1, 0, 0], [0, 1, 0, 0, 0]])
  np.testing.assert_array_equal(kept(2, 0.8), [[1, 1, 0, 0, 0], [0, 1, 0, 0, 0]])
  s = generate.Sampling(temperature=1.0, top_k=3, top_p=0.6)
  draws = np.concatenate(
    [np.asarray(generate.sample_logits(logits, jax.random.key(i), s)) for i in range(200)]
  ).reshape(200, 2)
  assert set(draws[:, 0]) == {0, 1} and set(draws[:, 1]) == {1}


def test_rows_stop_at_the_end_of_document_id():
  s = generate.Sampling(10, temperature=0.0)
  free = _generator(s, eod=-1).generate(PROMPTS)  # an id never drawn: no row stops
  eod = free[0][3]  # the token row 0 draws fourth becomes the end of document
  stopped = _generator(s, eod=eod).generate(PROMPTS)
  for row, full in zip(stopped, free):
    end = full.index(eod) + 1 if eod in full else len(full)
    assert row == full[:end]
  assert stopped[0][-1] == eod and len(stopped[0]) <= 4 < len(free[0])


def test_generation_past_the_context_slides_the_window():
  s = generate.Sampling(3 * CFG.seq_len, temperature=0.0)
  gen = _generator(s)
  long = gen.generate(PROMPTS)
  assert [len(x) for x in long] == [3 * CFG.seq_len] * len(PROMPTS)
  # Until the longest row fills the context, this is the uncached path's output.
  within = CFG.seq_len - max(map(len, PROMPTS))
  short = _generator(dataclasses.replace(s, max_new_tokens=within)).generate_uncached(PROMPTS)
  assert [x[:within] for x in long] == short
