"""The store's manifest and data card: what each stage kept, the mixture, the token counts.

The manifest (`manifest.json`) is what the loader and a reopened run read; the card
(`card.md`, `doc_chars.png`, `doc_tokens.png`) is what a person reads.
"""

import json
import os

import numpy as np

from jaxgpt.data import corpus
from jaxgpt.data import shards
from jaxgpt.errors import UserError


def size(nbytes: float) -> str:
  for unit in ('B', 'kB', 'MB', 'GB', 'TB'):
    if nbytes < 1000 or unit == 'TB':
      return f'{nbytes:.0f} {unit}' if unit == 'B' else f'{nbytes:.1f} {unit}'
    nbytes /= 1000


def duration(seconds: float) -> str:
  seconds = int(seconds)
  return (
    f'{seconds // 3600}h{seconds // 60 % 60:02d}m'
    if seconds >= 3600
    else f'{seconds // 60}m{seconds % 60:02d}s'
  )


def progress(finished, running: dict, tasks: int, unit_bytes, elapsed: float) -> str:
  """'3/40 tasks, 1.2 GB of 9.6 GB, 4.1 MB/s, ETA 34m10s': bytes of finished tasks, and of
  running ones as far as they have read (their text may outgrow a compressed input)."""
  line = f'{len(finished)}/{tasks} tasks'
  if unit_bytes and (finished or running):
    done = sum(unit_bytes[i] for i in finished)
    done += sum(min(n, 0.99 * unit_bytes[i]) for i, n in running.items())
    total = sum(unit_bytes)
    rate = done / max(elapsed, 1e-9)
    eta = (total - done) / rate if rate else 0
    line += f', {size(done)} of {size(total)}, {size(rate)}/s, ETA {duration(eta)}'
  return line


def _load_counts(folder: str) -> list[dict]:
  out = []
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
    if name.endswith('.json'):
      with open(os.path.join(folder, name)) as f:
        out.append(json.load(f))
  return out


def _add(into: dict, counts: dict):
  for k, v in counts.items():
    into[k] = into.get(k, 0) + v


def _stages(curate_counts) -> dict:
  """Per source: each step's documents and bytes, what the filters dropped and why."""
  out = {}
  for c in curate_counts:
    src = out.setdefault(c['source'], {'steps': {}, 'bad_records': {}, 'bad_names': []})
    _add(src['bad_records'], c['bad_records'])
    src['bad_names'] = (src['bad_names'] + c['bad_names'])[: corpus.BAD_NAMES_KEPT]
    for step in c['steps']:
      stats = {
        k: int(v)
        for k, v in step['stats'].items()
        if k in ('documents', 'bytes', 'dropped', 'changed') or k.startswith('dropped_')
      }
      _add(src['steps'].setdefault(step['name'], {}), stats)
  return out


def check_not_empty(work: str):
  """After curation: some document must be left, or the run stops saying what removed them."""
  stages = _stages(_load_counts(os.path.join(work, 'curate', 'counts')))
  read = kept = 0
  dropped, bad = {}, {}
  for src in stages.values():
    steps = [c for c in src['steps'].values() if 'documents' in c]
    read += steps[0]['documents'] if steps else 0
    kept += steps[-1]['documents'] if steps else 0
    for c in src['steps'].values():
      _add(dropped, {k[len('dropped_') :]: v for k, v in c.items() if k.startswith('dropped_')})
    _add(bad, src['bad_records'])
  if not kept:
    raise UserError(
      f'the corpus is empty after cleaning (read {read} documents; dropped: {dropped or "none"}'
      f'{f"; bad records: {bad}" if bad else ""}); {_emptied_hint(dropped)}'
    )


def _emptied_hint(dropped: dict) -> str:
  """What to change, for the reason that dropped the most documents."""
  reason = max(dropped, key=dropped.get) if dropped else ''
  if reason == 'too_long':
    return (
      'documents longer than data.clean.max_chars were dropped: raise it (0: no limit), '
      'or split a big file into documents (a JSONL record each)'
    )
  if reason == 'too_short':
    return (
      'documents shorter than data.clean.min_chars were dropped: lower it (e.g. '
      '--config.data.clean.min_chars=1) or point data.paths at longer texts'
    )
  if reason.startswith(('language', 'gopher', 'c4', 'too_few_sentences', 'lorem', 'curly_bracket')):
    return (
      "the prose rules of data.profile='web' dropped them: use "
      '--config.data.profile=code for code or other non-prose text, or relax '
      'data.clean.language / gopher / c4'
    )
  return 'point data.paths at more text, or relax data.clean'


def _splits(token_counts):
  shard_list = {'train': [], 'val': []}
  per_source = {}
  for c in token_counts:
    for split, counts in c['splits'].items():
      if counts['tokens']:
        shard_list[split].append(
          {'path': c['shards'][split], 'source': c['source'], 'start': 0, 'end': counts['tokens']}
        )
      agg = per_source.setdefault(c['source'], {}).setdefault(split, {})
      for k, v in counts.items():
        agg[k] = (
          np.add(agg[k], v).tolist()
          if isinstance(v, list) and k in agg
          else v
          if k not in agg
          else agg[k] + v
        )
  return shard_list, per_source


def _split_by_position(shard_list, val_fraction):
  """A corpus whose documents all hashed to one side (one big file, say): the last
  val_fraction of the training tokens are held out instead."""
  if shard_list['val'] or not shard_list['train']:
    return shard_list
  last = shard_list['train'][-1]
  total = sum(s['end'] - s['start'] for s in shard_list['train'])
  cut = last['end'] - min(int(total * val_fraction), last['end'] - last['start'])
  shard_list['train'][-1] = {**last, 'end': cut}
  shard_list['val'] = [{**last, 'start': cut}]
  return shard_list


def manifest(cfg, plan, work, directory, tokenizer, data_fp, fingerprint, seconds) -> dict:
  stages = _stages(_load_counts(os.path.join(work, 'curate', 'counts')))
  shard_list, per_source = _splits(_load_counts(os.path.join(work, 'tokenize', 'counts')))
  shard_list = _split_by_position(shard_list, cfg.val_fraction)
  dedup_counts = _dedup(work)
  tokens = {s: sum(x['end'] - x['start'] for x in shard_list[s]) for s in ('train', 'val')}
  weights = {s.name: s.weight for s in plan.sources if s.split != 'val'}
  return {
    'fingerprint': fingerprint,
    'data_fingerprint': data_fp,
    'data_config': cfg.to_dict(),
    'sources': [
      {
        'name': s.name,
        'kind': s.kind,
        'profile': s.profile,
        'weight': s.weight,
        'split': s.split,
        'paths': list(s.paths),
        'tfds': s.tfds_name,
      }
      for s in plan.sources
    ],
    'stages': stages,
    'dedup': dedup_counts,
    'per_source': per_source,
    'mixture': {
      'weights': weights,
      'train_tokens': {n: per_source.get(n, {}).get('train', {}).get('tokens', 0) for n in weights},
    },
    'shards': shard_list,
    'tokenizer': {
      'sha256': tokenizer.sha256,
      'vocab_size': tokenizer.vocab_size,
      'kind': cfg.tokenizer.kind,
      'model_path': cfg.tokenizer.model_path,
    },
    'documents': {
      s: sum(p.get(s, {}).get('documents', 0) for p in per_source.values())
      for s in ('train', 'val')
    },
    'tokens': tokens,
    'seconds': round(seconds, 2),
  }


def _dedup(work) -> dict:
  path = os.path.join(work, 'remove', 'counts.json')
  counts = {}
  if os.path.exists(path):
    with open(path) as f:
      counts = json.load(f)
  for c in _load_counts(os.path.join(work, 'dropped')):
    _add(counts, c)
  return counts


def summary(m: dict) -> str:
  return (
    f'{m["documents"]["train"]:,} training and {m["documents"]["val"]:,} validation '
    f'documents, {m["tokens"]["train"]:,} and {m["tokens"]["val"]:,} tokens'
  )


def write_card(directory: str, m: dict):
  """card.md and the two histograms beside the manifest."""
  lines = [
    '# Data card',
    '',
    summary(m) + '.',
    '',
    '## Sources',
    '',
    '| source | kind | profile | weight | split |',
    '|---|---|---|---|---|',
  ]
  lines += [
    f'| {s["name"]} | {s["kind"]} | {s["profile"]} | {s["weight"]} | {s["split"]} |'
    for s in m['sources']
  ]
  lines += ['', '## Curation: documents and bytes after each step, and what it dropped', '']
  for name, src in m['stages'].items():
    lines += [f'### {name}', '', '| step | documents | bytes | dropped |', '|---|---|---|---|']
    for step, c in src['steps'].items():
      drops = ', '.join(
        f'{k[len("dropped_") :]} {v:,}' for k, v in c.items() if k.startswith('dropped_')
      )
      if 'documents' in c:
        lines.append(f'| {step} | {c["documents"]:,} | {size(c["bytes"])} | {drops} |')
      else:
        lines.append(f'| {step} | | | changed {c.get("changed", 0):,} |')
    if src['bad_records']:
      lines += ['', f'Bad records: {src["bad_records"]}', '']
      lines += [f'- {n}' for n in src['bad_names']]
    lines.append('')
  d = m['dedup']
  lines += [
    '## Deduplication',
    '',
    '| candidate pairs | verified pairs | exact duplicates | near duplicates | bytes removed |',
    '|---|---|---|---|---|',
    f'| {d.get("candidate_pairs", 0):,} | {d.get("verified_pairs", 0):,} | '
    f'{d.get("exact_duplicates", 0):,} | {d.get("near_duplicates", 0):,} | '
    f'{size(d.get("duplicate_bytes", 0))} |',
    '',
    '## Mixture (training tokens)',
    '',
    '| source | weight | tokens stored | share of stored tokens |',
    '|---|---|---|---|',
  ]
  total = sum(m['mixture']['train_tokens'].values()) or 1
  for name, w in m['mixture']['weights'].items():
    t = m['mixture']['train_tokens'][name]
    lines.append(f'| {name} | {w} | {t:,} | {t / total:.3f} |')
  lines += [
    '',
    '## Splits',
    '',
    '| source | split | documents | tokens | bytes |',
    '|---|---|---|---|---|',
  ]
  for name, splits in m['per_source'].items():
    for split, c in splits.items():
      lines.append(
        f'| {name} | {split} | {c["documents"]:,} | {c["tokens"]:,} | {size(c["bytes"])} |'
      )
  lines += ['', '![document length](doc_chars.png) ![tokens per document](doc_tokens.png)', '']
  with open(os.path.join(directory, 'card.md'), 'w') as f:
    f.write('\n'.join(lines))
  for key, label, name in (
    ('chars_hist', 'document length (characters)', 'doc_chars.png'),
    ('tokens_hist', 'tokens per document', 'doc_tokens.png'),
  ):
    _histogram(m, key, label, os.path.join(directory, name))


def _histogram(m, key, xlabel, path):
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4))
  edges = 2.0 ** np.arange(shards.HIST_BINS + 1)
  used = np.zeros(shards.HIST_BINS, bool)
  for name, splits in m['per_source'].items():
    counts = np.sum([c[key] for c in splits.values()], axis=0)
    if counts.any():
      ax.stairs(counts, edges, label=name)
      used |= counts > 0
  if used.any():
    first, last = np.flatnonzero(used)[[0, -1]]
    ax.set_xlim(edges[first], edges[last + 1])
  ax.set_xscale('log', base=2)
  ax.set_xlabel(xlabel)
  ax.set_ylabel('documents')
  ax.set_title(f'{xlabel} (train and validation)')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
