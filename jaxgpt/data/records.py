"""Records of CSV, TSV, JSONL or JSON (a list of objects) files, each with where it came
from ("file:line"), so that whatever is wrong with one is reported at its line.
"""

import csv
import dataclasses
import json
import os

from jaxgpt.errors import UserError


@dataclasses.dataclass
class Record:
  where: str  # file:line
  fields: dict


def read_records(path: str, text_field: str = '') -> list[Record]:
  """Records of a .csv, .tsv, .jsonl or .json file; with `text_field`, a .txt file too
  (one text per line, for predictions)."""
  if not os.path.isfile(path):
    raise UserError(f'data file {path} does not exist')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.txt' and text_field:
    with open(path, encoding='utf-8', errors='strict') as f:
      return [
        Record(f'{path}:{n}', {text_field: line.rstrip('\n')})
        for n, line in enumerate(f, 1)
        if line.strip()
      ]
  if ext not in ('.csv', '.tsv', '.jsonl', '.json'):
    raise UserError(f'{path}: use a .csv, .tsv, .jsonl or .json file')
  try:
    with open(path, encoding='utf-8', newline='') as f:
      if ext in ('.csv', '.tsv'):
        reader = csv.DictReader(f, delimiter='\t' if ext == '.tsv' else ',')
        return [Record(f'{path}:{reader.line_num}', row) for row in reader]
      if ext == '.json':
        return _json_list(path, f.read())
      return [_json_line(path, n, line) for n, line in enumerate(f, 1) if line.strip()]
  except UnicodeDecodeError as e:
    raise UserError(
      f'{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it with iconv'
    ) from None


def _json_line(path, n, line) -> Record:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f'{path}:{n} is not JSON ({e.msg}); use one JSON object per line') from None
  if not isinstance(record, dict):
    raise UserError(f'{path}:{n}: each line must be a JSON object')
  return Record(f'{path}:{n}', record)


def _json_list(path, text) -> list[Record]:
  try:
    items = json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(
      f'{path}:{e.lineno} is not JSON ({e.msg}); a .json file holds a list of '
      'objects, a .jsonl file one object per line'
    ) from None
  if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
    raise UserError(f'{path}: a .json file must hold a list of objects')
  return [Record(f'{path} item {i}', x) for i, x in enumerate(items)]


def field(record: Record, name: str, allow_empty=False) -> str:
  if name not in record.fields or record.fields[name] is None:
    raise UserError(
      f'{record.where}: missing column/field {name!r} (has '
      f'{sorted(record.fields)}); set the finetune.*_field names to match'
    )
  value = str(record.fields[name])
  if not allow_empty and not value.strip():
    raise UserError(f'{record.where}: field {name!r} is empty')
  return value
