"""Downstream tasks scored by log-likelihood: multiple choice and last-word cloze (JSONL).

Multiple choice (the HellaSwag / PIQA / ARC layout): each line has a context, choices and
the index of the right one. Field names are read as the common releases spell them:
  context: "context", "ctx", "goal", "question" (ARC's {"stem": ...} too)
  choices: "choices", "endings", or "sol1", "sol2", ... (ARC's [{"text": ...}] too)
  label:   "label", "gold", "answer", "answerKey": an index, or a letter/number naming one
A choice is scored by the summed log-probability of its tokens after the context (joined by
eval.target_delimiter, a space by default, when neither has whitespace there): `acc` picks
the highest sum, `acc_norm` the highest sum per UTF-8 byte of the choice (which does not
favour short choices).

Cloze (the LAMBADA layout): each line has "text"; the target is its last word. The model
gets it right when greedy decoding would produce every token of that word.

Each accuracy comes with its standard error over examples, sqrt(p (1 - p) / (n - 1)).
"""

import logging
import math
import os
import string
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgpt import generate as generate_lib
from jaxgpt import chunked_loss
from jaxgpt import model as model_lib
from jaxgpt import sharding
from jaxgpt.data import records
from jaxgpt.errors import UserError

log = logging.getLogger('jaxgpt')

_CONTEXT_KEYS = ('context', 'ctx', 'goal', 'question')
_LABEL_KEYS = ('label', 'gold', 'answer', 'answerKey')


def _choice_example(record: dict, where: str, delimiter: str = ' ') -> dict:
  context = next((record[k] for k in _CONTEXT_KEYS if k in record), None)
  if isinstance(context, dict):  # ARC: {"stem": ..., "choices": [...]}
    record = {**context, **record}
    context = context.get('stem')
  choices = record.get('choices', record.get('endings'))
  if choices is None:
    choices = [record[f'sol{i}'] for i in range(1, 10) if f'sol{i}' in record] or None
  names = None
  if isinstance(choices, dict):  # ARC on the hub: {"text": [...], "label": [...]}
    choices, names = choices.get('text'), choices.get('label')
  elif choices and isinstance(choices[0], dict):  # ARC's [{"text": ..., "label": ...}]
    choices, names = [c.get('text') for c in choices], [c.get('label') for c in choices]
  label = next((record[k] for k in _LABEL_KEYS if k in record), None)
  if not isinstance(context, str) or not choices or not all(isinstance(c, str) for c in choices):
    raise UserError(
      f'{where}: a multiple-choice line needs a text context '
      f'({"/".join(_CONTEXT_KEYS)}) and a list of text choices '
      '(choices/endings/sol1..)'
    )
  index = _label_index(label, choices, names)
  if index is None:
    raise UserError(
      f'{where}: label {label!r} names none of the {len(choices)} choices; use '
      "an index from 0, or the choice's letter or name"
    )
  # Releases differ on where the space between context and choice lives (HellaSwag's and
  # ARC's choices have none); as lm-eval's target delimiter does, `delimiter` is put in when
  # neither side has whitespace there, so no choice is scored glued to the context's last word.
  choices = [
    c if not context or context[-1:].isspace() or c[:1].isspace() else delimiter + c
    for c in choices
  ]
  return {'context': context, 'choices': choices, 'label': index}


def _label_index(label, choices, names):
  if isinstance(label, str) and names and label in names:
    return names.index(label)
  if isinstance(label, str) and len(label) == 1 and label in string.ascii_uppercase:
    label = string.ascii_uppercase.index(label)
  elif isinstance(label, str) and label.isdigit():
    label = int(label)
  if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(choices):
    return label
  return None


def _cloze_example(record: dict, where: str) -> dict:
  text = record.get('text')
  if not isinstance(text, str) or ' ' not in text.strip():
    raise UserError(f'{where}: a cloze line needs "text" of at least two words')
  context, word = text.rstrip().rsplit(' ', 1)
  return {'context': context, 'choices': [' ' + word], 'label': 0}


def load(path: str, delimiter: str = ' ') -> dict:
  """{'name', 'kind', 'examples'}; the kind is cloze when lines have only "text". A
  multiple-choice context and choice are joined with `delimiter` (eval.target_delimiter)
  where neither has whitespace at the join."""
  examples, kind = [], None
  for record in records.read_records(path):
    fields = record.fields
    kind = kind or ('cloze' if set(fields) <= {'text', 'id', 'domain'} else 'choice')
    if kind == 'cloze':
      examples.append(_cloze_example(fields, record.where))
    else:
      examples.append(_choice_example(fields, record.where, delimiter))
  if not examples:
    raise UserError(f'task file {path} has no examples')
  name = os.path.splitext(os.path.basename(path))[0]
  return {'name': name, 'kind': kind, 'examples': examples}


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """(context ids, continuation ids) that together tokenise context + continuation.

  The whole string is encoded at once where that leaves the context's tokens intact, so
  the continuation is scored in the tokenisation the model saw in training.
  """
  context_ids = tokenizer.encode(context) or [tokenizer.eod_id]
  whole = tokenizer.encode(context + continuation)
  if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
    return context_ids, whole[len(context_ids) :]
  return context_ids, tokenizer.encode(continuation)


class Scorer:
  """score(pairs) -> (summed log-prob, greedy?) of each continuation after its context.

  Rows are split over the mesh's batch axes, and the logits are made
  `model.cfg.loss_chunks` chunks of positions at a time (chunked_loss.py).
  """

  def __init__(self, model, params, mesh, batch_size: int):
    self.model, self.params = model, params
    self.seq_len = model.cfg.seq_len
    self.rows, shards = sharding.rows(mesh)
    self.batch_size = -(-batch_size // shards) * shards  # padding rows score nothing
    self.replicated = NamedSharding(mesh, P())
    self._score = jax.jit(self._score_fn, out_shardings=self.replicated)

  def _score_fn(self, params, inputs_BxL, targets_BxL, mask_BxL):
    cfg = self.model.cfg
    h_BxLxD = self.model.apply({'params': params}, inputs_BxL, method='hidden')
    logp_BxL, greedy_BxL = chunked_loss.token_logp(
      h_BxLxD,
      model_lib.output_table(cfg, params),
      targets_BxL,
      cfg.loss_chunks,
      cfg.dtype,
      cfg.valid_vocab,
    )
    return (logp_BxL * mask_BxL).sum(axis=-1), (greedy_BxL | (mask_BxL == 0)).all(axis=-1)

  def score(self, pairs: list[tuple[list[int], list[int]]]) -> tuple[np.ndarray, np.ndarray]:
    logps, greedy = [], []
    for start in range(0, len(pairs), self.batch_size):
      chunk = pairs[start : start + self.batch_size]
      # Inputs are the sequence minus its last token; the continuation is always kept, the
      # context cut from the left to fit the window.
      rows = [(c + x)[-(self.seq_len + 1) :] for c, x in chunk]
      width = generate_lib.bucket_length(max(map(len, rows)) - 1, self.seq_len)
      arrays = np.zeros((3, self.batch_size, width), np.int32)
      for b, ((_, cont), row) in enumerate(zip(chunk, rows)):
        n = len(row) - 1
        arrays[0, b, :n], arrays[1, b, :n] = row[:-1], row[1:]
        arrays[2, b, max(0, n - len(cont)) : n] = 1
      # Every process holds all rows; each device takes its own.
      put = lambda x: jax.make_array_from_callback(x.shape, self.rows, lambda i: x[i])
      lp, gr = self._score(self.params, *map(put, arrays))
      logps.append(np.asarray(lp)[: len(chunk)])
      greedy.append(np.asarray(gr)[: len(chunk)])
    return np.concatenate(logps), np.concatenate(greedy)


def _accuracy(correct: np.ndarray, prefix: str) -> dict:
  n, p = len(correct), float(np.mean(correct))
  return {prefix: p, f'{prefix}_stderr': math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0}


def evaluate(scorer: Scorer, tokenizer, task: dict) -> dict:
  """Accuracy (± standard error) of the model behind `scorer` on a loaded task."""
  t0 = time.time()
  examples = task['examples']
  pairs = [encode_pair(tokenizer, e['context'], c) for e in examples for c in e['choices']]
  logp, greedy = scorer.score(pairs)
  result = {'kind': task['kind'], 'examples': len(examples)}
  if task['kind'] == 'cloze':
    result.update(_accuracy(greedy, 'acc'))
    result['target_ppl'] = math.exp(-logp.sum() / sum(len(x) for _, x in pairs))
  else:
    nbytes = np.array([max(1, len(c.encode('utf-8'))) for e in examples for c in e['choices']])
    ends = np.cumsum([len(e['choices']) for e in examples])
    labels = np.array([e['label'] for e in examples])
    for prefix, score in (('acc', logp), ('acc_norm', logp / nbytes)):
      picks = np.array([s.argmax() for s in np.split(score, ends[:-1])])
      result.update(_accuracy(picks == labels, prefix))
  log.info(
    'task %s: %s (%d examples, %.1fs)',
    task['name'],
    ', '.join(f'{k} {v:.4f}' for k, v in result.items() if isinstance(v, float)),
    len(examples),
    time.time() - t0,
  )
  return result
