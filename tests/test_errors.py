"""Every input a user can get wrong gives one message naming the fix, before any compile."""

import contextlib
import os

import jax.monitoring
import pytest

from jaxgpt import train
from jaxgpt.errors import UserError
from tests.helpers import run_py, tiny_config


@contextlib.contextmanager
def no_compilation():
  compiles = []
  listener = lambda name, *_, **__: compiles.append(name) if 'backend_compile' in name else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiles, 'the error came after compiling'


def test_the_compile_listener_sees_a_compile():
  """Positive control for no_compilation: a fresh jitted function compiled inside it fails it,
  so the tests below would notice an error raised after compiling."""
  with pytest.raises(AssertionError, match='the error came after compiling'):
    with no_compilation():
      jax.jit(lambda x: x * 3 + 1)(jax.numpy.arange(5.0)).block_until_ready()


def test_the_compile_listener_sees_a_program_loaded_from_the_compilation_cache():
  """The suite runs with the persistent compilation cache on: a program loaded from it
  rather than compiled still counts, so no_compilation keeps its teeth."""
  assert jax.config.jax_compilation_cache_dir and jax.config.jax_enable_compilation_cache
  x = jax.numpy.arange(7.0)
  jax.jit(lambda x: x * 5 - 2)(x).block_until_ready()  # compiled, and written to the cache
  hits = []
  listener = lambda name, **_: hits.append(name) if name.endswith('/cache_hits') else None
  jax.monitoring.register_event_listener(listener)
  try:
    with pytest.raises(AssertionError, match='the error came after compiling'):
      with no_compilation():  # a new function object: not in memory, but on disk
        jax.jit(lambda x: x * 5 - 2)(x).block_until_ready()
  finally:
    jax.monitoring.unregister_event_listener(listener)
  assert hits, 'the second program was compiled again, not loaded from the cache'


def _fails(config, workdir, match):
  with no_compilation(), pytest.raises(UserError, match=match):
    train.train_and_evaluate(config, str(workdir))


def test_missing_path(corpus_dir, tmp_path):
  c = tiny_config(corpus_dir)
  c.data.paths = (str(tmp_path / 'nowhere.txt'),)
  _fails(c, tmp_path, r"nowhere.txt' does not exist; fix the path or remove it")


def test_non_utf8_file_errors_or_is_skipped_and_counted(corpus_dir, tmp_path):
  bad_dir = tmp_path / 'mixed'
  bad_dir.mkdir()
  (bad_dir / 'latin1.txt').write_bytes('caf\xe9 au lait\n'.encode('latin-1') * 10)
  c = tiny_config(corpus_dir)
  c.data.paths = (str(corpus_dir), str(bad_dir))
  _fails(
    c, tmp_path / 'a', r'latin1.txt:1: not UTF-8 .*set --config.data.prep.skip_bad_records=True'
  )
  c.data.prep.skip_bad_records = True
  from jaxgpt.data import pipeline

  prepared = pipeline.prepare(c.data, str(tmp_path / 'b'))
  assert prepared.manifest['stages']['files']['bad_records'] == {'not UTF-8': 1}
  assert prepared.manifest['stages']['files']['bad_names'][0].startswith(
    f'{bad_dir / "latin1.txt"}:1: not UTF-8'
  )


def test_empty_corpus_after_cleaning(corpus_dir, tmp_path):
  c = tiny_config(corpus_dir)
  c.data.clean.min_chars = 10_000_000
  c.data.clean.max_chars = 0
  _fails(
    c,
    tmp_path,
    r'empty after cleaning \(read 40 documents; dropped: '
    r"\{'too_short': 40\}\); documents shorter than data.clean.min_chars "
    r'were dropped: lower it',
  )


def test_mesh_that_does_not_divide_devices(corpus_dir, tmp_path):
  c = tiny_config(corpus_dir)
  c.mesh.shape.data, c.mesh.shape.tensor = 3, 1
  _fails(c, tmp_path, 'needs a multiple of 3 devices but there are 8')
  assert not os.path.exists(tmp_path / 'data')  # not even the corpus was read


def test_batch_that_does_not_divide_data_parallel_size(corpus_dir, tmp_path):
  c = tiny_config(corpus_dir, batch_size=12)
  _fails(c, tmp_path, r'batch_size=12 .*does not divide the data-parallel size 8')


def test_heads_that_do_not_divide_width(corpus_dir, tmp_path):
  c = tiny_config(corpus_dir)
  c.model.num_heads = 5
  _fails(c, tmp_path, r'num_heads=5 does not divide model.d_model=32')


@pytest.mark.parametrize('chunks', [0, 33])
def test_loss_chunks_out_of_range(corpus_dir, tmp_path, chunks):
  c = tiny_config(corpus_dir)
  c.execution.loss_chunks = chunks
  _fails(c, tmp_path, rf'execution.loss_chunks={chunks}: use 1 to model.seq_len=32 chunks')


def test_unknown_config_key(tmp_path):
  proc = run_py(
    '--config=experiments/default.py', f'--workdir={tmp_path}', '--config.train.stepz=5'
  )
  assert proc.returncode == 2
  assert "'--config.train.stepz'" in proc.stderr and 'Did you mean "steps"' in proc.stderr
  assert 'Check its spelling against configs/base.py' in proc.stderr
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize(
  'flag, message',
  [
    (
      '--config.data.prep.skip_bad_records=maybe',
      'error: flag --config.data.prep.skip_bad_records=maybe: '
      "('Non-boolean argument to boolean flag'",
    ),
    (
      '--config.data.val_fraction=abc',
      'error: flag --config.data.val_fraction=abc: could not convert string to float',
    ),
  ],
)
def test_a_config_value_of_the_wrong_type_is_named(tmp_path, flag, message):
  proc = run_py('--config=experiments/default.py', f'--workdir={tmp_path}', flag)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(message)


def test_run_py_prints_user_errors_without_traceback(tmp_path):
  (tmp_path / 'a_file').write_text('')
  proc = run_py(
    '--config=experiments/default.py',
    f'--workdir={tmp_path / "run"}',
    '--config.mesh.shape.data=3',
    f'--compilation_cache={tmp_path / "a_file" / "cache"}',  # cannot be made: a warning
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith('error: config.mesh.shape=')
  assert 'compilation cache off: ' in proc.stderr and '--compilation_cache=DIR' in proc.stderr
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize(
  'field, value, match',
  [
    ('profile', 'prose', r"data.profile='prose' \(files\): use 'web'"),
    ('prep.workers', -1, r'data.prep.workers=-1 is out of range'),
    ('tokenizer.sample_mb', 0, r'data.tokenizer.sample_mb=0 is out of range'),
    ('val_fraction', 1.0, r'data.val_fraction=1.0 is out of range: use in \[0, 1\)'),
    ('dedup.threshold', 1.5, r'data.dedup.threshold=1.5 is a Jaccard similarity'),
    ('clean.normalize', 'XYZ', r"data.clean.normalize='XYZ': use 'NFC'"),
    ('clean.gopher.min_words', -5, r'data.clean.gopher.min_words=-5 is out of range: use 0'),
    (
      'clean.gopher.max_bullet_lines',
      1.5,
      r'data.clean.gopher.max_bullet_lines=1.5 is out of '
      r'range: use a share in \[0, 1\]',
    ),
    ('clean.c4.min_sentences', -3, r'data.clean.c4.min_sentences=-3 is out of range: use -1'),
    (
      'clean.language.languages',
      ('english',),
      r"\['english'\] are not language codes "
      r"fastText's lid.176 gives; use ISO 639 codes",
    ),
    ('prep.slurm.cpus_per_task', 0, r'data.prep.slurm.cpus_per_task=0 is out of range'),
  ],
)
def test_data_preparation_fields_out_of_range(corpus_dir, tmp_path, field, value, match):
  from jaxgpt.data import pipeline

  c = tiny_config(corpus_dir).data
  c.profile = 'web'  # the profile whose fields these are
  *parents, leaf = field.split('.')
  node = c
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(UserError, match=match):
    pipeline.prepare(c, str(tmp_path))
