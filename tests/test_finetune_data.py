"""Fine-tuning data: file formats, the messages bad data get, and the SFT batches' masks."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import finetune as finetune_configs
from jaxgpt import model as model_lib
from jaxgpt import loss
from jaxgpt import runstate
from jaxgpt.data import finetune_data as fdata
from jaxgpt.errors import UserError


class _Tokenizer:
  """Bytes as ids (3 + byte): enough to check masks and lengths without SentencePiece."""

  pad_id, eod_id = 0, 2

  def encode(self, text):
    return [3 + b for b in text.encode()]


def _fc(task='instruct', **kw):
  fc = finetune_configs.finetune_config(task)
  fc.update(kw)
  return fc


def test_csv_tsv_jsonl_and_json_read_alike(tmp_path):
  (tmp_path / 'a.csv').write_text('text,label\n"hello, world",pos\nbye,neg\n')
  (tmp_path / 'a.tsv').write_text('text\tlabel\nhello, world\tpos\nbye\tneg\n')
  (tmp_path / 'a.jsonl').write_text(
    '{"text": "hello, world", "label": "pos"}\n\n{"text": "bye", "label": "neg"}\n'
  )
  (tmp_path / 'a.json').write_text(
    json.dumps([{'text': 'hello, world', 'label': 'pos'}, {'text': 'bye', 'label': 'neg'}])
  )
  for ext in ('csv', 'tsv', 'jsonl', 'json'):
    records = fdata.read_records(str(tmp_path / f'a.{ext}'))
    assert [(r.fields['text'], r.fields['label']) for r in records] == [
      ('hello, world', 'pos'),
      ('bye', 'neg'),
    ], ext
  assert fdata.read_records(str(tmp_path / 'a.jsonl'))[1].where.endswith('a.jsonl:3')


@pytest.mark.parametrize(
  'task, name, content, message',
  [
    ('classify', 'm.csv', 'text,tag\nhi,pos\n', r"m.csv:2: missing column/field 'label'"),
    (
      'classify',
      'v.jsonl',
      '{"text": "a", "label": "pos"}\n{"text": "b", "label": "maybe"}\n',
      r"v.jsonl:2: label 'maybe' is not among the training labels \['neg', 'pos'\]",
    ),
    (
      'instruct',
      'o.jsonl',
      '{"instruction": "say hi", "output": "hi"}\n{"instruction": "x", "output": " "}\n',
      r"o.jsonl:2: field 'output' is empty",
    ),
    (
      'instruct',
      'j.jsonl',
      '{"instruction": "say hi", "output": "hi"}\n{"instruction": "x", \n',
      r'j.jsonl:2 is not JSON',
    ),
    (
      'instruct',
      'l.json',
      '[{"instruction": "a", "output": "b"},\n {"instruction": }]',
      r'l.json:2 is not JSON',
    ),
    ('classify', 'b.csv', b'text,label\n\xff\xfe,pos\n', r'b.csv is not UTF-8'),
    ('classify', 'x.xml', '<a/>', r'x.xml: use a .csv, .tsv, .jsonl or .json file'),
  ],
)
def test_bad_data_is_named_by_file_and_line(tmp_path, task, name, content, message):
  path = tmp_path / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(UserError, match=message):
    records = fdata.read_records(str(path))
    if task == 'classify':
      fdata.encode_classification(records, _Tokenizer(), ['neg', 'pos'], 16, _fc('classify'))
    else:
      fdata.instruction_examples(records, _Tokenizer(), _fc())
  with pytest.raises(UserError, match='does not exist'):
    fdata.read_records(str(tmp_path / 'missing.csv'))


def _instruction_arrays(packed, seq_len=40):
  fc = _fc(prompt_template='{instruction}|{input}>', prompt_template_no_input='{instruction}>')
  records = [
    fdata.Record(f'f:{i}', r)
    for i, r in enumerate(
      [
        {'instruction': 'ab', 'output': 'xyz'},
        {'instruction': 'cd', 'input': 'e', 'output': 'w'},
        {'instruction': 'fgh', 'input': '', 'output': 'uv'},
      ]
    )
  ]
  examples = fdata.instruction_examples(records, _Tokenizer(), fc)
  return examples, fdata.encode_instructions(examples, seq_len, 0, packed)


def test_a_label_that_the_hash_split_kept_from_training_says_so(tmp_path):
  fc = _fc('classify', val_fraction=0.2, test_fraction=0.0)
  records = [{'text': f'common {i}', 'label': 'pos' if i % 2 else 'neg'} for i in range(40)]
  key = lambda r: json.dumps(r, sort_keys=True)
  rare = next(
    {'text': f'rare {i}', 'label': 'rare'}
    for i in range(1000)
    if fdata._hash_split(key({'text': f'rare {i}', 'label': 'rare'}), 0.2, 0.0) == 'val'
  )
  path = tmp_path / 'data.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in records + [rare]))
  fc.train_path = str(path)
  splits = fdata.split_records(fc, fc.text_field)
  labels = fdata.label_names(splits['train'], fc.label_field)
  assert labels == ['neg', 'pos']
  with pytest.raises(
    UserError,
    match=r"label 'rare' occurs only in records that the hash split "
    r'of finetune.train_path put in the val part.*'
    r'finetune.val_path',
  ):
    fdata.encode_classification(splits['val'], _Tokenizer(), labels, 16, fc, 'val')


def test_loss_counts_response_tokens_and_the_end_of_document_only():
  examples, arrays = _instruction_arrays(packed=False)
  assert [p for p, _ in examples][1] == _Tokenizer().encode('cd|e>')
  assert [p for p, _ in examples][2] == _Tokenizer().encode('fgh>')  # empty input: no input
  for (prompt, response), targets, weights in zip(examples, arrays['targets'], arrays['weights']):
    assert response[-1] == _Tokenizer.eod_id
    n = len(prompt) + len(response) - 1
    assert list(targets[weights > 0]) == response  # exactly the response and its end
    assert weights[n:].sum() == 0 and weights[: len(prompt) - 1].sum() == 0


def test_prompt_targets_do_not_change_the_loss_and_packing_does_not_either():
  cfg = model_lib.ModelConfig(
    vocab_size=260, seq_len=40, num_layers=2, num_heads=2, d_model=16, mlp_dim=32, attention_block=8
  )
  model = model_lib.Transformer(cfg)
  params = nn.unbox(runstate.init_fn(model)(jax.random.key(0)))
  _, padded = _instruction_arrays(packed=False)
  nll, tokens = loss.next_token_loss(model, params, padded)
  changed = dict(padded)
  changed['targets'] = np.where(padded['weights'] > 0, padded['targets'], 77)
  nll_changed, _ = loss.next_token_loss(model, params, changed)
  assert float(nll_changed) == float(nll)
  _, packed = _instruction_arrays(packed=True)
  assert len(packed['inputs']) == 1 and packed['segments'].max() == 3
  nll_packed, tokens_packed = loss.next_token_loss(model, params, packed)
  assert float(tokens_packed) == float(tokens)
  assert float(nll_packed) == pytest.approx(float(nll), abs=1e-4)


def test_prompts_that_fill_the_context_are_refused_not_trained_on_silently(caplog):
  """A response cut off by the context trains nothing: all such examples is an error (the
  fine-tune would report a loss of 0 and learn nothing), some is a warning with the count."""
  long_prompt, short = list(range(1, 40)), list(range(1, 5))
  with pytest.raises(fdata.UserError, match='model.seq_len=32'):
    fdata.encode_instructions([(long_prompt, [7, 2])] * 3, 32, 0, packed=False)
  rows = fdata.encode_instructions([(long_prompt, [7, 2]), (short, [7, 2])], 32, 0, packed=True)
  assert rows['weights'].sum() == 2
  assert '1 of 2 examples have no response token' in caplog.text
