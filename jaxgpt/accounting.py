"""What a pretraining run cost and reached, kept in WORKDIR/summary.json: the parameters N
(all, and without the embeddings), the tokens seen D, the compute C, the validation losses
and the wall time. A scaling study (jaxgpt/sweep.py) reads these to fit its laws.

C counts what `metrics.flops_per_token` counts: 6N for the matmuls (N without the position
table, a lookup) plus attention's two L x L products, per token seen.
"""

import json
import os
import time

from jaxgpt import architecture
from jaxgpt import metrics
from jaxgpt import model as model_lib

SUMMARY = 'summary.json'


def counts(cfg: model_lib.ModelConfig) -> dict:
  """Parameter counts of a model and its training FLOPs per token. Non-embedding leaves
  out the token and position tables and an untied output head, as Kaplan et al. (2020) do."""
  total = model_lib.param_count(cfg)
  tables = cfg.vocab_size * cfg.d_model + architecture.position_params(cfg)
  head = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model
  return {
    'params': total,
    'params_non_embedding': total - tables - head,
    'flops_per_token': metrics.flops_per_token(cfg),
  }


def read(workdir: str) -> dict | None:
  """The run's summary, or None where it has none yet (or a kill cut its write short)."""
  try:
    with open(os.path.join(workdir, SUMMARY)) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


class Summary:
  """Keeps WORKDIR/summary.json current at every evaluation and at the end. Wall time adds
  up over the invocations of a resumed run: each one's time from its start."""

  def __init__(self, workdir, model_cfg, tokens_per_step, steps, start_step=0, enabled=True):
    self.path = os.path.join(workdir, SUMMARY)
    self.enabled, self.tokens_per_step, self.steps = enabled, tokens_per_step, steps
    self.counts = counts(model_cfg)
    previous = read(workdir) or {}
    self.earlier_wall_s = previous.get('wall_s', 0.0)
    # Evaluations after the step this invocation starts from are redone, as in metrics.jsonl.
    self.evals = [tuple(e) for e in previous.get('evals', []) if e[0] <= start_step]
    self.start = time.perf_counter()

  def record(self, step: int, val_loss: float | None = None) -> dict:
    """Records the run as of `step` (with its validation loss there, if evaluated)."""
    if val_loss is not None:
      self.evals = [e for e in self.evals if e[0] < step] + [(step, float(val_loss))]
    tokens = step * self.tokens_per_step
    losses = [loss for _, loss in self.evals]
    summary = {
      **self.counts,
      'step': step,
      'steps': self.steps,
      'complete': step >= self.steps,
      'tokens': tokens,
      'flops': self.counts['flops_per_token'] * tokens,
      'final_loss': self.evals[-1][1] if self.evals and self.evals[-1][0] == step else None,
      'best_loss': min(losses) if losses else None,
      'evals': self.evals,
      'wall_s': self.earlier_wall_s + time.perf_counter() - self.start,
    }
    if self.enabled:
      metrics.write_text(self.path, json.dumps(summary, indent=2))
    return summary
