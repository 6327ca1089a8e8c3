"""Three lm-eval tasks over the default run's held-out documents, written beside this file.

    python experiments/lm_eval/make_tasks.py
    python run.py --config=experiments/default.py --workdir=runs/default --mode=lm_eval \
        --lm_eval_include=experiments/lm_eval \
        --lm_eval_tasks=stdlib_next_line,stdlib_next_line_gen,stdlib_code_ppl

The documents are the standard-library files that the default experiment holds out for
validation (the pipeline's rule: a content hash below data.val_fraction), so the model
never trained on them. Built from the running interpreter's own files; nothing is fetched.
  stdlib_next_line      multiple choice: after up to 12 lines, the true next line or one of
                        3 lines drawn from the other held-out files (acc, acc_norm)
  stdlib_next_line_gen  the next line, greedily generated until a newline (exact_match)
  stdlib_code_ppl       each file's first 6,000 characters, rolling log-likelihood
                        (word and byte perplexity, bits per byte)
"""

import json
import os
import random
import sys
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments import default  # noqa: E402
from jaxgpt.data import clean, corpus  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PER_FILE = 30  # next-line questions per held-out file


def held_out() -> list[str]:
  c = default.get_config().data
  texts = []
  for path in corpus.stdlib_files():
    try:
      text = unicodedata.normalize(c.clean.normalize, path.read_text(encoding='utf-8'))
    except UnicodeDecodeError:
      continue
    if clean.val_bucket(text) < c.val_fraction:
      texts.append(text)
  return texts


def next_lines(texts, rng):
  """(context, true line, 3 other lines) with lines of real content only."""
  lines = [[ln for ln in t.splitlines(keepends=True) if len(ln.strip()) > 8] for t in texts]
  out = []
  for i, text in enumerate(texts):
    all_lines = text.splitlines(keepends=True)
    candidates = [n for n in range(4, len(all_lines)) if len(all_lines[n].strip()) > 8]
    for n in sorted(rng.sample(candidates, min(PER_FILE, len(candidates)))):
      others = [ln for j, file_lines in enumerate(lines) if j != i for ln in file_lines]
      wrong = rng.sample(others, 3)
      out.append((''.join(all_lines[max(0, n - 12) : n]), all_lines[n], wrong))
  return out


def main():
  rng = random.Random(0)
  texts = held_out()
  rows = []
  for context, line, wrong in next_lines(texts, rng):
    choices = [line, *wrong]
    rng.shuffle(choices)
    rows.append({'context': context, 'choices': choices, 'label': choices.index(line)})
  files = {'next_line.jsonl': rows, 'code.jsonl': [{'text': t[:6000]} for t in texts]}
  for name, records in files.items():
    with open(os.path.join(HERE, name), 'w', encoding='utf-8') as f:
      f.writelines(json.dumps(r) + '\n' for r in records)
  data = lambda name: (
    # relative to the repository root, where run.py runs
    f'dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: experiments/lm_eval/{name}\n'
    'test_split: test\n'
  )
  yamls = {
    # The context ends with a newline: no delimiter before the choice (jaxgpt's tasks.py
    # adds none there either, so both score the same strings).
    'stdlib_next_line': data('next_line.jsonl')
    + 'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
    'doc_to_target: "{{label}}"\ntarget_delimiter: ""\n'
    'metric_list:\n  - metric: acc\n  - metric: acc_norm\n',
    'stdlib_next_line_gen': data('next_line.jsonl')
    + 'output_type: generate_until\ndoc_to_text: "{{context}}"\n'
    'doc_to_target: "{{choices[label].rstrip(\'\\\\n\')}}"\ntarget_delimiter: ""\n'
    'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 48\n'
    'metric_list:\n  - metric: exact_match\n',
    'stdlib_code_ppl': data('code.jsonl')
    + 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
    'metric_list:\n'
    '  - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}\n'
    '  - {metric: byte_perplexity, aggregation: weighted_perplexity, higher_is_better: false}\n'
    '  - {metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}\n',
  }
  for name, body in yamls.items():
    with open(os.path.join(HERE, f'{name}.yaml'), 'w') as f:
      f.write(f'task: {name}\n{body}')
  print(f'{len(texts)} held-out files: {len(rows)} next-line questions; wrote {HERE}')


if __name__ == '__main__':
  main()
