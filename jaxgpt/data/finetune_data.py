"""Fine-tuning data: labelled texts, instruction/response pairs and preference pairs, as
arrays and batches.

Records come from data/records.py, each knowing its file and line, so that a missing
column, an unknown label or an empty output is reported there. Splits come from separate
files or, when only a training file is given, from a hash of each record (stable across
runs and machines).
"""

import hashlib
import json
import logging

import grain
import numpy as np

from jaxgpt.data.records import Record, field, read_records
from jaxgpt.errors import UserError

SPLITS = ('train', 'val', 'test')


def _hash_split(key: str, val_fraction: float, test_fraction: float) -> str:
  u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
  return 'test' if u < test_fraction else 'val' if u < test_fraction + val_fraction else 'train'


def split_records(fc, key_field: str) -> dict[str, list[Record]]:
  """{'train', 'val', 'test'} records from finetune.{train,val,test}_path, or a split of
  the training file by a hash of each whole record (equal records land together)."""
  if not fc.train_path:
    raise UserError('finetune.train_path is empty; name the training file')
  splits = {'train': read_records(fc.train_path), 'val': [], 'test': []}
  for name in ('val', 'test'):
    if fc[f'{name}_path']:
      splits[name] = read_records(fc[f'{name}_path'])
  missing = [n for n in ('val', 'test') if not fc[f'{n}_path']]
  if missing:
    fractions = {
      'val': fc.val_fraction if 'val' in missing else 0.0,
      'test': fc.test_fraction if 'test' in missing else 0.0,
    }
    pool, splits['train'] = splits['train'], []
    for r in pool:
      field(r, key_field)  # a record without its main field is reported here
      key = json.dumps(r.fields, sort_keys=True, default=str)
      splits[_hash_split(key, fractions['val'], fractions['test'])].append(r)
  for name, records in splits.items():
    if not records and (name != 'test' or fc.test_fraction or fc.test_path):
      raise UserError(
        f'the {name} split of the fine-tuning data is empty; add records or '
        f'set finetune.{name}_path'
      )
  return splits


# Classification ---------------------------------------------------------------------------


def label_names(train: list[Record], label_field: str) -> list[str]:
  return sorted({field(r, label_field) for r in train})


def encode_classification(
  records, tokenizer, labels: list[str] | None, seq_len: int, fc, part: str = 'train'
) -> dict:
  """inputs_NxL (the first seq_len tokens), last_N (the last real token), labels_N (zeros
  when `labels` is None: texts to predict)."""
  index = {name: i for i, name in enumerate(labels or ())}
  n = len(records)
  inputs = np.full((n, seq_len), tokenizer.pad_id, np.int32)
  last, ids_N = np.zeros(n, np.int32), np.zeros(n, np.int32)
  for i, r in enumerate(records):
    if labels is not None:
      label = field(r, fc.label_field)
      if label not in index:
        if part != 'train' and not fc[f'{part}_path']:  # the hash split put it there
          raise UserError(
            f'{r.where}: label {label!r} occurs only in records that the hash split of '
            f'finetune.train_path put in the {part} part, so no training record has it; give '
            f'that label more records, or split the data yourself with finetune.{part}_path'
          )
        raise UserError(f'{r.where}: label {label!r} is not among the training labels {labels}')
      ids_N[i] = index[label]
    ids = tokenizer.encode(field(r, fc.text_field))[:seq_len] or [tokenizer.eod_id]
    inputs[i, : len(ids)] = ids
    last[i] = len(ids) - 1
  return {'inputs': inputs, 'last': last, 'labels': ids_N, 'weights': np.ones(n, np.float32)}


# Instructions -----------------------------------------------------------------------------


def prompt_of(record: Record, fc) -> str:
  instruction = field(record, fc.instruction_field)
  extra = field(record, fc.input_field, allow_empty=True) if fc.input_field in record.fields else ''
  template = fc.prompt_template if extra.strip() else fc.prompt_template_no_input
  return template.format(instruction=instruction, input=extra)


def instruction_examples(records, tokenizer, fc) -> list[tuple[list[int], list[int]]]:
  """(prompt ids, response ids + end-of-document) per record."""
  out = []
  for r in records:
    response = field(r, fc.output_field)
    out.append(
      (tokenizer.encode(prompt_of(r, fc)), tokenizer.encode(response) + [tokenizer.eod_id])
    )
  return out


def _example_rows(prompt, response, seq_len):
  """inputs, targets and weights of one example: loss on the response tokens only."""
  tokens = (prompt + response)[: seq_len + 1]
  weights = ([0.0] * len(prompt) + [1.0] * len(response))[1 : seq_len + 1]
  return tokens[:-1], tokens[1:], weights


def encode_instructions(examples, seq_len: int, pad_id: int, packed: bool) -> dict:
  """Rows of inputs/targets/weights (and, packed, segments/positions) from examples.

  Padded: one example per row. Packed: examples follow each other in a row until the next
  does not fit; each is its own segment with positions from 0, so nothing attends across
  examples and the logits of every example are those it would get alone.
  """
  rows, row, unseen = [], [], 0
  for prompt, response in examples:
    example = _example_rows(prompt, response, seq_len)
    unseen += not any(example[2])
    if not packed or sum(len(e[0]) for e in row) + len(example[0]) > seq_len:
      if row:
        rows.append(row)
      row = []
    row.append(example)
  if row:
    rows.append(row)
  if examples and unseen == len(examples):
    raise UserError(
      f'every prompt takes up all of model.seq_len={seq_len} tokens, so no response token '
      'is ever trained on; use a shorter finetune.prompt_template or a longer context'
    )
  if unseen:
    logging.getLogger('jaxgpt').warning(
      '%d of %d examples have no response token within model.seq_len=%d: they train nothing',
      unseen,
      len(examples),
      seq_len,
    )
  n = len(rows)
  out = {
    'inputs': np.full((n, seq_len), pad_id, np.int32),
    'targets': np.full((n, seq_len), pad_id, np.int32),
    'weights': np.zeros((n, seq_len), np.float32),
  }
  if packed:
    out['segments'] = np.zeros((n, seq_len), np.int32)
    out['positions'] = np.zeros((n, seq_len), np.int32)
  for i, parts in enumerate(rows):
    start = 0
    for segment, (inp, tgt, w) in enumerate(parts, 1):
      end = start + len(inp)
      out['inputs'][i, start:end], out['targets'][i, start:end] = inp, tgt
      out['weights'][i, start:end] = w
      if packed:
        out['segments'][i, start:end] = segment
        out['positions'][i, start:end] = np.arange(len(inp))
      start = end
  return out


# Preference pairs -------------------------------------------------------------------------


def preference_prompt(record: Record, fc) -> str:
  """The prompt of a pair: its prompt field as it is, or its instruction (and input) in
  the instruction templates."""
  if fc.prompt_field in record.fields:
    return field(record, fc.prompt_field)
  if fc.instruction_field in record.fields:
    return prompt_of(record, fc)
  raise UserError(
    f'{record.where}: a preference pair needs a {fc.prompt_field!r} field, or an '
    f'{fc.instruction_field!r} one (with an optional {fc.input_field!r}); it has '
    f'{sorted(record.fields)}: set finetune.prompt_field or finetune.instruction_field'
  )


def preference_examples(records, tokenizer, fc) -> list[tuple[list[int], ...]]:
  """(prompt ids, chosen ids + end-of-document, rejected ids + end-of-document) per record."""
  eod = tokenizer.eod_id
  return [
    (
      tokenizer.encode(preference_prompt(r, fc)),
      tokenizer.encode(field(r, fc.chosen_field)) + [eod],
      tokenizer.encode(field(r, fc.rejected_field)) + [eod],
    )
    for r in records
  ]


def encode_preferences(examples, seq_len: int, pad_id: int, split: str) -> dict:
  """Arrays of n x 2 rows: [:, 0] the prompt and the chosen response, [:, 1] the prompt and
  the rejected one, weights on the responses' tokens only. A pair whose prompt leaves one
  response no token within seq_len says nothing of the preference: it is dropped."""
  pairs = []
  for prompt, chosen, rejected in examples:
    rows = [_example_rows(prompt, response, seq_len) for response in (chosen, rejected)]
    if all(any(w) for _, _, w in rows):
      pairs.append(rows)
  dropped = len(examples) - len(pairs)
  if examples and not pairs:
    raise UserError(
      f'every {split} prompt takes up all of model.seq_len={seq_len} tokens, so no response '
      'token is ever compared; use a shorter prompt template or a longer context'
    )
  if dropped:
    logging.getLogger('jaxgpt').warning(
      '%d of %d %s pairs leave a response no token within model.seq_len=%d: dropped',
      dropped,
      len(examples),
      split,
      seq_len,
    )
  n = len(pairs)
  out = {
    'inputs': np.full((n, 2, seq_len), pad_id, np.int32),
    'targets': np.full((n, 2, seq_len), pad_id, np.int32),
    'weights': np.zeros((n, 2, seq_len), np.float32),
  }
  for i, rows in enumerate(pairs):
    for j, (inp, tgt, w) in enumerate(rows):
      out['inputs'][i, j, : len(inp)], out['targets'][i, j, : len(tgt)] = inp, tgt
      out['weights'][i, j, : len(w)] = w
  return out


# Batches ----------------------------------------------------------------------------------


class ArraySource(grain.sources.RandomAccessDataSource):
  """Row i of each array in a dict: a grain source for data that fit in memory."""

  def __init__(self, arrays: dict, name: str):
    self.arrays, self.name = arrays, name
    self._len = len(next(iter(arrays.values())))

  def __len__(self):
    return self._len

  def __getitem__(self, index):
    return {k: v[int(index)] for k, v in self.arrays.items()}

  def __repr__(self):  # grain checks a restored iterator against it
    return f'ArraySource({self.name}, rows={self._len}, keys={sorted(self.arrays)})'
