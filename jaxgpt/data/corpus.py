"""Document sources: the embedded default corpus, local files, JSONL, TFDS datasets.

Every source yields `Document(name, text)` in a deterministic order, so a run is
reproducible from its config alone. Decoding problems are found here, before any model
exists: a missing path or a non-UTF-8 file raises `UserError` naming the file (or, with
`data.skip_bad_files`, is skipped and counted).
"""
import dataclasses
import glob
import json
import os
import pathlib
import sysconfig
from typing import Iterator

from jaxgpt.errors import UserError

# Directories of the standard library that are not "the library": test suites and
# third-party packages installed beside it.
_STDLIB_SKIP = {'site-packages', 'dist-packages', 'test', 'tests', 'idle_test', '__pycache__'}


@dataclasses.dataclass(frozen=True)
class Document:
  name: str
  text: str


@dataclasses.dataclass
class ReadStats:
  files: int = 0
  bad_files: int = 0  # skipped as non-UTF-8 (only with skip_bad_files)


def stdlib_files() -> list[pathlib.Path]:
  root = pathlib.Path(sysconfig.get_paths()['stdlib'])
  return sorted(p for p in root.rglob('*.py')
                if not _STDLIB_SKIP.intersection(p.relative_to(root).parts[:-1]))


def expand_paths(paths, extensions) -> list[pathlib.Path]:
  """Files, directories (walked, filtered by extension) and globs, in sorted order."""
  if isinstance(paths, str):
    paths = (paths,)
  if not paths:
    raise UserError("data.source='files' needs data.paths: set "
                    "--config.data.paths=\"('corpus/*.txt',)\" (files, directories or globs)")
  out = []
  for raw in paths:
    path = os.path.expanduser(raw)
    if glob.has_magic(path):
      matches = sorted(glob.glob(path, recursive=True))
      if not matches:
        raise UserError(f'data.paths: the glob {raw!r} matches no file; check the pattern')
      out.extend(pathlib.Path(m) for m in matches if os.path.isfile(m))
    elif os.path.isdir(path):
      out.extend(sorted(p for p in pathlib.Path(path).rglob('*')
                        if p.is_file() and (not extensions or p.suffix in extensions)))
    elif os.path.isfile(path):
      out.append(pathlib.Path(path))
    else:
      raise UserError(f'data.paths: {raw!r} does not exist; fix the path or remove it')
  return out


def _read_text(path: pathlib.Path, skip_bad: bool, stats: ReadStats) -> str | None:
  stats.files += 1
  try:
    return path.read_bytes().decode('utf-8')
  except UnicodeDecodeError as e:
    if skip_bad:
      stats.bad_files += 1
      return None
    raise UserError(
        f'{path} is not UTF-8 (byte {e.start}: {e.reason}); convert it '
        f'(iconv -t UTF-8) or set --config.data.skip_bad_files=True to skip such files'
    ) from None


def _jsonl_documents(path, text, field) -> Iterator[Document]:
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f'{path}:{lineno} is not valid JSON ({e.msg}); '
                      'fix or remove that line') from None
    if not isinstance(record, dict) or field not in record:
      raise UserError(f'{path}:{lineno} has no {field!r} field; set data.text_field '
                      'to the field that holds the text')
    yield Document(f'{path}:{lineno}', str(record[field]))


def file_documents(paths, extensions=(), text_field='text', skip_bad=False,
                   stats: ReadStats | None = None) -> Iterator[Document]:
  stats = stats if stats is not None else ReadStats()
  for path in expand_paths(paths, extensions):
    text = _read_text(path, skip_bad, stats)
    if text is None:
      continue
    if path.suffix == '.jsonl':
      yield from _jsonl_documents(path, text, text_field)
    else:
      yield Document(str(path), text)


def tfds_documents(name, split, data_dir, text_field) -> Iterator[Document]:
  # tfds.data_source reads array_record files directly: no TensorFlow needed.
  import tensorflow_datasets as tfds
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None)
  except Exception as e:  # tfds raises several types for "not prepared here"
    raise UserError(f'TFDS dataset {name!r} (split {split!r}) could not be opened from '
                    f'data_dir={data_dir or "default"!r}: {e}. Prepare it with '
                    "file_format='array_record' or set data.data_dir") from None
  for i in range(len(source)):
    value = source[i][text_field]
    text = value.decode('utf-8') if isinstance(value, bytes) else str(value)
    yield Document(f'{name}/{split}/{i}', text)


def documents(cfg, stats: ReadStats | None = None, validation=False) -> Iterator[Document]:
  """The documents `cfg` (config.data) names; `validation` reads its explicit val source."""
  if validation:
    if cfg.source == 'tfds':
      return tfds_documents(cfg.tfds_name, cfg.tfds_val_split, cfg.data_dir, cfg.text_field)
    return file_documents(cfg.val_paths, cfg.extensions, cfg.text_field, cfg.skip_bad_files, stats)
  if cfg.source == 'stdlib':
    return file_documents([str(p) for p in stdlib_files()], (), cfg.text_field,
                          cfg.skip_bad_files, stats)
  if cfg.source == 'files':
    return file_documents(cfg.paths, cfg.extensions, cfg.text_field, cfg.skip_bad_files, stats)
  if cfg.source == 'tfds':
    if not cfg.tfds_name:
      raise UserError("data.source='tfds' needs data.tfds_name, e.g. "
                      "--config.data.tfds_name=tiny_shakespeare")
    return tfds_documents(cfg.tfds_name, cfg.tfds_split, cfg.data_dir, cfg.text_field)
  raise UserError(f"data.source={cfg.source!r} is not one of 'stdlib', 'files', 'tfds'")


def has_validation_source(cfg) -> bool:
  return bool(cfg.val_paths) or (cfg.source == 'tfds' and bool(cfg.tfds_val_split))
