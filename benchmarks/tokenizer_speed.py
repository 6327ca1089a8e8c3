"""Batched encoding speed of the tokenizers on this machine's cores: GPT-2's (tiktoken, as
data.tokenizer.kind='gpt2' runs it; and Hugging Face tokenizers on the same files, what
GPT2TokenizerFast runs) against SentencePiece (the default run's kind).

    python benchmarks/tokenizer_speed.py [--mb=16] [--repeats=3]

The text is the standard library's .py files, the default corpus. GPT-2's vocabulary is
trained here in GPT-2's layout (50,000 merges, 50,257 ids; jaxgpt/data/synthetic.py) since
nothing is downloaded; SentencePiece is an 8k BPE trained as the default run trains it.
Each figure is the median of `repeats` encodings of the whole text, split into documents,
with one thread per core. Writes benchmarks/tokenizer_speed.json.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from jaxgpt.data import bpe, corpus, synthetic  # noqa: E402
from jaxgpt.data import tokenizer as tokenizer_lib  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def documents(mb: float) -> list[str]:
  docs, size = [], 0
  for path in corpus.stdlib_files():
    try:
      text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError:
      continue
    docs.append(text)
    size += len(text.encode('utf-8'))
    if size >= mb * 1e6:
      break
  return docs


def rate(encode, docs, repeats) -> tuple[float, int]:
  """(median MB/s, tokens) of encode(docs)."""
  mb = sum(len(d.encode('utf-8')) for d in docs) / 1e6
  times, tokens = [], 0
  for _ in range(repeats):
    start = time.perf_counter()
    out = encode(docs)
    times.append(time.perf_counter() - start)
    tokens = sum(map(len, out))
  return mb / statistics.median(times), tokens


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--mb', type=float, default=16)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  docs = documents(args.mb)
  mb = sum(len(d.encode('utf-8')) for d in docs) / 1e6
  threads = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as tmp:
    files = synthetic.write_gpt2_files(docs, tmp, merges=50_000)
    gpt2 = bpe.from_files(files['vocab.json'], files['merges.txt'])
    from tokenizers import Tokenizer

    fast = Tokenizer.from_file(_hf_tokenizer_json(files, tmp))
  sp_cfg = base.data_config().tokenizer
  sentencepiece = tokenizer_lib.train(docs[: len(docs) // 4], sp_cfg)
  rows = []
  for name, vocab, encode in (
    ('gpt2 (tiktoken)', gpt2.vocab_size, lambda d: gpt2.encode_batch(d, threads)),
    (
      'gpt2 (HF tokenizers)',
      fast.get_vocab_size(),
      lambda d: [e.ids for e in fast.encode_batch_fast(d, add_special_tokens=False)],
    ),
    (
      f'sentencepiece {sp_cfg.kind}',
      sentencepiece.vocab_size,
      lambda d: sentencepiece.encode_batch(d, threads),
    ),
  ):
    mb_s, tokens = rate(encode, docs, args.repeats)
    rows.append({'tokenizer': name, 'vocab': vocab, 'mb_per_s': mb_s, 'tokens': tokens})
  machine = f'{platform.processor() or platform.machine()}, {threads} cores'
  print(f'{mb:.1f} MB of the standard library, {len(docs)} documents, {machine}')
  print(f'{"tokenizer":<26}{"vocab":>8}{"MB/s":>8}{"tokens":>12}{"bytes/token":>13}')
  for r in rows:
    print(
      f'{r["tokenizer"]:<26}{r["vocab"]:>8,}{r["mb_per_s"]:>8.2f}{r["tokens"]:>12,}'
      f'{mb * 1e6 / r["tokens"]:>13.2f}'
    )
  result = {'mb': mb, 'documents': len(docs), 'threads': threads, 'rows': rows}
  with open(os.path.join(HERE, 'tokenizer_speed.json'), 'w') as f:
    json.dump(result, f, indent=2)


def _hf_tokenizer_json(files, tmp) -> str:
  """The tokenizer.json GPT2TokenizerFast builds from vocab.json + merges.txt."""
  from transformers import GPT2TokenizerFast

  tok = GPT2TokenizerFast.from_pretrained(os.path.dirname(files['vocab.json']))
  path = os.path.join(tmp, 'tokenizer.json')
  tok.backend_tokenizer.save(path)
  return path


if __name__ == '__main__':
  main()
