"""Sampling: a jitted prefill of the prompts, then a jitted decode loop over a KV cache.

Prompts of different lengths share a batch: each row of the cache has its own length, so
no row is padded on the left or shifted. A row stops at the end-of-document id; the loop
stops when every row has. When the longest row reaches the model's context (seq_len), the
rows are cut to their last part and prefilled again, as a sliding window would.

Token k of every row is drawn with the key fold_in(key(seed), k), so a seed fixes the
samples, and the cached and uncached paths draw the same tokens from the same logits.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgpt import model as model_lib
from jaxgpt.errors import UserError


@dataclasses.dataclass(frozen=True)
class Sampling:
  max_new_tokens: int = 64
  temperature: float = 1.0  # 0: greedy
  top_k: int = 0  # keep the k most likely tokens (0: all)
  top_p: float = 1.0  # keep the smallest set whose probability reaches p (1: all)
  seed: int = 0

  @classmethod
  def from_config(cls, e, vocab_size: int = 0) -> 'Sampling':
    """eval's sampling fields, checked (top_k against the vocabulary when it is given)."""
    if e.sample_tokens <= 0:
      raise UserError(f'eval.sample_tokens={e.sample_tokens} must be positive')
    if e.temperature < 0:
      raise UserError(f'eval.temperature={e.temperature} must be >= 0 (0: greedy decoding)')
    if not 0 < e.top_p <= 1:
      raise UserError(f'eval.top_p={e.top_p} must be in (0, 1] (1: no nucleus cut)')
    if e.top_k < 0 or (vocab_size and e.top_k > vocab_size):
      raise UserError(
        f'eval.top_k={e.top_k} must be 0 (all tokens) to the vocabulary size'
        f'{f" {vocab_size}" if vocab_size else ""}'
      )
    return cls(e.sample_tokens, e.temperature, e.top_k, e.top_p, e.seed)


def filter_logits(logits_BxV, top_k: int, top_p: float):
  """Sets the logits of tokens outside the top-k and the top-p nucleus to -inf."""
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # A token stays while the probability of the tokens ranked above it is below p; the
    # most likely token always stays.
    above_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    kept_BxV = jnp.where(above_BxV < top_p, sorted_BxV, jnp.inf)
    cutoff_Bx1 = kept_BxV.min(axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
  return logits_BxV


def sample_logits(logits_BxV, rng, s: Sampling):
  if s.temperature <= 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = filter_logits(logits_BxV / s.temperature, s.top_k, s.top_p)
  return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


def bucket_length(n: int, cap: int) -> int:
  """Lengths round up to a power of two (at least 8, at most cap): few compilations of a
  jitted function of padded rows, little padding."""
  return min(cap, max(8, 1 << (n - 1).bit_length()))


class Generator:
  """generate(prompt ids) -> new ids per prompt, with the model's params on `mesh`."""

  def __init__(self, model, params, mesh, s: Sampling, eod_id: int, pad_id: int):
    self.model, self.params, self.s = model, params, s
    self.eod_id, self.pad_id = eod_id, pad_id
    self.seq_len = model.cfg.seq_len
    self.replicated = NamedSharding(mesh, P())
    jit = functools.partial(jax.jit, out_shardings=self.replicated)
    self._prefill = jit(self._prefill_fn)
    self._decode = jit(self._decode_fn)
    self._forward = jit(self._forward_fn)

  def _rng(self, k):
    return jax.random.fold_in(jax.random.key(self.s.seed), k)

  def _prefill_fn(self, params, tokens_BxP, lengths_B, index):
    """Fills an empty cache with the prompts; draws each row's next token."""
    cache = model_lib.init_cache(self.model.cfg, tokens_BxP.shape[0])
    logits_BxPxV, cache = self.model.apply(
      {'params': params}, tokens_BxP, cache, jnp.zeros_like(lengths_B), method='decode'
    )
    last_BxV = jnp.take_along_axis(logits_BxPxV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
    return sample_logits(last_BxV, self._rng(index), self.s), cache

  def _decode_fn(self, params, cache, lengths_B, token_B, done_B, index, steps):
    """Records `token_B`, feeds it, draws the next; `steps` times or until all rows end."""

    def body(carry):
      i, token_B, cache, lengths_B, done_B, out_BxS = carry
      token_B = jnp.where(done_B, self.pad_id, token_B)
      out_BxS = out_BxS.at[:, i].set(token_B)
      done_B = done_B | (token_B == self.eod_id)
      logits_Bx1xV, cache = self.model.apply(
        {'params': params}, token_B[:, None], cache, lengths_B, method='decode'
      )
      token_B = sample_logits(logits_Bx1xV[:, 0], self._rng(index + i + 1), self.s)
      return i + 1, token_B, cache, lengths_B + 1, done_B, out_BxS

    cond = lambda carry: (carry[0] < steps) & ~carry[4].all()
    out_BxS = jnp.full((token_B.shape[0], self.seq_len), self.pad_id, jnp.int32)
    i, _, _, _, _, out_BxS = jax.lax.while_loop(
      cond, body, (jnp.int32(0), token_B, cache, lengths_B, done_B, out_BxS)
    )
    return out_BxS, i

  def _forward_fn(self, params, tokens_BxL, last_B, index):
    logits_BxLxV = self.model.apply({'params': params}, tokens_BxL)
    last_BxV = jnp.take_along_axis(logits_BxLxV, last_B[:, None, None], axis=1)[:, 0]
    return sample_logits(last_BxV, self._rng(index), self.s)

  def _global(self, x):
    """Host values (the same on every process) as a replicated global array."""
    return jax.make_array_from_process_local_data(self.replicated, np.asarray(x))

  def _padded(self, rows: list[list[int]], width: int):
    tokens = np.full((len(rows), width), self.pad_id, np.int32)
    for b, row in enumerate(rows):
      tokens[b, : len(row)] = row
    return self._global(tokens), self._global(np.array([len(r) for r in rows], np.int32))

  def generate(self, prompts: list[list[int]]) -> list[list[int]]:
    """Up to max_new_tokens new ids per prompt, ending with the end-of-document id if drawn."""
    seqs = [list(p) or [self.eod_id] for p in prompts]
    new = [[] for _ in seqs]
    done = np.zeros(len(seqs), bool)
    budget, index, S = self.s.max_new_tokens, 0, self.seq_len
    while budget > 0 and not done.all():
      # Leave room for the rest of the budget, or half the context, whichever is less.
      contexts = [s[-(S - min(budget, S // 2)) :] for s in seqs]
      longest = max(map(len, contexts))
      tokens_BxP, lengths_B = self._padded(contexts, bucket_length(longest, S))
      token_B, cache = self._prefill(self.params, tokens_BxP, lengths_B, index)
      steps = min(budget, S - longest)
      out_BxS, n = self._decode(
        self.params, cache, lengths_B, token_B, self._global(done), index, steps
      )
      out_BxS, n = np.asarray(out_BxS), int(n)
      for b in np.flatnonzero(~done):
        row = out_BxS[b, :n].tolist()
        if self.eod_id in row:
          row, done[b] = row[: row.index(self.eod_id) + 1], True
        new[b] += row
        seqs[b] += row
      budget, index = budget - n, index + n
    return new

  def generate_uncached(self, prompts: list[list[int]]) -> list[list[int]]:
    """The reference path: a full forward over each row's prefix for every new token.

    The window is the prefix padded to a multiple of 64, so the cost per token grows with
    the length, as recomputation does. Same draws as `generate` within one context.
    """
    seqs = [list(p) or [self.eod_id] for p in prompts]
    new = [[] for _ in seqs]
    for index in range(self.s.max_new_tokens):
      live = [b for b in range(len(seqs)) if not new[b] or new[b][-1] != self.eod_id]
      if not live:
        break
      windows = [s[-self.seq_len :] for s in seqs]
      width = min(self.seq_len, -(-max(map(len, windows)) // 64) * 64)
      tokens_BxL, lengths_B = self._padded(windows, width)
      last_B = self._global(np.asarray(lengths_B) - 1)
      token_B = np.asarray(self._forward(self.params, tokens_BxL, last_B, index))
      for b in live:
        new[b].append(int(token_B[b]))
        seqs[b].append(int(token_B[b]))
    return new


def sample(model, params, mesh, tokenizer, prompts: list[str], s: Sampling) -> list[str]:
  """Continues each prompt; the texts stop before the end-of-document id."""
  gen = Generator(model, params, mesh, s, tokenizer.eod_id, tokenizer.pad_id)
  new = gen.generate([tokenizer.encode(p) for p in prompts])
  return [tokenizer.decode([t for t in ids if t != tokenizer.eod_id]) for ids in new]
