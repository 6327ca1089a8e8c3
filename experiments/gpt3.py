"""GPT-3 model shapes (Brown et al. 2020, table 2.1) on the configured corpus.

    python run.py --config=experiments/gpt3.py:125m --workdir=runs/gpt3-125m
    python run.py --config=experiments/gpt3.py:6.7b --workdir=runs/plan --mode=plan --topology=v5p-64

Presets: 125m, 350m, 760m, 1.3b, 2.7b, 6.7b, with context 2048 and the 50257-token GPT-2
vocabulary (padded to 50304). Sized for accelerators: on a CPU use them to plan memory, or
shrink them on the command line.
"""

from configs import base, models

# Batch size in sequences of 2048 from the paper (0.5M tokens for 125m and 350m, 1M for 760m
# and 1.3b, 1M for 2.7b, 2M for 6.7b), and the peak learning rates it used.
_BATCH = {'125m': 256, '350m': 256, '760m': 512, '1.3b': 512, '2.7b': 512, '6.7b': 1024}
_LR = {'125m': 6e-4, '350m': 3e-4, '760m': 2.5e-4, '1.3b': 2e-4, '2.7b': 1.6e-4, '6.7b': 1.2e-4}


def get_config(arg='125m'):
  arg = arg or '125m'
  c = models.apply(base.get_config(), models.preset(models.GPT3, arg, 'GPT-3'))
  c.model.vocab_size = 50257
  c.data.tokenizer.vocab_size = 50257
  c.model.dtype = 'bfloat16'
  c.execution.loss_chunks = 8  # a 50k vocabulary: the logits would be the step's largest arrays
  c.execution.scan_layers = True  # compile time flat in depth
  c.execution.remat = 'full'  # keep only each block's input; recompute the rest
  c.train.batch_size = _BATCH[arg]
  c.train.steps = 100_000
  c.loop.log_every = 100
  c.loop.eval_every = 2000
  c.loop.checkpoint_every = 2000
  c.optim.lr = _LR[arg]
  c.optim.min_lr = _LR[arg] / 10
  c.optim.warmup_steps = 375  # 375M tokens in the paper, ~ this many steps at 1M tokens
  c.mesh.shape.data, c.mesh.shape.fsdp = 1, -1
  c.lock()
  return c
