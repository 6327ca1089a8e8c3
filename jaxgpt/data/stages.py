"""The preparation stages as datatrove executors: run here, or submitted to Slurm.

`pipeline.prepare` runs `main` through `python -m jaxgpt.data.build` in a fresh interpreter
(no jax loaded) when a store must be built. With `data.prep.executor='local'` it runs each
stage on datatrove's local executor (`data.prep.workers` processes), and a killed
preparation, started again, skips the tasks it finished. With `'slurm'` it submits every
stage as a Slurm job array, each depending on the one before, and returns; the last job
writes the manifest. A UserError's message is written to DIRECTORY/error.txt for the
caller to raise.
"""

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback

import ml_collections
from datatrove.pipeline.base import PipelineStep

from jaxgpt.data import clean
from jaxgpt.data import codepoints
from jaxgpt.data import curate as curate_lib
from jaxgpt.data import dedup
from jaxgpt.data import pipeline
from jaxgpt.data import report
from jaxgpt.data import shards
from jaxgpt.data import tokenizer as tokenizer_lib
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')
_PROGRESS_SECONDS = 10


@dataclasses.dataclass
class Stage:
  name: str
  pipeline: list
  tasks: int
  unit_bytes: list | None = None  # input per task, for the progress line
  progress: str | None = None  # where running tasks write the bytes they have read


class TrainTokenizer(PipelineStep):
  """Checks that curation left documents, then trains (or copies) the tokenizer."""

  type = 'jaxgpt'
  name = 'tokenizer'

  def __init__(self, cfg, work: str, directory: str, given: str | None):
    super().__init__()
    self.cfg, self.work, self.directory, self.given = cfg, work, directory, given

  def run(self, data=None, rank=0, world_size=1):
    report.check_not_empty(self.work)
    if self.given:
      tok = tokenizer_lib.load(self.given)
    else:
      if tokenizer_lib.needs_training(self.cfg):
        logging.getLogger('jaxgpt').info('training the tokenizer on a sample of the documents')
      tok = tokenizer_lib.train_or_load(
        shards.read_sample(os.path.join(self.work, 'sample')), self.cfg
      )
    tok.save(os.path.join(self.directory, 'tokenizer.model'))
    return
    yield


class Finish(PipelineStep):
  """Writes the manifest (last: its presence means the store is whole) and the data card."""

  type = 'jaxgpt'
  name = 'finish'

  def __init__(self, cfg, plan, work, directory, data_fp, fingerprint):
    super().__init__()
    self.cfg, self.plan, self.work, self.directory = cfg, plan, work, directory
    self.data_fp, self.fingerprint = data_fp, fingerprint

  def run(self, data=None, rank=0, world_size=1):
    tokenizer = tokenizer_lib.load(os.path.join(self.directory, 'tokenizer.model'))
    with open(os.path.join(self.work, 'started')) as f:
      seconds = time.time() - float(f.read())
    manifest = {
      'version': pipeline.MANIFEST_VERSION,
      **report.manifest(
        self.cfg,
        self.plan,
        self.work,
        self.directory,
        tokenizer,
        self.data_fp,
        self.fingerprint,
        seconds,
      ),
    }
    report.write_card(self.directory, manifest)
    shards.write_json(os.path.join(self.directory, 'manifest.json'), manifest)
    shutil.rmtree(self.work)  # the store is whole: the stages' work files are not needed
    logging.getLogger('jaxgpt').info(
      'token store ready in %s (%.0f s): %s', self.directory, seconds, report.summary(manifest)
    )
    return
    yield


def _reset(directory: str, fingerprint: str) -> str:
  """The work folder for this fingerprint. A build of the same fingerprint that was stopped
  continues; anything else in the directory (another build, an older store) is removed."""
  os.makedirs(directory, exist_ok=True)
  manifest = os.path.join(directory, 'manifest.json')
  if os.path.exists(manifest):  # a rebuild killed midway must not look like the old store
    os.remove(manifest)
  work = os.path.join(directory, 'work')
  stamp = os.path.join(work, 'fingerprint')
  if not (os.path.exists(stamp) and open(stamp).read() == fingerprint):
    for old in ('work', 'shards', 'logs', 'train.bin', 'val.bin'):
      path = os.path.join(directory, old)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)
    os.makedirs(work)
    with open(os.path.join(work, 'started'), 'w') as f:
      f.write(str(time.time()))
    with open(stamp, 'w') as f:
      f.write(fingerprint)
  return work


def workers(cfg, tasks: int) -> int:
  return max(1, min(cfg.prep.workers or os.cpu_count() or 1, tasks))


def stages(
  cfg,
  plan: pipeline.Plan,
  directory: str,
  work: str,
  data_fp: str,
  fingerprint: str,
  given_tokenizer: str | None,
) -> list[Stage]:
  units, n = plan.units, len(plan.units)
  by_name = {s.name: s for s in plan.sources}
  val_tasks = frozenset(i for i, u in enumerate(units) if by_name[u.source].split == 'val')
  # An explicit validation source replaces the hash split of the others.
  val_fraction = 0.0 if val_tasks else cfg.val_fraction
  unit_bytes = plan.unit_bytes
  folder = lambda *p: os.path.join(work, *p)
  sample_rate = 0.0
  if not given_tokenizer and tokenizer_lib.needs_training(cfg.tokenizer):
    sample_rate = min(1.0, cfg.tokenizer.sample_mb * (1 << 20) / max(sum(unit_bytes), 1))
  dedup_on = cfg.dedup.exact or cfg.dedup.near
  curate = [
    curate_lib.Curate(
      units,
      by_name,
      cfg.clean,
      cfg.prep.skip_bad_records,
      cfg.max_docs,
      folder('curate', 'counts'),
      folder('curate', 'progress'),
    ),
    shards.CuratedWriter(folder('curated'), folder('sample'), sample_rate, val_fraction, val_tasks),
  ]
  out = [Stage('curate', curate, n, unit_bytes, folder('curate', 'progress'))]
  if dedup_on:
    curate.append(dedup.Signatures(folder('signatures'), cfg.dedup))
    buckets = dedup.minhash_config(cfg.dedup).num_buckets
    out += [
      Stage(
        'buckets', [dedup.buckets_step(folder('signatures'), folder('pairs'), cfg.dedup)], buckets
      ),
      Stage(
        'clusters',
        [dedup.Cluster(folder('signatures'), folder('pairs'), folder('remove'), cfg.dedup)],
        1,
      ),
    ]
  threads = max(1, (os.cpu_count() or 1) // workers(cfg, n))
  out += [
    Stage('tokenizer', [TrainTokenizer(cfg.tokenizer, work, directory, given_tokenizer)], 1),
    Stage(
      'tokenize',
      [
        shards.CuratedReader(folder('curated')),
        dedup.DropDuplicates(folder('remove') if dedup_on else None, folder('dropped')),
        shards.TokenShards(
          os.path.join(directory, 'tokenizer.model'),
          directory,
          folder('tokenize', 'counts'),
          [u.source for u in units],
          val_tasks,
          val_fraction,
          threads,
        ),
      ],
      n,
      unit_bytes,
    ),
    Stage('finish', [Finish(cfg, plan, work, directory, data_fp, fingerprint)], 1),
  ]
  return out


def die_with_parent():
  """On Linux, this process is killed when its parent dies: with it set in the build
  process and in every process it forks (datatrove's workers and its multiprocess
  manager), a preparation killed however hard leaves nothing behind writing its store."""
  if sys.platform.startswith('linux'):
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def run_local(cfg, stage_list: list[Stage], logs: str, language_id: bool):
  """Each stage in turn on datatrove's local executor; each stage's seconds to logs/."""
  from datatrove.executor import LocalPipelineExecutor

  if language_id:
    clean.language_identifier()  # loaded here once, shared by the forked workers
  codepoints.table()  # likewise (0.3 s a process)
  seconds = {}
  for stage in stage_list:
    # Forked workers: this interpreter holds no jax and no threads but the progress line's.
    executor = LocalPipelineExecutor(
      stage.pipeline,
      tasks=stage.tasks,
      workers=workers(cfg, stage.tasks),
      logging_dir=os.path.join(logs, stage.name),
      start_method='fork',
    )
    done = threading.Event()
    monitor = threading.Thread(
      target=_progress, daemon=True, args=(stage, os.path.join(logs, stage.name), done)
    )
    monitor.start()
    start = time.time()
    try:
      executor.run()
    finally:
      done.set()
      monitor.join()
    seconds[stage.name] = round(time.time() - start, 2)
    if stage.tasks > 1:
      log.info(
        '%s: %d tasks done in %s', stage.name, stage.tasks, report.duration(seconds[stage.name])
      )
  shards.write_json(os.path.join(logs, 'seconds.json'), seconds)


def _progress(stage: Stage, logs: str, done: threading.Event):
  start = time.time()
  completions = os.path.join(logs, 'completions')
  listed = lambda d: set(os.listdir(d)) if d and os.path.isdir(d) else set()
  before = {int(f) for f in listed(completions)}
  while not done.wait(_PROGRESS_SECONDS):
    completed = {int(f) for f in listed(completions)}
    running = {}
    for name in listed(stage.progress):
      if name.isdigit() and int(name) not in completed:
        with open(os.path.join(stage.progress, name)) as f:
          running[int(name)] = int(f.read() or 0)
    finished = completed - before
    log.info(
      '%s: %s',
      stage.name,
      report.progress(finished, running, stage.tasks, stage.unit_bytes, time.time() - start),
    )


def submit_slurm(cfg, stage_list: list[Stage], logs: str) -> str:
  """Submits each stage as a job array depending on the one before; returns a summary."""
  from datatrove.executor import SlurmPipelineExecutor

  s = cfg.prep.slurm
  previous = None
  for stage in stage_list:
    previous = SlurmPipelineExecutor(
      stage.pipeline,
      tasks=stage.tasks,
      time=s.time,
      partition=s.partition,
      cpus_per_task=s.cpus_per_task,
      mem_per_cpu_gb=s.mem_per_cpu_gb,
      job_name=f'jaxgpt-{stage.name}',
      env_command=s.env_command or None,
      logging_dir=os.path.join(logs, stage.name),
      depends=previous,
      qos=s.qos or None,
      requeue=True,
      mail_type='NONE',
    )
  previous.run()
  return ', '.join(f'{st.name} ({st.tasks} tasks)' for st in stage_list)


def main(argv):
  # absl's layout, as the rest of a run logs: I1201 22:31:24.027 data] ...
  logging.basicConfig(
    format='I%(asctime)s.%(msecs)03d data] %(message)s',
    datefmt='%m%d %H:%M:%S',
    level=logging.WARNING,
    stream=sys.__stderr__,
  )
  log.setLevel(logging.INFO)
  directory, config_path = argv[1], argv[2]
  with open(config_path) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  try:
    plan = pipeline.make_plan(cfg)
    data_fp, fingerprint = pipeline.fingerprints(cfg, plan)
    # datatrove resumes by task number, so a stopped build continues only with the same
    # units (another machine's core count cuts them differently): the stamp holds both
    units = hashlib.sha256(repr(plan.units).encode()).hexdigest()[:16]
    work = _reset(directory, f'{fingerprint} units {units}')
    logs = os.path.join(directory, 'logs')
    os.makedirs(logs, exist_ok=True)
    # datatrove's own log lines (each task's start and statistics) go to a file; our
    # progress goes to the real stderr.
    sys.stderr = open(os.path.join(logs, 'datatrove.log'), 'a', buffering=1)
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level='INFO')
    stage_list = stages(
      cfg, plan, directory, work, data_fp, fingerprint, argv[3] if len(argv) > 3 else None
    )
    total = sum(plan.unit_bytes)
    if cfg.prep.executor == 'slurm':
      summary = submit_slurm(cfg, stage_list, logs)
      log.info('submitted to Slurm: %s; the logs and job scripts are in %s', summary, logs)
      return
    log.info(
      'preparing %s of text from %d source(s) in %d tasks on %d local worker(s); on a '
      'cluster: --mode=prepare --config.data.prep.executor=slurm (docs/data.md)',
      report.size(total),
      len(plan.sources),
      len(plan.units),
      workers(cfg, len(plan.units)),
    )
    run_local(
      cfg,
      stage_list,
      logs,
      cfg.clean.language.languages and any(s.profile == 'web' for s in plan.sources),
    )
  except UserError as e:
    with open(os.path.join(directory, 'error.txt'), 'w') as f:
      f.write(str(e))
    sys.exit(2)
  except BaseException:
    traceback.print_exc(file=sys.__stderr__)
    sys.exit(1)
