"""The first preparation stage of one task: read its unit, run its source's curation chain.

Task i reads unit i. The chain depends on the unit's source (its profile), so one datatrove
executor runs every source of a mixture and the dedup stages see one numbering of tasks.
Each task writes what every step counted (documents and bytes in and out, drops by reason,
bad records by name) to `counts/{task}.json` for the data card.
"""

import os
import time

from datatrove.pipeline.base import PipelineStep

from jaxgpt.data import clean
from jaxgpt.data import corpus
from jaxgpt.data.shards import write_json


class Curate(PipelineStep):
  type = 'jaxgpt'
  name = 'curate'

  def __init__(
    self,
    units: list,
    sources: dict,
    clean_cfg,
    skip_bad: bool,
    max_docs: int,
    counts_folder: str,
    progress_folder: str,
  ):
    super().__init__()
    self.units, self.sources, self.skip_bad = units, sources, skip_bad
    self.counts_folder, self.progress_folder = counts_folder, progress_folder
    per_source = {}
    for u in units:
      per_source[u.source] = per_source.get(u.source, 0) + 1
    # data.max_docs is a total per source, spread evenly over that source's units
    self.limits = {s: -(-max_docs // n) if max_docs else 0 for s, n in per_source.items()}
    self.chains = {p: clean.steps(p, clean_cfg) for p in corpus.PROFILES}

  def run(self, data=None, rank=0, world_size=1):
    unit = self.units[rank]
    src = self.sources[unit.source]
    bad = corpus.BadRecords(self.skip_bad)
    docs = corpus.unit_documents(unit, src, bad)
    if self.limits[unit.source]:
      docs = _take(docs, self.limits[unit.source])
    docs = _report_bytes(docs, os.path.join(self.progress_folder, f'{rank:05d}'))
    chain = self.chains[src.profile]
    for step in chain:
      docs = clean.in_runs(step(docs, rank, world_size))
    yield from docs
    os.makedirs(self.counts_folder, exist_ok=True)
    write_json(
      os.path.join(self.counts_folder, f'{rank:05d}.json'),
      {
        'source': src.name,
        'bad_records': bad.counts,
        'bad_names': bad.names,
        'steps': [
          {'name': step.name, 'stats': {k: v.total for k, v in step.stats.stats.items()}}
          for step in chain
        ],
      },
    )


def _report_bytes(docs, path, every_seconds=2.0):
  """Passes documents on; every few seconds writes how many bytes of text were read."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nbytes, last = 0, time.monotonic()
  for doc in docs:
    nbytes += len(doc.text)
    if time.monotonic() - last > every_seconds:
      with open(path + '.tmp', 'w') as f:
        f.write(str(nbytes))
      os.replace(path + '.tmp', path)
      last = time.monotonic()
    yield doc


def _take(docs, n):
  for i, doc in enumerate(docs):
    if i >= n:
      return
    yield doc
