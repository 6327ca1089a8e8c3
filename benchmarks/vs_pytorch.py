"""jaxgpt's train step against a PyTorch GPT of the same architecture, side by side.

    python benchmarks/vs_pytorch.py [--rounds=5] [--steps=20] [--shapes=small,default,medium]

The PyTorch reference is written here for the purpose, as nanoGPT writes its model: eager,
float32, pre-LayerNorm blocks with a fused qkv projection, `F.scaled_dot_product_attention`
(causal), a tanh-GELU MLP of 4x width, tied embeddings, biases, no dropout,
`torch.optim.AdamW` (weight decay on matrices only) and a global-norm clip of 1.0, on as many
threads as this machine has cores. jaxgpt runs its real jitted train step (step.py) with
the default experiment's execution settings on one device.

With `--floor`, each shape's matrix products are also timed alone, one at a time, in each
framework (XLA's dots, PyTorch's `torch.mm`/`torch.bmm`, on the same threads): their sum is
the time a step could not go below with that framework's kernels for those shapes, and
`pytorch_step / xla_dots` the most jaxgpt's ratio could be were everything else free.

Each counts what a user's loop does per step: a batch of random token windows cut from a
token array on the host (the data), handed to the framework, one optimizer step, and the
loss read back at the end of each round (the metric). Rounds alternate between the two, so
that the machine's drift touches both alike; the figures are medians over rounds. Writes
benchmarks/vs_pytorch.json.
"""

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxgpt import hugepages  # noqa: E402

hugepages.ensure()  # before jax loads; see jaxgpt/hugepages.py

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import common  # noqa: E402
from jaxgpt import sharding  # noqa: E402
from jaxgpt import step as step_lib  # noqa: E402

SHAPES = {  # name: (layers, heads, width, seq_len, batch, vocab)
  'small': (4, 4, 128, 64, 12, 65),  # nanoGPT's CPU recipe for tiny Shakespeare
  'default': (4, 4, 256, 128, 16, 8192),  # the default experiment
  'medium': (6, 6, 384, 256, 16, 65),
}


class Block(nn.Module):
  def __init__(self, d, heads):
    super().__init__()
    self.heads = heads
    self.ln_attn, self.ln_mlp = nn.LayerNorm(d), nn.LayerNorm(d)
    self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
    self.fc_in, self.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

  def forward(self, x):
    b, n, d = x.shape
    q, k, v = self.qkv(self.ln_attn(x)).split(d, dim=2)
    q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.out(y.transpose(1, 2).reshape(b, n, d))
    return x + self.fc_out(F.gelu(self.fc_in(self.ln_mlp(x)), approximate='tanh'))


class TorchGPT(nn.Module):
  def __init__(self, layers, heads, d, seq_len, vocab):
    super().__init__()
    self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
    self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
    self.ln_final = nn.LayerNorm(d)
    for p in self.parameters():
      if p.dim() > 1:
        nn.init.normal_(p, std=0.02)

  def forward(self, tokens, targets):
    x = self.tok(tokens) + self.pos.weight[: tokens.shape[1]]
    for block in self.blocks:
      x = block(x)
    logits = self.ln_final(x) @ self.tok.weight.T
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class Windows:
  """Random (batch, seq_len + 1) windows of a token array, cut on the host each step."""

  def __init__(self, vocab, seq_len, batch, seed=0):
    self.rng = np.random.default_rng(seed)
    self.tokens = self.rng.integers(0, vocab, 1 << 20).astype(np.int32)
    self.seq_len, self.batch = seq_len, batch

  def next(self):
    starts = self.rng.integers(0, len(self.tokens) - self.seq_len - 1, self.batch)
    rows = np.stack([self.tokens[s : s + self.seq_len + 1] for s in starts])
    return rows[:, :-1], rows[:, 1:]


def torch_runner(layers, heads, d, seq_len, batch, vocab):
  torch.manual_seed(0)
  model = TorchGPT(layers, heads, d, seq_len, vocab)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  rest = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW(
    [{'params': decay, 'weight_decay': 0.1}, {'params': rest, 'weight_decay': 0.0}],
    lr=1e-3,
    betas=(0.9, 0.95),
    eps=1e-8,
  )
  data = Windows(vocab, seq_len, batch)

  def run(steps):
    for _ in range(steps):
      inputs, targets = (torch.from_numpy(a).long() for a in data.next())
      loss = model(inputs, targets)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()
    return loss.item()

  return run


def jax_runner(layers, heads, d, seq_len, batch, vocab):
  config = common.model_config(layers, heads, d, seq_len, batch, vocab=vocab)
  config.model.vocab_multiple = 1  # the same vocabulary as the reference
  run_ = common.setup(config)
  holder = [run_.init_state(0)]
  data = Windows(vocab, seq_len, batch)
  weights = np.ones((batch, seq_len), np.float32)
  with run_.context():
    step = step_lib.jit_train_step(run_, config)

  def run(steps):
    with run_.context():
      for _ in range(steps):
        inputs, targets = data.next()
        batch_ = {'inputs': inputs, 'targets': targets, 'weights': weights}
        holder[0], metrics = step(holder[0], sharding.global_batch(batch_, run_.mesh))
      return float(metrics['loss'])

  return run


def step_products(layers, heads, d, seq_len, batch, vocab):
  """(shape, count) of every matrix product in one train step: (m, k, n) for 2-D ones,
  (b, m, k, n) for attention's batched ones; forward and both backward products."""
  rows, head_dim = batch * seq_len, d // heads
  out = []
  for fan_in, fan_out in ((d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)):
    out += [((rows, fan_in, fan_out), layers), ((rows, fan_out, fan_in), layers)]
    out += [((fan_in, rows, fan_out), layers)]
  out += [((rows, d, vocab), 1), ((rows, vocab, d), 1), ((vocab, rows, d), 1)]  # tied logits
  bh = batch * heads
  out += [
    ((bh, seq_len, head_dim, seq_len), 3 * layers),
    ((bh, seq_len, seq_len, head_dim), 3 * layers),
  ]
  return out


def _median_call_s(fn, calls=50, rounds=5):
  for _ in range(5):
    fn()
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(calls):
      fn()
    times.append((time.perf_counter() - start) / calls)
  return statistics.median(times)


def dots_alone_ms(shape) -> dict:
  """Each framework's sum over step_products, each product timed alone."""
  rng = np.random.default_rng(0)
  total = {'xla': 0.0, 'torch': 0.0}
  product = jax.jit(lambda a, b: a @ b)  # batched when the operands are 3-D
  for dims, count in step_products(*shape):
    lhs = rng.random(dims[:-1], np.float32)
    rhs = rng.random((*dims[:-3], dims[-2], dims[-1]), np.float32)
    ja, jb = jax.device_put(lhs), jax.device_put(rhs)
    ta, tb = torch.from_numpy(lhs), torch.from_numpy(rhs)
    total['xla'] += count * _median_call_s(lambda: product(ja, jb).block_until_ready())
    total['torch'] += count * _median_call_s(lambda: torch.matmul(ta, tb))
  return {k: round(v * 1e3, 2) for k, v in total.items()}


def measure(name, shape, rounds, steps, floor=False):
  tokens = shape[4] * shape[3] * steps
  runners = {'pytorch': torch_runner(*shape), 'jaxgpt': jax_runner(*shape)}
  first = {k: r(1) for k, r in runners.items()}  # compile, warm caches
  rates = {k: [] for k in runners}
  for _ in range(rounds):
    for k, r in runners.items():
      start = time.perf_counter()
      r(steps)
      rates[k].append(tokens / (time.perf_counter() - start))
  med = {k: statistics.median(v) for k, v in rates.items()}
  row = {
    'shape': name,
    'layers_heads_width_ctx_batch_vocab': list(shape),
    'pytorch_tokens_per_s': round(med['pytorch']),
    'jaxgpt_tokens_per_s': round(med['jaxgpt']),
    'ratio': round(med['jaxgpt'] / med['pytorch'], 3),
    'first_loss': {k: round(v, 3) for k, v in first.items()},
    'log_vocab': round(math.log(shape[5]), 3),
    'rates': {k: [round(x) for x in v] for k, v in rates.items()},
  }
  if floor:
    dots = dots_alone_ms(shape)
    step_ms = {k: 1e3 * shape[4] * shape[3] / v for k, v in med.items()}
    row.update(
      pytorch_step_ms=round(step_ms['pytorch'], 1),
      jaxgpt_step_ms=round(step_ms['jaxgpt'], 1),
      torch_dots_ms=dots['torch'],
      xla_dots_ms=dots['xla'],
      best_ratio=round(step_ms['pytorch'] / dots['xla'], 3),
    )
  return row


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--shapes', default=','.join(SHAPES))
  parser.add_argument('--floor', action='store_true', help="also time each step's products alone")
  parser.add_argument('--json', default=os.path.join(os.path.dirname(__file__), 'vs_pytorch.json'))
  args = parser.parse_args()
  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  print(f'torch {torch.__version__} on {threads} threads; jax {jax.__version__} on {jax.devices()}')
  rows = [
    measure(n, SHAPES[n], args.rounds, args.steps, args.floor) for n in args.shapes.split(',')
  ]
  columns = ['shape', 'pytorch_tokens_per_s', 'jaxgpt_tokens_per_s', 'ratio']
  if args.floor:
    columns += ['pytorch_step_ms', 'jaxgpt_step_ms', 'torch_dots_ms', 'xla_dots_ms', 'best_ratio']
  common.print_table(rows, columns)
  common.write_json(args.json, {'threads': threads, 'rows': rows})


if __name__ == '__main__':
  main()
