"""The prepared token store: built in stages on datatrove, reopened from its manifest.

`prepare` plans the sources into units (listing and stat-ing files, never opening them),
fingerprints them with the data config, and reuses a store whose manifest has that
fingerprint. Otherwise `jaxgpt.data.stages` runs, each stage a datatrove executor whose
finished tasks a killed run skips when started again:

  curate    (a task per unit)    read, normalise, filter; curated documents + dedup signatures
  buckets   (a task per bucket)  candidate duplicate pairs (datatrove's MinHash merge)
  clusters  (one task)           pairs verified, clustered; what to remove
  tokenizer (one task)           trained on a hash-chosen sample of the training documents
  tokenize  (a task per unit)    duplicates dropped, split by hash, encoded into token shards
  finish    (one task)           manifest.json (written last: the store is whole), data card

The stages' work files (`work/`) stay beside the store until it is finished; their logs
stay in `logs/`.
"""

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys

from jaxgpt.data import clean
from jaxgpt.data import corpus
from jaxgpt.data import dedup as dedup_lib
from jaxgpt.data import tokenizer as tokenizer_lib
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')

MANIFEST_VERSION = 2


class Submitted(UserError):
  """The store's preparation went to Slurm: it is not there yet."""


@dataclasses.dataclass(frozen=True)
class Prepared:
  directory: str
  tokenizer: tokenizer_lib.Tokenizer
  manifest: dict

  def shards(self, split: str, source: str | None = None) -> list[dict]:
    """This split's shards as {path, start, end} token ranges, optionally of one source."""
    return [
      {**s, 'path': os.path.join(self.directory, s['path'])}
      for s in self.manifest['shards'][split]
      if source in (None, s['source'])
    ]


@dataclasses.dataclass(frozen=True)
class Plan:
  sources: list
  units: list
  identity: dict  # what the sources are: file names, sizes and mtimes; TFDS versions

  @property
  def unit_bytes(self) -> list[int]:
    sizes = {name: size for s in self.identity.values() for name, size, _ in s.get('files', ())}
    return [
      (u.stop - u.start if u.stop else sum(sizes[f] for f in u.files))
      if u.files
      else 4096 * (u.stop - u.start)
      for u in self.units
    ]


def check_config(cfg):
  """The preparation's numeric fields, checked before anything is read."""
  tokenizer_lib.check_kind(cfg.tokenizer)
  g, c4, slurm = cfg.clean.gopher, cfg.clean.c4, cfg.prep.slurm
  share = lambda x: 0 <= x <= 1
  gopher = [
    (f'clean.gopher.{k}', g[k], g[k] >= 0, '0 (off) or more')
    for k in (
      'min_words',
      'max_words',
      'min_mean_word_length',
      'max_mean_word_length',
      'min_stop_words',
    )
  ]
  gopher += [
    (f'clean.gopher.{k}', g[k], share(g[k]), 'a share in [0, 1] (0: off)')
    for k in ('max_symbol_word_ratio', 'max_bullet_lines', 'max_ellipsis_lines', 'min_alpha_words')
  ]
  c4_rules = [
    (f'clean.c4.{k}', c4[k], c4[k] >= -1, '-1 (off) or more')
    for k in ('min_sentences', 'min_words_per_line', 'max_word_length')
  ]
  for field, value, ok, valid in (
    gopher
    + c4_rules
    + [
      ('prep.slurm.cpus_per_task', slurm.cpus_per_task, slurm.cpus_per_task >= 1, '1 or more'),
      ('prep.slurm.mem_per_cpu_gb', slurm.mem_per_cpu_gb, slurm.mem_per_cpu_gb > 0, 'more than 0'),
      ('prep.workers', cfg.prep.workers, cfg.prep.workers >= 0, '0 (one per core) or more'),
      ('prep.unit_mb', cfg.prep.unit_mb, cfg.prep.unit_mb > 0, 'more than 0'),
      ('tokenizer.sample_mb', cfg.tokenizer.sample_mb, cfg.tokenizer.sample_mb > 0, 'more than 0'),
      ('val_fraction', cfg.val_fraction, 0 <= cfg.val_fraction < 1, 'in [0, 1)'),
      (
        'clean.language.threshold',
        cfg.clean.language.threshold,
        0 <= cfg.clean.language.threshold <= 1,
        'in [0, 1]',
      ),
      (
        'clean.language.max_chars',
        cfg.clean.language.max_chars,
        cfg.clean.language.max_chars > 0,
        'more than 0',
      ),
    ]
  ):
    if not ok:
      raise UserError(f'data.{field}={value} is out of range: use {valid}')
  dedup_lib.minhash_config(cfg.dedup)  # bands, rows, ngram, threshold


def make_plan(cfg) -> Plan:
  check_config(cfg)
  if cfg.prep.executor not in ('local', 'slurm'):
    raise UserError(f"data.prep.executor={cfg.prep.executor!r}: use 'local' or 'slurm'")
  if cfg.prep.executor == 'slurm' and not cfg.prep.slurm.partition:
    raise UserError(
      "data.prep.executor='slurm' needs data.prep.slurm.partition, e.g. "
      '--config.data.prep.slurm.partition=cpu'
    )
  srcs = corpus.sources(cfg)
  if any(src.profile == 'web' for src in srcs):  # only 'web' runs language ID
    clean.check_languages(cfg.clean.language.languages)
  identity = {src.name: corpus.identify(src) for src in srcs}
  total = sum(size for s in identity.values() for _, size, _ in s.get('files', ())) or 1 << 26
  workers = cfg.prep.workers or os.cpu_count() or 1
  # Several tasks per worker balance the load; a task holds at most unit_mb of input.
  unit = int(min(cfg.prep.unit_mb * (1 << 20), max(total / (4 * workers), 1 << 16)))
  units = [u for src in srcs for u in corpus.units(src, identity[src.name], unit)]
  return Plan(srcs, units, identity)


def fingerprints(cfg, plan: Plan) -> tuple[str, str]:
  """(data, data + tokenizer): what the cleaned documents are, and what the store is.

  Mixture weights are left out: they act in the loader, so a new mixture reuses the store.
  """
  sources = [
    {k: v for k, v in dataclasses.asdict(s).items() if k != 'weight'} for s in plan.sources
  ]
  data = json.dumps(
    {
      'version': MANIFEST_VERSION,
      'sources': sources,
      'identity': plan.identity,
      'clean': cfg.clean.to_dict(),
      'dedup': cfg.dedup.to_dict(),
      'val_fraction': cfg.val_fraction,
      'max_docs': cfg.max_docs,
      'skip_bad_records': cfg.prep.skip_bad_records,
    },
    sort_keys=True,
  )
  data_fp = hashlib.sha256(data.encode()).hexdigest()
  # GPT-2's file paths only when set: stores prepared before those fields existed still match.
  tok = {k: v for k, v in cfg.tokenizer.to_dict().items() if v != '' or not k.endswith('_path')}
  tok = json.dumps({**tok, 'model_path': cfg.tokenizer.model_path}, sort_keys=True)
  return data_fp, hashlib.sha256((data_fp + tok).encode()).hexdigest()


def _read_manifest(directory):
  path = os.path.join(directory, 'manifest.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _reusable(manifest, fingerprint, data_fingerprint, tokenizer) -> bool:
  if manifest is None or manifest.get('version') != MANIFEST_VERSION:
    return False
  if tokenizer is None:
    return manifest['fingerprint'] == fingerprint
  return (
    manifest['data_fingerprint'] == data_fingerprint
    and manifest['tokenizer']['sha256'] == tokenizer.sha256
  )


def _open(directory, manifest, tokenizer):
  tokenizer = tokenizer or tokenizer_lib.load(os.path.join(directory, 'tokenizer.model'))
  return Prepared(directory, tokenizer, manifest)


def prepare(
  cfg, workdir: str, tokenizer: tokenizer_lib.Tokenizer | None = None, for_eval: bool = False
) -> Prepared:
  """Builds (or reopens) the token store for config.data `cfg` in WORKDIR/data.

  With `tokenizer` (a checkpoint's own), documents are encoded with it rather than a newly
  trained one. `for_eval` never writes the training store: a store that does not match goes
  to WORKDIR/eval_data instead.
  """
  t = cfg.tokenizer  # a checkpoint's own tokenizer needs no files
  if tokenizer is None and t.kind == 'gpt2' and not (t.vocab_path and t.merges_path):
    raise UserError(
      "data.tokenizer.kind='gpt2' needs data.tokenizer.vocab_path (encoder.json or vocab.json) "
      "and data.tokenizer.merges_path (vocab.bpe or merges.txt): GPT-2's files, on local disk"
    )
  directories = [cfg.prep.cache_dir or os.path.join(workdir, 'data')]
  if for_eval:
    directories.append(os.path.join(workdir, 'eval_data'))
  try:
    plan = make_plan(cfg)
  except UserError as e:  # sources gone: a store made from this very config still serves
    for directory in directories:
      manifest = _read_manifest(directory)
      if manifest and manifest.get('data_config') == json.loads(cfg.to_json()):
        log.warning('%s; using the token store in %s, made from this config', e, directory)
        return _open(directory, manifest, tokenizer)
    raise
  data_fp, fingerprint = fingerprints(cfg, plan)
  for directory in directories:
    manifest = _read_manifest(directory)
    if _reusable(manifest, fingerprint, data_fp, tokenizer):
      log.info('reusing the token store in %s', directory)
      return _open(directory, manifest, tokenizer)
  directory = directories[-1]
  _build_in_subprocess(cfg, directory, tokenizer)
  manifest = _read_manifest(directory)
  if manifest is None and cfg.prep.executor == 'slurm':
    raise Submitted(
      f'the preparation of {directory} was submitted to Slurm (logs and job '
      f'scripts in {os.path.join(directory, "logs")}); run the same command '
      'again once its jobs have finished'
    )
  if not _reusable(manifest, fingerprint, data_fp, tokenizer):
    raise RuntimeError(
      f'the token store in {directory} was built but does not match the '
      'config: did its sources change while it was being prepared?'
    )
  return _open(directory, manifest, tokenizer)


def _build_in_subprocess(cfg, directory, tokenizer):
  """Runs the stages (jaxgpt.data.stages) in a fresh interpreter without jax, whose worker
  processes can then be forked cheaply and safely; its progress goes to our stderr."""
  os.makedirs(directory, exist_ok=True)
  config_path = os.path.join(directory, 'data_config.json')
  with open(config_path, 'w') as f:
    f.write(cfg.to_json())
  args = [sys.executable, '-m', 'jaxgpt.data.build', directory, config_path]
  if tokenizer is not None:
    args.append(os.path.join(directory, 'given_tokenizer.model'))
    tokenizer.save(args[-1])
  error_path = os.path.join(directory, 'error.txt')
  if os.path.exists(error_path):
    os.remove(error_path)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([root, os.environ.get('PYTHONPATH', '')])}
  code = subprocess.run(args, env=env).returncode
  if os.path.exists(error_path):
    with open(error_path) as f:
      raise UserError(f.read())
  if code:
    raise RuntimeError(
      f"preparing the token store failed (exit {code}); the stages' logs "
      f'are in {os.path.join(directory, "logs")}'
    )


def prepare_shared(data_cfg, workdir, tokenizer=None, for_eval=False) -> Prepared:
  """`prepare` for a run of several processes: process 0 builds the token store first; the
  others then reuse it (shared filesystem) or build the same one (local disks): never two
  writers of one file at once."""
  import jax

  build = lambda: prepare(data_cfg, workdir, tokenizer, for_eval)
  if jax.process_count() == 1:
    return build()
  from jax.experimental import multihost_utils

  prepared = build() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices('jaxgpt: token store prepared')
  return prepared or build()
