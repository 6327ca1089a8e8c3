"""Pretraining on a mixture of sources, each with its weight and curation profile.

    python run.py --config=experiments/mixture.py:'web,0.7,web,~/fineweb/*.parquet;code,0.2,code,~/code/*.jsonl.zst;books,0.1,web,~/books/*.txt' \\
        --workdir=runs/mixture [--mode=prepare]

The argument lists sources as `name,weight,profile,glob` separated by ';'. The loader
draws each training window from a source with probability proportional to its weight; the
data card (WORKDIR/data/card.md) reports each source's curation and tokens, and the run
logs the realised mixture. Without an argument, a mixture that needs no network: the
standard library's top-level modules from a to m (0.7) and from n to z (0.3).
"""

from configs import base

_OFFLINE = 'a_to_m,0.7,code,STDLIB/[a-m]*.py;n_to_z,0.3,code,STDLIB/[n-z]*.py'


def _is_number(text: str) -> bool:
  try:
    return float(text) > 0
  except ValueError:
    return False


def get_config(arg=None):
  import sysconfig

  c = base.get_config()
  c.data.val_fraction = 0.02
  stdlib = sysconfig.get_paths()['stdlib']
  for entry in (arg or _OFFLINE).split(';'):
    fields = entry.split(',', 3)
    if len(fields) != 4 or not _is_number(fields[1]):
      raise ValueError(
        f'experiments/mixture.py:{arg!r}: each source is name,weight,profile,glob '
        "(e.g. 'web,0.7,web,~/fineweb/*.parquet'), separated by ';'"
      )
    name, weight, profile, paths = fields
    c.data.mixture[name] = base.source_config(
      source='files',
      paths=(paths.replace('STDLIB', stdlib),),
      weight=float(weight),
      profile=profile,
    )
  c.train.steps = 800
  c.lock()
  return c
