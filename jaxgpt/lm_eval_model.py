"""A jaxgpt checkpoint as a model of EleutherAI's lm-evaluation-harness.

    python run.py --config=experiments/default.py --workdir=runs/default --mode=lm_eval \
      --lm_eval_tasks=hellaswag --lm_eval_include=DIR_OF_TASK_YAMLS
    python -m jaxgpt.lm_eval_model --model jaxgpt --model_args workdir=runs/default --tasks ...

The second is lm-eval's own command line with this model registered as `jaxgpt`. Requests
are scored in batches split over the mesh's batch axes, as jaxgpt's own tasks are
(tasks.Scorer, the same tokenisation of context and continuation), so a task scored both
ways gives the same log-likelihoods. Generation is greedy with the KV cache; a stop string
cuts the text after generation (the end-of-document id stops it early).
"""

import json
import logging
import os
import sys

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from configs import base as base_config
from jaxgpt import generate as generate_lib
from jaxgpt import inference
from jaxgpt import metrics as metrics_lib
from jaxgpt import tasks as tasks_lib
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')


@register_model('jaxgpt')
class JaxgptLM(LM):
  """lm-eval's three request types on a checkpoint of the run in `workdir`."""

  def __init__(
    self,
    workdir: str,
    step=None,
    batch_size=16,
    max_gen_toks=256,
    config=None,
    devices=None,
    max_batch_size=None,
    device=None,
  ):
    """lm-eval's command line also passes max_batch_size and device: the batch is
    `batch_size` rows ('auto' or none: 16) and the devices are the mesh's."""
    super().__init__()
    del max_batch_size, device
    batch_size = 16 if batch_size in (None, '', 'auto') else batch_size
    if config is None:  # the run's own saved config (lm-eval's command line gives none)
      config, overrides = base_config.get_config(), []
    else:
      overrides = None
    step = None if step in (None, '', 'None') else int(step)
    config, run, params, tokenizer, step = inference.restore(
      config, workdir, step, devices, overrides
    )
    self.run, self.params, self.tokenizer, self.step = run, params, tokenizer, step
    self.seq_len = run.model.cfg.seq_len
    self.batch_size = int(batch_size)
    self.max_gen_toks = int(max_gen_toks)
    self.scorer = tasks_lib.Scorer(run.model, params, run.mesh, self.batch_size)

  def loglikelihood(self, requests) -> list[tuple[float, bool]]:
    pairs = [tasks_lib.encode_pair(self.tokenizer, *r.args) for r in requests]
    return self._score(pairs)

  def _score(self, pairs) -> list[tuple[float, bool]]:
    logp, greedy = self.scorer.score(pairs)
    return [(float(lp), bool(g)) for lp, g in zip(logp, greedy)]

  def loglikelihood_rolling(self, requests) -> list[float]:
    """Each text's log-likelihood after the end-of-document id, in windows of the context
    that predict every token once, each with as much context before it as fits."""
    pairs, owner = [], []
    for i, r in enumerate(requests):
      windows = get_rolling_token_windows(
        self.tokenizer.encode(r.args[0]), self.tokenizer.eod_id, self.seq_len, 1
      )
      for window in map(make_disjoint_window, windows):
        pairs.append(window)
        owner.append(i)
    totals = [0.0] * len(requests)
    for i, (lp, _) in zip(owner, self._score(pairs)):
      totals[i] += lp
    return totals

  def generate_until(self, requests) -> list[str]:
    """Greedy continuations, cut before the first of each request's stop strings."""
    out = [''] * len(requests)
    by_settings = {}
    for i, r in enumerate(requests):
      context, kwargs = r.args
      kwargs = dict(kwargs or {})
      until = kwargs.get('until') or []
      until = [until] if isinstance(until, str) else list(until)
      n = int(kwargs.get('max_gen_toks', self.max_gen_toks))
      by_settings.setdefault(n, []).append((i, context, until))
    for n, group in by_settings.items():
      s = generate_lib.Sampling(max_new_tokens=n, temperature=0.0)
      gen = generate_lib.Generator(
        self.run.model, self.params, self.run.mesh, s, self.tokenizer.eod_id, self.tokenizer.pad_id
      )
      for start in range(0, len(group), self.batch_size):
        chunk = group[start : start + self.batch_size]
        prompts = [self.tokenizer.encode(context) for _, context, _ in chunk]
        for (i, _, until), ids in zip(chunk, gen.generate(prompts)):
          text = self.tokenizer.decode([t for t in ids if t != self.tokenizer.eod_id])
          for stop in until:
            if stop and stop in text:
              text = text[: text.index(stop)]
          out[i] = text
    return out


def evaluate(config, workdir, tasks: list[str], include: str = '', limit=None, fewshot=None):
  """(model, lm-eval's output) for `tasks` (names, or task YAMLs found under `include`) on
  the latest checkpoint of the run in workdir."""
  from lm_eval import simple_evaluate
  from lm_eval.tasks import TaskManager

  if include and not os.path.isdir(include):
    raise UserError(f'--lm_eval_include={include} is not a directory of task YAML files')
  manager = TaskManager(include_path=include or None)
  unknown = [t for t in tasks if t not in manager.all_tasks]
  if not tasks or unknown:
    raise UserError(
      f'lm-eval knows no task {", ".join(unknown) or "(none given)"}: name tasks with '
      '--lm_eval_tasks=a,b, and with --lm_eval_include a directory of your own task YAMLs'
    )
  lm = JaxgptLM(workdir, config=config, batch_size=config.train.batch_size)
  out = simple_evaluate(
    model=lm, tasks=list(tasks), num_fewshot=fewshot, limit=limit, task_manager=manager
  )
  return lm, out


def report(lm, out, workdir) -> str:
  """Prints lm-eval's results table, then writes them to WORKDIR/lm_eval-stepN.json."""
  from lm_eval.utils import handle_non_serializable, make_table

  print(f'lm-eval on step {lm.step} of {workdir}:\n{make_table(out)}', flush=True)
  record = {k: out[k] for k in ('results', 'n-shot', 'higher_is_better', 'n-samples') if k in out}
  record['step'] = lm.step
  path = os.path.join(workdir, f'lm_eval-step{lm.step}.json')
  metrics_lib.write_text(path, json.dumps(record, indent=2, default=handle_non_serializable))
  return path


if __name__ == '__main__':  # lm-eval's command line, with `--model jaxgpt` registered
  from lm_eval.__main__ import cli_evaluate

  from jaxgpt import compile_cache

  try:
    compile_cache.enable(compile_cache.default_directory(), compile_cache.max_bytes())
  except (OSError, ValueError) as e:  # as run.py: one line, and no cache
    print(f'warning: compilation cache off: {e}', file=sys.stderr)
    compile_cache.enable('off')

  cli_evaluate()
