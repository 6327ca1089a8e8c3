"""Optional Weights & Biases logging of a run's metrics (config.loop.wandb_project).

The wandb run's id is kept in WORKDIR/wandb_id, so a resumed run (after a kill or a stop)
logs into the same wandb run. With WANDB_MODE=offline nothing touches the network: the run
is written under WORKDIR/wandb, for `wandb sync` later. Steps that a resumed run logs again
(those after its checkpoint) keep their first values in wandb, which only takes steps that
go forward; metrics.jsonl and TensorBoard keep the values of the run that went on.
"""

import os
import secrets
import string

from jaxgpt.errors import UserError

ID_FILE = 'wandb_id'


class Wandb:
  """log(step, kind, values) into a wandb run; finish() ends it."""

  def __init__(self, config, workdir: str):
    try:
      import wandb
    except ImportError:
      raise UserError(
        f'loop.wandb_project={config.loop.wandb_project!r} needs the wandb package '
        '(pip install wandb==0.31.0), or leave the field empty'
      ) from None
    self.wandb = wandb
    lc = config.loop
    path = os.path.join(workdir, ID_FILE)
    if os.path.exists(path):
      with open(path) as f:
        run_id = f.read().strip()
    else:
      run_id = ''.join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
      with open(path + '.tmp', 'w') as f:
        f.write(run_id)
      os.replace(path + '.tmp', path)
    self.run = wandb.init(
      project=lc.wandb_project,
      entity=lc.wandb_entity or None,
      name=lc.wandb_name or os.path.basename(os.path.abspath(workdir)),
      tags=list(lc.wandb_tags),
      id=run_id,
      resume='allow',
      dir=workdir,
      config=config.to_dict(),
    )
    self.id = run_id

  def log(self, step: int, kind: str, values: dict):
    if step < self.run.step:  # already in wandb from before a restart (see above)
      return
    self.run.log({f'{kind}/{k}': float(v) for k, v in values.items()}, step=step)

  def finish(self):
    self.run.finish()


def start(config, workdir: str, enabled: bool):
  """A Wandb logger when the config asks for one and this process writes metrics."""
  if enabled and config is not None and config.loop.wandb_project:
    return Wandb(config, workdir)
  return None
