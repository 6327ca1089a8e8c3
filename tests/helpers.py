"""Small corpora and configs for tests; importable without touching jax's config, so that
the multi-process workers can use them too."""

import os
import random
import subprocess
import sys

from experiments import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORDS = (
  'alpha beta gamma delta value result index count total item name data node '
  'left right parent child key size limit offset buffer state'
).split()


def write_corpus(directory, n_docs=40, seed=0):
  """Small Python-like files: learnable structure, varied enough to split and dedup."""
  rng = random.Random(seed)
  os.makedirs(directory, exist_ok=True)
  for i in range(n_docs):
    lines = [f'# module {i}\n']
    for f in range(rng.randint(3, 6)):
      a, b = rng.sample(_WORDS, 2)
      lines.append(f'def {a}_{f}({b}, {a}=None):\n')
      for _ in range(rng.randint(2, 5)):
        x, y = rng.sample(_WORDS, 2)
        lines.append(f'    {x} = {y} + {rng.randint(0, 99)}\n')
      lines.append(f'    return {a}\n\n')
    with open(os.path.join(directory, f'doc_{i:03d}.py'), 'w') as fh:
      fh.write(''.join(lines))
  return directory


def tiny_config(corpus_dir, **fields):
  """The default experiment shrunk to seconds on CPU; `fields` override config.train,
  config.loop or config.execution, whichever has the field."""
  c = default.get_config()
  c.data.source = 'files'
  c.data.paths = (str(corpus_dir),)
  c.data.val_fraction = 0.1
  c.data.clean.min_chars = 16
  c.data.tokenizer.kind = 'char'
  c.data.tokenizer.vocab_size = 300
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.d_model = 32
  c.model.seq_len = 32
  c.execution.attention_block = 0
  c.train.batch_size = 8
  c.train.steps = 6
  c.loop.log_every = 1
  c.loop.eval_every = 1000
  c.loop.eval_batches = 2
  c.loop.checkpoint_every = 1000
  c.loop.peak_flops = 1e9  # skip the start-up matmul measurement
  c.optim.warmup_steps = 2
  c.eval.num_samples = 1
  c.eval.sample_tokens = 4
  for k, v in fields.items():
    section = next(s for s in ('train', 'loop', 'execution') if k in c[s])
    c[section][k] = v
  return c


FACTS = {
  'france': 'paris',
  'italy': 'rome',
  'spain': 'madrid',
  'norway': 'oslo',
  'egypt': 'cairo',
  'peru': 'lima',
  'japan': 'tokyo',
  'kenya': 'nairobi',
}


def write_facts_corpus(directory, n_docs=30, seed=0):
  """Documents of the same eight sentences in shuffled orders: a tiny model learns them
  by heart, so that tasks about them have answers known in advance."""
  rng = random.Random(seed)
  os.makedirs(directory, exist_ok=True)
  facts = [f'the capital of {c} is {city}.' for c, city in FACTS.items()]
  for i in range(n_docs):
    lines = [rng.choice(facts) for _ in range(12)]
    with open(os.path.join(directory, f'facts_{i:03d}.txt'), 'w') as fh:
      fh.write('\n'.join(lines) + '\n')
  return directory


def write_classification_data(path, n=300, seed=0):
  """Two classes told apart by their words: separable for any model that reads them."""
  import json

  rng = random.Random(seed)
  words = {'pos': _WORDS[:8], 'neg': _WORDS[12:20]}
  with open(path, 'w') as f:
    for _ in range(n):
      label = rng.choice(sorted(words))
      text = ' '.join(rng.choice(words[label]) for _ in range(rng.randint(3, 6)))
      f.write(json.dumps({'text': text, 'label': label}) + '\n')
  return str(path)


def write_instruction_data(path, n=200, seed=0):
  """Alpaca-style records, with and without an input."""
  import json

  rng = random.Random(seed)
  with open(path, 'w') as f:
    for _ in range(n):
      if rng.random() < 0.5:
        w = rng.choice(_WORDS)
        record = {
          'instruction': f'next after {w}',
          'output': _WORDS[(_WORDS.index(w) + 1) % len(_WORDS)],
        }
      else:
        a, b = rng.sample(_WORDS, 2)
        record = {'instruction': 'join with a dash', 'input': f'{a} {b}', 'output': f'{a}-{b}'}
      f.write(json.dumps(record) + '\n')
  return str(path)


def write_preference_data(path, n=160, seed=0, layout='prompt'):
  """Preference pairs whose chosen response is always 'yes' and rejected always 'no', after
  prompts of random words; `layout` 'instruction' puts them in instruction/input fields."""
  import json

  rng = random.Random(seed)
  with open(path, 'w') as f:
    for _ in range(n):
      a, b = rng.sample(_WORDS, 2)
      if layout == 'prompt':
        record = {'prompt': f'is {a} {b}?\n', 'chosen': 'yes', 'rejected': 'no'}
      else:
        record = {'instruction': 'is it', 'input': f'{a} {b}', 'chosen': 'yes', 'rejected': 'no'}
      f.write(json.dumps(record) + '\n')
  return str(path)


def run_py(*args):
  """`python run.py ARGS` from the repository root on CPU, its output captured."""
  return subprocess.run(
    [sys.executable, 'run.py', *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
  )
