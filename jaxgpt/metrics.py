"""Where numbers go: the console line, metrics.jsonl, TensorBoard events and plots.

Also the FLOPs accounting for MFU: per token, 6N for the parameter matmuls (forward and
backward) plus 12 * layers * width * seq_len for attention's two L x L products, as in
the PaLM paper's appendix and nanoGPT's estimate_mfu. N excludes the position table,
which is a lookup, not a matmul.
"""

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import devices
from jaxgpt import architecture
from jaxgpt import tracking
from jaxgpt import model as model_lib

log = logging.getLogger('jaxgpt')


def flops_per_token(cfg: model_lib.ModelConfig, frozen: int = 0) -> float:
  """6N + 12 * layers * width * seq_len (N without the position table). `frozen` params
  get no weight gradients: 2 FLOPs per token fewer each (their forward and input
  gradients still run). Attention's term counts query heads: grouped keys and values
  shrink the projections (in N), not the products of queries with keys."""
  n = model_lib.param_count(cfg) - architecture.position_params(cfg)
  return 6.0 * n - 2.0 * frozen + 12.0 * cfg.num_layers * cfg.d_model * cfg.seq_len


def measure_peak_flops(size: int = 1024, repeats: int = 5) -> float:
  """Float32 matmul FLOP/s of one device, the best of a few timed runs."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


# What MFU is a fraction of: the console line names it.
PEAKS = {'set': 'set peak', 'bf16': 'bf16 peak', 'measured': 'measured peak'}


def peak_flops(configured: float, device) -> tuple[float, str]:
  """(per-device peak FLOP/s, its kind in PEAKS) for MFU: loop.peak_flops where set; on an
  accelerator, its device kind's bf16 peak (configs/devices.py); else a float32 matmul
  measured now, as on CPU, where no table figure would mean much."""
  if configured:
    return configured, 'set'
  if device.platform != 'cpu':
    peak = devices.bf16_peak(device.device_kind)
    if peak:
      return peak, 'bf16'
    log.warning(
      'no bf16 peak for device kind %r in configs/devices.py: MFU is against a float32 '
      'matmul measured now (add the kind there, or set loop.peak_flops)',
      device.device_kind,
    )
  return measure_peak_flops(), 'measured'


def format_seconds(s: float) -> str:
  s = int(max(s, 0))
  if s >= 3600:
    return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}'
  return f'{s // 60}:{s % 60:02d}'


def write_json(path: str, payload):
  """A result file, written whole by process 0 only."""
  if jax.process_index() == 0:
    write_text(path, json.dumps(payload, indent=2))
    log.info('wrote %s', path)


def write_text(path: str, text: str):
  """A whole file or none: written under a temporary name (unique to this process, so two
  writers never mix their bytes), then renamed."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)


def write_jsonl(path: str, rows: list[dict]):
  """One JSON object per line (predictions, samples, responses), by process 0 only."""
  if jax.process_index() == 0:
    write_text(path, ''.join(json.dumps(row) + '\n' for row in rows))
    log.info('wrote %d records to %s', len(rows), path)


class StepProfiler:
  """A jax.profiler trace of steps first..last (loop.profile_steps), written beside the
  TensorBoard events (log_dir/plugins/profile), where TensorBoard's profile plugin and
  XProf read it. Used as a context: a loop that ends early still closes the trace."""

  def __init__(self, steps, log_dir: str):
    self.first, self.last = tuple(steps) if steps else (0, -1)
    self.log_dir, self.active = log_dir, False

  def before(self, step: int):
    """Called before step `step` (counted from 1) runs."""
    if step == self.first:
      jax.profiler.start_trace(self.log_dir)
      self.active = True

  def after(self, step: int, outputs):
    """Called after step `step` was dispatched, with what it returned."""
    if self.active and step == self.last:
      jax.block_until_ready(outputs)  # the trace holds the steps' device work, not only dispatch
      self.stop()

  def __enter__(self):
    return self

  def __exit__(self, *_):
    self.stop()

  def stop(self):
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      log.info(
        'wrote a trace of steps %d-%d to %s/plugins/profile', self.first, self.last, self.log_dir
      )


class Writer:
  """Writes metrics from process 0 only; the other processes keep quiet.

  A run that starts at `start_step` (0, or the step it resumed from) first drops what an
  earlier attempt recorded after that step, from metrics.jsonl and (purge_step) from
  TensorBoard's view, so each step appears once, with the values of the run that went on.
  """

  def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0, config=None):
    self.enabled, self.workdir = enabled, workdir
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._drop_after(start_step)
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'), purge_step=start_step + 1)
    # Weights & Biases too, when config.loop.wandb_project names a project.
    self._wandb = tracking.start(config, workdir, enabled)

  def _drop_after(self, step: int):
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    steps = [_step_of(line) for line in lines]
    kept = [line for line, s in zip(lines, steps) if s is not None and s <= step]
    if len(kept) < len(lines):
      write_text(self.path, ''.join(kept))

  def write(self, step: int, kind: str, values: dict):
    if not self.enabled:
      return
    record = {'step': step, 'kind': kind, **{k: float(v) for k, v in values.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for k, v in values.items():
      self._tb.add_scalar(f'{kind}/{k}', float(v), step)
    if self._wandb is not None:
      self._wandb.log(step, kind, values)

  def close(self):
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()


def _step_of(line: str) -> int | None:
  """A record's step; None for a line cut short by a kill."""
  try:
    return json.loads(line)['step']
  except (json.JSONDecodeError, KeyError, TypeError):
    return None


class Progress:
  """Tokens/s, MFU and ETA over the steps since the last report."""

  def __init__(self, start_step, total_steps, tokens_per_step, flops_per_step, peak_flops):
    self.total, self.tokens_per_step = total_steps, tokens_per_step
    self.flops_per_step, self.peak = flops_per_step, peak_flops
    self.window_start = start_step  # first step of the current logging window
    self.last_step, self.last_time = start_step, time.perf_counter()

  def restart(self, step):
    """Starts the rate clock afresh (after compiling, evaluating or saving)."""
    self.last_step, self.last_time = step, time.perf_counter()

  def report(self, step: int, values: dict) -> dict:
    now = time.perf_counter()
    steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.restart(step)
    self.window_start = step
    out = dict(values)
    out['tokens_per_s'] = steps_per_s * self.tokens_per_step
    out['mfu'] = steps_per_s * self.flops_per_step / self.peak if self.peak else 0.0
    out['eta_s'] = (self.total - step) / steps_per_s if steps_per_s else 0.0
    return out


def log_line(step: int, total: int, v: dict, peak: str = '') -> str:
  """The console line; `peak` (a PEAKS key) says what MFU is a fraction of."""
  of = f' of {PEAKS[peak]}' if peak else ''
  return (
    f'step {step:>6}/{total} | loss {v["loss"]:.4f} | lr {v["lr"]:.2e} | '
    f'grad {v["grad_norm"]:.3f} | {v["tokens_per_s"]:,.0f} tok/s | '
    f'mfu {100 * v["mfu"]:.1f}%{of} | eta {format_seconds(v["eta_s"])}'
  )


def plot_losses(jsonl_path: str, png_path: str):
  """Training and validation loss against step, from metrics.jsonl."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  series = {'train': ([], []), 'eval': ([], [])}
  with open(jsonl_path) as f:
    for line in f:
      r = json.loads(line)
      if r['kind'] in series and 'loss' in r:
        series[r['kind']][0].append(r['step'])
        series[r['kind']][1].append(r['loss'])
  fig, ax = plt.subplots(figsize=(7, 4))
  for kind, (steps, losses) in series.items():
    if steps:
      order = np.argsort(steps, kind='stable')
      ax.plot(
        np.asarray(steps)[order],
        np.asarray(losses)[order],
        marker='o' if kind == 'eval' else None,
        label='validation' if kind == 'eval' else 'train',
      )
  ax.set_xlabel('step')
  ax.set_ylabel('loss (nats/token)')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(png_path, dpi=120)
  plt.close(fig)
  log.info('wrote %s', png_path)


def plot_confusion(confusion, names: list[str], png_path: str, title: str):
  """A confusion matrix as a heat map with counts; rows are true classes."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  counts = np.asarray(confusion)
  size = max(4, 0.6 * len(names) + 2)
  fig, ax = plt.subplots(figsize=(size, size))
  ax.imshow(counts, cmap='Blues')
  ax.set_xticks(range(len(names)), names, rotation=45, ha='right')
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title)
  for i in range(len(names)):
    for j in range(len(names)):
      ax.text(
        j,
        i,
        str(counts[i, j]),
        ha='center',
        va='center',
        color='white' if counts[i, j] > counts.max() / 2 else 'black',
      )
  fig.tight_layout()
  fig.savefig(png_path, dpi=120)
  plt.close(fig)
