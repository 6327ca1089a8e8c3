"""Train-step throughput and MFU on this machine, float32.

    python benchmarks/train_step.py [--repeats=10] [--json=benchmarks/train_step.json]
        [--without_attention] [--chunked_loss]

MFU counts 6N + 12 * layers * width * seq_len FLOPs per token (N: params less the
position table) against the float32 matmul peak measured in the same run. This machine's
speed drifts by 10-20% over minutes (it is shared), so the peak is measured right before
and right after each config's steps and the larger of the two is the denominator.

`--without_attention` adds a row for the medium model with attention swapped for an
elementwise stand-in while its FLOPs are still counted: the most MFU that any attention
kernel could give this step. `--chunked_loss` adds a row per config with the opt-in chunked
loss (execution.loss_chunks=8) beside the default plain one.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxgpt import hugepages  # noqa: E402

hugepages.ensure()  # before jax loads; see jaxgpt/hugepages.py

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from jaxgpt import attention  # noqa: E402
from jaxgpt import metrics  # noqa: E402
from jaxgpt import sharding  # noqa: E402
from jaxgpt import step as step_lib  # noqa: E402

CONFIGS = {  # name: (layers, heads, width, seq_len, batch)
  'small 4L/128w/64t': (4, 4, 128, 64, 12),
  'medium 6L/384w/256t': (6, 6, 384, 256, 16),
}


def measure(name, shape, repeats, **model):
  config = common.model_config(*shape, **model)
  s = common.setup(config)
  state = s.init_state(0)
  batch = sharding.global_batch(common.random_batch(config, s.model.cfg.vocab_size), s.mesh)
  with s.context():
    step = step_lib.jit_train_step(s, config)
    holder = [state]

    def run():
      holder[0], m = step(holder[0], batch)
      jax.block_until_ready(m)

    run()  # compile outside the peak's bracket
    peak_before = common.matmul_peak()
    median, times = common.time_calls(run, repeats)
    peak_after = common.matmul_peak()
  peak = max(peak_before, peak_after)
  tokens = config.train.batch_size * config.model.seq_len
  flops = metrics.flops_per_token(s.model.cfg) * tokens
  return {
    'config': name,
    'step_ms': round(1e3 * median, 1),
    'tokens_per_s': round(tokens / median),
    'mfu_pct': round(100 * flops / median / peak, 1),
    'gflop_per_step': round(flops / 1e9, 2),
    'peak_gflop_s': round(peak / 1e9, 1),
    'peaks_before_after_gflop_s': [round(peak_before / 1e9, 1), round(peak_after / 1e9, 1)],
    'times_s': [round(t, 4) for t in times],
    **{k: v for k, v in model.items()},
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--json', default=os.path.join(os.path.dirname(__file__), 'train_step.json'))
  parser.add_argument('--without_attention', action='store_true')
  parser.add_argument('--chunked_loss', action='store_true')
  args = parser.parse_args()
  print(
    f'device: {jax.devices()[0].device_kind}; malloc huge pages: '
    f'{"on" if hugepages.active() else "off"}'
  )
  rows = []
  for name, shape in CONFIGS.items():
    rows.append(measure(name, shape, args.repeats))
    if args.chunked_loss:
      rows.append(measure(name + ', loss in 8 chunks', shape, args.repeats, loss_chunks=8))
  if args.without_attention:
    # model.py looks attention.causal up when it traces, so the swap reaches only the
    # steps compiled after it. v + q * k keeps gradients flowing to all three.
    def stand_in(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, block, dropout_fn, segments_BxL=None):
      return v_BxLxHxK + q_BxLxHxK * k_BxLxHxK

    attention.causal = stand_in
    name = 'medium 6L/384w/256t'
    rows.append(measure(name + ', no attention', CONFIGS[name], args.repeats))
  common.print_table(
    rows, ['config', 'step_ms', 'tokens_per_s', 'peak_gflop_s', 'mfu_pct', 'gflop_per_step']
  )
  common.write_json(args.json, {'hugepages': hugepages.active(), 'rows': rows})


if __name__ == '__main__':
  main()
