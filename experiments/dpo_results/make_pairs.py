"""Writes the preference pairs of the DPO example run: Python function signatures, each with
a body that starts with a docstring (chosen) and the same body without one (rejected).

    python experiments/dpo_results/make_pairs.py /tmp/pairs.jsonl
"""

import json
import random
import sys

VERBS = ['get', 'find', 'make', 'read', 'load', 'parse', 'build', 'check', 'count', 'open']
NOUNS = ['name', 'path', 'size', 'items', 'value', 'header', 'config', 'table', 'index', 'key']
ARGS = ['obj', 'data', 'node', 'record', 'entry', 'self', 'item', 'source']


def pairs(n: int, seed: int = 0):
  rng = random.Random(seed)
  for _ in range(n):
    verb, noun, arg = rng.choice(VERBS), rng.choice(NOUNS), rng.choice(ARGS)
    body = f'    return {arg}.{noun}\n'
    yield {
      'prompt': f'def {verb}_{noun}({arg}):\n',
      'chosen': f'    """{verb.capitalize()} the {noun} of {arg}."""\n{body}',
      'rejected': body,
    }


if __name__ == '__main__':
  with open(sys.argv[1], 'w') as f:
    for record in pairs(int(sys.argv[2]) if len(sys.argv) > 2 else 400):
      f.write(json.dumps(record) + '\n')
