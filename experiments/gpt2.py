"""GPT-2 model shapes (Radford et al. 2019) on the configured corpus.

    python run.py --config=experiments/gpt2.py:124m --workdir=runs/gpt2-124m

Presets: 124m, 355m, 774m, 1.5b; context 1024 and GPT-2's tokenizer (its 50257-token
vocabulary, padded to 50304, a multiple of 128, so that the embedding and logits matmuls tile
well; the padding ids are never predicted). The tokenizer is read from GPT-2's files:

    --config.data.tokenizer.vocab_path=DIR/vocab.json --config.data.tokenizer.merges_path=DIR/merges.txt

OpenAI's weights, from a local Hugging Face directory, become step 0 of a run with

    python run.py --config=experiments/gpt2.py:124m --workdir=runs/gpt2-124m --mode=import --hf_path=DIR

and the same command without --mode trains on from them.
"""

from configs import base, models


def get_config(arg='124m'):
  c = models.apply(base.get_config(), models.preset(models.GPT2, arg or '124m', 'GPT-2'))
  c.model.vocab_size = 50257
  c.data.tokenizer.kind = 'gpt2'
  c.data.tokenizer.vocab_size = 50257
  c.model.dtype = 'bfloat16'
  c.execution.loss_chunks = 8  # a 50k vocabulary: the logits would be the step's largest arrays
  c.train.batch_size = 512  # GPT-2's batch: 512 x 1024 tokens
  c.train.steps = 100_000
  c.loop.log_every = 100
  c.loop.eval_every = 2000
  c.loop.checkpoint_every = 2000
  c.optim.lr = 6e-4
  c.optim.min_lr = 6e-5
  c.optim.warmup_steps = 2000
  c.mesh.shape.data, c.mesh.shape.fsdp = 1, -1
  c.lock()
  return c
