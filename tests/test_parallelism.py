"""Tensor (Megatron) and fully-sharded (ZeRO-3) layouts, read off the compiled train step."""

import collections
import math
import re

import jax

from jaxgpt import model as model_lib
from jaxgpt import plan
from jaxgpt import sharding
from jaxgpt import runstate
from tests.helpers import tiny_config

VOCAB = 1024


def _compiled(corpus_dir, tensor=1, fsdp=1, seq_len=64):
  c = tiny_config(corpus_dir)
  c.model.d_model, c.model.num_heads, c.model.seq_len = 64, 8, seq_len
  c.mesh.shape.data, c.mesh.shape.fsdp, c.mesh.shape.tensor = 1, fsdp, tensor
  mesh = sharding.make_mesh(c.mesh, jax.devices()[: tensor * fsdp])
  s = runstate.pretraining(c, model_lib.ModelConfig.from_config(c, VOCAB), mesh)
  return plan.compile_train_step(c, s), s


def test_tensor_parallel_loss_never_gathers_logits(corpus_dir):
  hlo = _compiled(corpus_dir, tensor=8)[0].as_text()
  kinds = plan.collectives(hlo)
  assert set(kinds) == {'all-reduce'}  # Megatron: activations all-reduced, nothing gathered
  for line in hlo.splitlines():
    if re.search(r'(all-reduce|all-gather|all-to-all)(-start)?\(', line):
      result = line.split('=')[1].split('all-')[0]
      assert str(VOCAB) not in result, line.strip()[:160]  # no (.., V) array crosses devices


def test_activation_memory_shrinks_as_tensor_grows(corpus_dir):
  temps = [
    _compiled(corpus_dir, tensor=t, seq_len=128)[0].memory_analysis().temp_size_in_bytes
    for t in (1, 2, 4, 8)
  ]
  assert all(a > b for a, b in zip(temps, temps[1:])), temps
  assert temps[-1] < temps[0] / 3, temps


def test_fsdp_gathers_params_and_scatters_gradients(corpus_dir):
  compiled, s = _compiled(corpus_dir, fsdp=8)
  hlo = compiled.as_text()
  assert plan.collectives(hlo)['all-gather']['count'] > 0
  # Gradients stay sharded: AdamW's update (the square root of each second moment) runs on
  # every param's fsdp shard, never on a whole param, whichever collective XLA reduced the
  # gradient with (the CPU backend all-reduces, then slices).
  sqrt_shapes = collections.Counter(
    tuple(int(d) for d in dims.split(',') if d)
    for dims in re.findall(r'= f32\[([\d,]*)\]\S* sqrt\(', hlo)
  )
  del sqrt_shapes[()]  # the gradient norm's
  params = jax.tree.leaves(s.abstract_state.params)
  shards = [p.sharding.shard_shape(p.shape) for p in params]
  assert sqrt_shapes == collections.Counter(shards)
  # ... and those shards are an eighth of every param with an embed (d_model = 64) axis.
  assert all(
    math.prod(k) * 8 == math.prod(p.shape) for k, p in zip(shards, params) if 64 in p.shape
  )
