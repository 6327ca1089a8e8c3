"""Sampling with temperature and top-k.

This first version recomputes the whole window for every new token (a fixed (B, L)
buffer, so one compiled function serves every step); prompts longer than the model's
context keep their last seq_len tokens.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def sample_logits(logits_BxV, rng, temperature: float, top_k: int):
  if temperature <= 0:
    return jnp.argmax(logits_BxV, axis=-1)
  logits_BxV = logits_BxV / temperature
  if top_k:
    kth_B1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_B1, -jnp.inf, logits_BxV)
  return jax.random.categorical(rng, logits_BxV, axis=-1)


def make_next_token(model, temperature: float, top_k: int, mesh):
  replicated = NamedSharding(mesh, P())

  @functools.partial(jax.jit, out_shardings=replicated)
  def next_token(params, tokens_BxL, last_B, rng):
    logits_BxLxV = model.apply({'params': params}, tokens_BxL, deterministic=True)
    logits_BxV = jnp.take_along_axis(logits_BxLxV, last_B[:, None, None], axis=1)[:, 0]
    return sample_logits(logits_BxV, rng, temperature, top_k)

  # Inputs become global replicated arrays: every process passes the same host values.
  to_global = lambda x: jax.make_array_from_process_local_data(replicated, x)
  return lambda params, tokens, last, rng: next_token(params, to_global(tokens),
                                                      to_global(last), rng)


def sample(model, params, tokenizer, prompts: list[str], max_new_tokens: int,
           temperature: float = 1.0, top_k: int = 0, seed: int = 0) -> list[str]:
  """Continues each prompt by up to max_new_tokens, stopping at end-of-document."""
  seq_len = model.cfg.seq_len
  mesh = jax.tree.leaves(params)[0].sharding.mesh
  next_token = make_next_token(model, temperature, top_k, mesh)
  seqs = [tokenizer.encode(p) or [tokenizer.eod_id] for p in prompts]
  starts = [len(s) for s in seqs]
  done = [False] * len(seqs)
  rng = jax.random.key(seed)
  for i in range(max_new_tokens):
    window = np.full((len(seqs), seq_len), tokenizer.pad_id, np.int32)
    last = np.zeros(len(seqs), np.int32)
    for b, s in enumerate(seqs):
      tail = s[-seq_len:]
      window[b, :len(tail)] = tail
      last[b] = len(tail) - 1
    new = np.asarray(next_token(params, window, last, jax.random.fold_in(rng, i)))
    for b, tok in enumerate(new):
      if not done[b]:
        seqs[b].append(int(tok))
        done[b] = int(tok) == tokenizer.eod_id
    if all(done):
      break
  return [tokenizer.decode([t for t in s[start:] if t != tokenizer.eod_id])
          for s, start in zip(seqs, starts)]
