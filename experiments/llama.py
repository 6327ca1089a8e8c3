"""Llama-architecture shapes on the configured corpus: RoPE, RMSNorm, SwiGLU, no biases,
an untied head, and a 32,000-piece SentencePiece BPE trained on the corpus (Llama's kind of
tokenizer and its size).

    python run.py --config=experiments/llama.py:150m --workdir=runs/llama-150m
    python run.py --config=experiments/llama.py:7b --workdir=runs/plan --mode=plan --topology=v5p-64

Presets (configs/models.py says where each shape is from):

| preset | layers | width | heads | kv heads | SwiGLU | context | parameters |
|---|---|---|---|---|---|---|---|
| 150m | 12 | 768 | 12 | 12 | 2048 | 2048 | 134.1M (AMD-Llama-135m) |
| 1b | 22 | 2048 | 32 | 4 | 5632 | 2048 | 1.100B (TinyLlama 1.1B) |
| 7b | 32 | 4096 | 32 | 32 | 11008 | 4096 | 6.738B (Llama 2 7B) |

Sized for accelerators: on a CPU use them to plan memory, or shrink them on the command line.
"""

from configs import base, models
from jaxgpt.errors import UserError

# Batches in sequences (tokens per step: 0.5M, 2M as TinyLlama, 4M as Llama 2) and peak
# learning rates (Llama 2: 3e-4; TinyLlama: 4e-4).
_BATCH = {'150m': 256, '1b': 1024, '7b': 1024}
_LR = {'150m': 6e-4, '1b': 4e-4, '7b': 3e-4}
# Gradient accumulation for the 7B step on v5p-64 (32 chips of 95 GiB): `--mode=plan` puts
# it at 93.0 GiB a chip in one pass, too close to the edge; at 47.8 GiB in two (README).
_MICRO_BATCHES = {'150m': 1, '1b': 1, '7b': 2}


def get_config(arg='150m'):
  arg = arg or '150m'
  if arg not in models.LLAMA:
    raise UserError(f'unknown Llama preset {arg!r}; choose one of {", ".join(models.LLAMA)}')
  c = base.get_config()
  c.model.update(models.LLAMA[arg])
  c.model.update(
    position='rope',
    rope_theta=10_000.0,
    norm='rmsnorm',
    norm_eps=1e-5,
    mlp='swiglu',
    use_bias=False,
    tie_embeddings=False,
    vocab_size=32000,
    dtype='bfloat16',
  )
  c.data.tokenizer.kind = 'bpe'
  c.data.tokenizer.vocab_size = 32000
  c.execution.loss_chunks = 8  # a 32k vocabulary: the logits would be the step's largest arrays
  c.execution.scan_layers = True  # compile time flat in depth
  c.execution.remat = 'full'  # keep only each block's input; recompute the rest
  c.execution.micro_batches = _MICRO_BATCHES[arg]
  c.train.batch_size = _BATCH[arg]
  c.train.steps = 100_000
  c.loop.log_every = 100
  c.loop.eval_every = 2000
  c.loop.checkpoint_every = 2000
  c.optim.update(lr=_LR[arg], min_lr=_LR[arg] / 10, warmup_steps=2000, eps=1e-5)
  c.eval.prompt = 'The '
  c.mesh.shape.data, c.mesh.shape.fsdp = 1, -1
  c.lock()
  return c
