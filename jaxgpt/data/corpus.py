"""Document sources: the embedded default corpus, local shards, TFDS datasets, and mixtures.

A source is read in *units* (a group of files, or a range of TFDS records) so that the
curation engine can spread them over tasks; every unit yields `Document(text, id)` in a
deterministic order. Planning the units only lists and stats files: nothing is opened, so a
store can be fingerprinted (and reopened) without reading the corpus.

Bad input is found here: a missing path stops the run before anything starts; a file that
does not decompress, a line that is not UTF-8 or JSON, or a record without the text field
stops the run naming `file:line`, or (`data.prep.skip_bad_records`) is counted and named in the
data card.
"""

import contextlib
import dataclasses
import glob
import gzip
import io
import json
import os
import pathlib
import sysconfig
from typing import Iterator

import zstandard
from datatrove.data import Document

from jaxgpt.errors import UserError

# Directories of the standard library that are not "the library": test suites and
# third-party packages installed beside it.
_STDLIB_SKIP = {'site-packages', 'dist-packages', 'test', 'tests', 'idle_test', '__pycache__'}
JSONL_SUFFIXES = ('.jsonl', '.jsonl.gz', '.jsonl.zst', '.json.gz', '.json.zst')
PROFILES = ('web', 'code')
KINDS = ('stdlib', 'files', 'tfds')
BAD_NAMES_KEPT = 20  # bad records named in the data card per source


@dataclasses.dataclass(frozen=True)
class Source:
  """One named source of documents; `split='val'` sends all of it to validation."""

  name: str
  kind: str
  paths: tuple = ()
  extensions: tuple = ()
  text_field: str = 'text'
  tfds_name: str = ''
  tfds_split: str = 'train'
  data_dir: str = ''
  weight: float = 1.0
  profile: str = 'web'
  split: str = 'auto'


@dataclasses.dataclass(frozen=True)
class Unit:
  """What one curation task reads: files of one source; or the lines of one JSONL file
  that start in bytes [start, stop); or records [start, stop) of a TFDS source."""

  source: str
  files: tuple = ()
  start: int = 0
  stop: int = 0


def _source(name, c, weight=1.0, split='auto', kind=None, paths=None, tfds_split=None):
  kind = kind or c.source
  if kind not in KINDS:
    raise UserError(f'data.source={kind!r} ({name}) is not one of {", ".join(map(repr, KINDS))}')
  if c.profile not in PROFILES:
    raise UserError(
      f"data.profile={c.profile!r} ({name}): use 'web' (prose: language ID, "
      "Gopher and C4 rules) or 'code' (length, non-text and repetition only)"
    )
  if kind == 'tfds' and not c.tfds_name:
    raise UserError(
      "data.source='tfds' needs data.tfds_name, e.g. --config.data.tfds_name=tiny_shakespeare"
    )
  if weight <= 0:
    raise UserError(f'data.mixture.{name}.weight={weight} must be positive')
  paths = c.paths if paths is None else paths
  return Source(
    name,
    kind,
    (paths,) if isinstance(paths, str) else tuple(paths),
    tuple(c.extensions),
    c.text_field,
    c.tfds_name,
    tfds_split or c.tfds_split,
    c.data_dir,
    float(weight),
    c.profile,
    split,
  )


def sources(cfg) -> list[Source]:
  """The sources config.data names: one, or `data.mixture`'s, plus an explicit validation set."""
  if cfg.mixture:
    out = [_source(name, c, c.weight) for name, c in sorted(cfg.mixture.items())]
  else:
    if cfg.source == 'stdlib' and cfg.paths:
      raise UserError(
        "data.paths is set but data.source is 'stdlib', which ignores it; add "
        '--config.data.source=files to train on those paths'
      )
    out = [_source(cfg.source, cfg)]
  if cfg.val_paths:
    out.append(_source('validation', cfg, split='val', kind='files', paths=cfg.val_paths))
  elif cfg.source == 'tfds' and cfg.tfds_val_split and not cfg.mixture:
    out.append(_source('validation', cfg, split='val', tfds_split=cfg.tfds_val_split))
  return out


def stdlib_files() -> list[pathlib.Path]:
  root = pathlib.Path(sysconfig.get_paths()['stdlib'])
  return sorted(
    p for p in root.rglob('*.py') if not _STDLIB_SKIP.intersection(p.relative_to(root).parts[:-1])
  )


def expand_paths(paths, extensions) -> list[pathlib.Path]:
  """Files, directories (walked, filtered by extension) and globs, in sorted order."""
  if isinstance(paths, str):
    paths = (paths,)
  if not paths:
    raise UserError(
      "data.source='files' needs data.paths: set "
      '--config.data.paths="(\'corpus/*.txt\',)" (files, directories or globs)'
    )
  out = []
  for raw in paths:
    path = os.path.expanduser(raw)
    if glob.has_magic(path):
      matches = sorted(glob.glob(path, recursive=True))
      if not matches:
        raise UserError(f'data.paths: the glob {raw!r} matches no file; check the pattern')
      out.extend(pathlib.Path(m) for m in matches if os.path.isfile(m))
    elif os.path.isdir(path):
      found = sorted(
        p
        for p in pathlib.Path(path).rglob('*')
        if p.is_file() and (not extensions or _suffix(p) in extensions or p.suffix in extensions)
      )
      if not found:
        raise UserError(
          f'data.paths: the directory {raw!r} holds no file ending in one of '
          f'data.extensions={tuple(extensions)}; add its suffix there'
        )
      out.extend(found)
    elif os.path.isfile(path):
      out.append(pathlib.Path(path))
    else:
      raise UserError(f'data.paths: {raw!r} does not exist; fix the path or remove it')
  return out


def _suffix(path) -> str:
  """'.jsonl.gz' for shards, the plain suffix otherwise."""
  name = str(path)
  return next((s for s in JSONL_SUFFIXES if name.endswith(s)), pathlib.Path(name).suffix)


def source_files(src: Source) -> list[pathlib.Path]:
  if src.kind == 'stdlib':
    return stdlib_files()
  if src.kind == 'files':
    return expand_paths(src.paths, src.extensions)
  return []


def _tfds_source(src: Source):
  # tfds.data_source reads array_record files directly: no TensorFlow needed.
  import tensorflow_datasets as tfds

  try:
    return tfds.data_source(src.tfds_name, split=src.tfds_split, data_dir=src.data_dir or None)
  except Exception as e:  # tfds raises several types for "not prepared here"
    raise UserError(
      f'TFDS dataset {src.tfds_name!r} (split {src.tfds_split!r}) could not be '
      f'opened from data_dir={src.data_dir or "default"!r}: {e}. Prepare it with '
      "file_format='array_record' or set data.data_dir"
    ) from None


def identify(src: Source) -> dict:
  """What identifies the source's content: file names, sizes and mtimes; a TFDS dataset's
  name, version and record count. Files are listed and stat-ed, never opened."""
  if src.kind == 'tfds':
    data = _tfds_source(src)
    info = getattr(data, 'dataset_info', None)
    return {
      'tfds': f'{src.tfds_name}/{src.tfds_split}',
      'records': len(data),
      'version': str(getattr(info, 'version', '')),
      'data_dir': src.data_dir,
    }
  return {'files': [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in source_files(src)]}


def units(src: Source, identity: dict, unit_bytes: int) -> list[Unit]:
  """The source cut into units of about unit_bytes: groups of whole files, or record ranges."""
  if src.kind == 'tfds':
    n, step = identity['records'], max(1, unit_bytes // 4096)  # records of a few kB each
    return [Unit(src.name, start=a, stop=min(n, a + step)) for a in range(0, n, step)]
  out, group, size = [], [], 0
  for name, nbytes, _ in identity['files']:
    if nbytes > unit_bytes and name.endswith('.jsonl'):  # a big file, cut at line starts
      if group:
        out.append(Unit(src.name, tuple(group)))
        group, size = [], 0
      n = -(-nbytes // unit_bytes)
      cuts = [nbytes * i // n for i in range(n + 1)]
      out += [Unit(src.name, (name,), a, b) for a, b in zip(cuts, cuts[1:])]
      continue
    if group and size + nbytes > unit_bytes:  # a unit never grows past unit_bytes
      out.append(Unit(src.name, tuple(group)))
      group, size = [], 0
    group.append(name)
    size += nbytes
  if group:
    out.append(Unit(src.name, tuple(group)))
  return out


@dataclasses.dataclass
class BadRecords:
  """Bad input met while reading, per source: a count by reason and the first few names."""

  skip: bool
  counts: dict = dataclasses.field(default_factory=dict)
  names: list = dataclasses.field(default_factory=list)

  def found(self, where: str, reason: str, fix: str):
    if not self.skip:
      raise UserError(
        f'{where}: {reason}; {fix}, or set --config.data.prep.skip_bad_records=True '
        'to skip and count such records'
      )
    kind = reason.split(' (')[0]  # without the detail: 'not valid JSON', 'not UTF-8', ...
    self.counts[kind] = self.counts.get(kind, 0) + 1
    if len(self.names) < BAD_NAMES_KEPT:
      self.names.append(f'{where}: {reason}')


def _open_lines(path: str):
  """Binary lines of a plain, gzip or zstandard file."""
  if path.endswith('.gz'):
    return gzip.open(path, 'rb')
  if path.endswith('.zst'):
    return io.BufferedReader(
      zstandard.ZstdDecompressor().stream_reader(open(path, 'rb'), closefd=True)
    )
  return open(path, 'rb')


def _lines_before(path: str, offset: int) -> int:
  """How many lines of a plain file end before byte `offset`."""
  count = 0
  with open(path, 'rb') as f:
    while offset > 0:
      block = f.read(min(offset, 1 << 24))
      if not block:
        break
      count += block.count(b'\n')
      offset -= len(block)
  return count


@contextlib.contextmanager
def _lines(path: str, start: int, stop: int):
  """(binary lines, byte offset of the first): of the whole file when stop is 0, else of the
  lines of a plain file that start in bytes [start, stop)."""
  if not stop:
    with _open_lines(path) as f:
      yield f, 0
    return
  with open(path, 'rb') as f:
    if start:
      f.seek(start - 1)
      f.readline()  # the rest of the line before ours, or just its newline
    first = f.tell()

    def lines():
      pos = first
      while pos < stop and (raw := f.readline()):
        pos += len(raw)
        yield raw

    yield lines(), first


class _LineNames:
  """'file:line' for the lines read from byte `first` on; the lines above it are counted
  only when a name is asked for (a bad record), not for every range read."""

  def __init__(self, path: str, first: int):
    self.path, self.first, self.above = path, first, None if first else 0

  def __call__(self, lineno: int) -> str:
    if self.above is None:
      self.above = _lines_before(self.path, self.first)
    return f'{self.path}:{self.above + lineno}'


def _jsonl_documents(
  path, src: Source, bad: BadRecords, start: int = 0, stop: int = 0
) -> Iterator[Document]:
  lineno, name = 0, _LineNames(path, 0)
  try:
    with _lines(path, start, stop) as (lines, first):
      name = _LineNames(path, first)
      for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
          continue
        try:
          record = json.loads(raw.decode('utf-8'))
        except UnicodeDecodeError as e:
          bad.found(
            name(lineno),
            f'not UTF-8 (byte {e.start}: {e.reason})',
            'convert the file (iconv -t UTF-8)',
          )
          continue
        except json.JSONDecodeError as e:
          bad.found(name(lineno), f'not valid JSON ({e.msg})', 'fix or remove that line')
          continue
        if not isinstance(record, dict) or src.text_field not in record:
          bad.found(
            name(lineno),
            f'no {src.text_field!r} field',
            'set data.text_field to the field that holds the text',
          )
          continue
        yield Document(str(record[src.text_field]), f'{path}@{first}:{lineno}')
  except (OSError, EOFError, zstandard.ZstdError) as e:  # a truncated or corrupt shard
    bad.found(name(lineno + 1), f'a corrupt shard ({type(e).__name__}: {e})', 'replace the file')


def _parquet_documents(path, src: Source, bad: BadRecords) -> Iterator[Document]:
  import pyarrow
  import pyarrow.parquet as pq

  row = 0
  try:
    f = pq.ParquetFile(path)
    if src.text_field not in f.schema_arrow.names:
      bad.found(
        path,
        f'no {src.text_field!r} column',
        'set data.text_field to the column that holds the text',
      )
      return
    for batch in f.iter_batches(columns=[src.text_field], batch_size=1024):
      for text in batch.column(0).to_pylist():
        row += 1
        if text is not None:
          yield Document(str(text), f'{path}:{row}')
  except (OSError, pyarrow.ArrowException) as e:
    bad.found(f'{path}:{row + 1}', f'a corrupt shard ({type(e).__name__}: {e})', 'replace the file')


def _text_document(path, bad: BadRecords) -> Iterator[Document]:
  with open(path, 'rb') as f:
    data = f.read()
  try:
    yield Document(data.decode('utf-8'), path)
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b'\n') + 1
    bad.found(
      f'{path}:{line}', f'not UTF-8 (byte {e.start}: {e.reason})', 'convert it (iconv -t UTF-8)'
    )


def file_documents(path: str, src: Source, bad: BadRecords) -> Iterator[Document]:
  suffix = _suffix(path)
  if suffix in JSONL_SUFFIXES:
    return _jsonl_documents(path, src, bad)
  if suffix == '.parquet':
    return _parquet_documents(path, src, bad)
  return _text_document(path, bad)


def unit_documents(unit: Unit, src: Source, bad: BadRecords) -> Iterator[Document]:
  if src.kind != 'tfds':
    if unit.stop:  # a byte range of one JSONL file
      yield from _jsonl_documents(unit.files[0], src, bad, unit.start, unit.stop)
      return
    for path in unit.files:
      yield from file_documents(path, src, bad)
    return
  data = _tfds_source(src)
  for i in range(unit.start, unit.stop):
    name = f'{src.tfds_name}/{src.tfds_split}/{i}'
    record = data[i]
    if src.text_field not in record:
      bad.found(
        name, f'no {src.text_field!r} field', f'set data.text_field to one of {sorted(record)}'
      )
      continue
    value = record[src.text_field]
    try:
      text = value.decode('utf-8') if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError as e:
      bad.found(name, f'not UTF-8 (byte {e.start}: {e.reason})', 'fix the dataset')
      continue
    yield Document(text, name)
