"""The one entry point: python run.py --config=experiments/X.py[:arg] --workdir=DIR.

Any config field can be overridden: --config.train.steps=200 --config.model.dtype=bfloat16.
"""
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxgpt.errors import UserError

FLAGS = flags.FLAGS


def _exit_on_unknown_key(parse):
  """ml_collections raises AttributeError/KeyError for an override of a key that does not
  exist, when the flag is defined (default config) or parsed (--config=...)."""
  try:
    return parse()
  except (AttributeError, KeyError) as e:
    detail = str(e).strip('\'"').replace('\\n', ' ').replace('\n', ' ')
    overrides = [a.split('=')[0] for a in sys.argv[1:] if a.startswith('--config.')]
    print(f'error: unknown config key among {overrides}: {detail}. Check its spelling against '
          'configs/base.py, where every field is declared with its default.', file=sys.stderr)
    sys.exit(2)


_exit_on_unknown_key(lambda: config_flags.DEFINE_config_file(
    'config', 'experiments/default.py', 'Experiment config file[:arg].', lock_config=True))
flags.DEFINE_string('workdir', None, 'Run directory: data, checkpoints, metrics, samples.')
flags.DEFINE_enum('mode', 'train', ['train'], 'What to do with the run.')
flags.DEFINE_string('coordinator', '', 'Multi-process runs without SLURM/TPU: host:port of process 0.')
flags.DEFINE_integer('num_processes', 0, 'With --coordinator: how many processes.')
flags.DEFINE_integer('process_id', -1, 'With --coordinator: this process\'s index.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Our progress at INFO; the libraries' (orbax logs every save) at WARNING.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger('jaxgpt').setLevel(logging.INFO)
  from jaxgpt import sharding, train
  sharding.maybe_initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  try:
    if FLAGS.mode == 'train':
      result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
      logging.getLogger('jaxgpt').info('result: %s', result)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: _exit_on_unknown_key(
      lambda: app.parse_flags_with_usage(argv)))
