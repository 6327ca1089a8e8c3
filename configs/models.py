"""Model size presets: (num_layers, d_model, num_heads, seq_len), and Llama-style shapes."""

from jaxgpt.errors import UserError

# GPT-3 paper, table 2.1. The table's 24 heads for 1.3B do not divide its width (2048);
# like most reimplementations we keep its head size, 128, which gives 16 heads.
GPT3 = {
  '125m': (12, 768, 12, 2048),
  '350m': (24, 1024, 16, 2048),
  '760m': (24, 1536, 16, 2048),
  '1.3b': (24, 2048, 16, 2048),
  '2.7b': (32, 2560, 32, 2048),
  '6.7b': (32, 4096, 32, 2048),
}

# GPT-2 paper, table 2 (the released sizes).
GPT2 = {
  '124m': (12, 768, 12, 1024),
  '355m': (24, 1024, 16, 1024),
  '774m': (36, 1280, 20, 1024),
  '1.5b': (48, 1600, 25, 1024),
}

# Llama-architecture models with a 32,000-piece vocabulary, as released (their Hugging Face
# configs): RoPE, RMSNorm, SwiGLU, no biases, untied output head.
# - 150m: AMD-Llama-135m (AMD 2024), 12 x 768, SwiGLU 2048 (Llama's 8/3 rule);
# - 1b: TinyLlama 1.1B (Zhang et al. 2024), 22 x 2048 with 4 key/value heads;
# - 7b: Llama 2 7B (Touvron et al. 2023), 32 x 4096, SwiGLU 11008.
LLAMA = {
  '150m': dict(
    num_layers=12, d_model=768, num_heads=12, num_kv_heads=0, mlp_dim=2048, seq_len=2048
  ),
  '1b': dict(num_layers=22, d_model=2048, num_heads=32, num_kv_heads=4, mlp_dim=5632, seq_len=2048),
  '7b': dict(
    num_layers=32, d_model=4096, num_heads=32, num_kv_heads=0, mlp_dim=11008, seq_len=4096
  ),
}

# The sizes the papers publish, to check our counts against. GPT-2's paper (table 2) lists
# 117M/345M/762M/1542M from a miscount; the released models are 124M/355M/774M/1558M, and
# the preset names follow them. 1.5b is checked against the paper's 1542M.
PUBLISHED = {
  'gpt3': {
    '125m': 125e6,
    '350m': 350e6,
    '760m': 760e6,
    '1.3b': 1.3e9,
    '2.7b': 2.7e9,
    '6.7b': 6.7e9,
  },
  'gpt2': {'124m': 124e6, '355m': 355e6, '774m': 774e6, '1.5b': 1542e6},
  # AMD's model card: 135M; TinyLlama's paper: 1.1B; Llama 2's released 7B: 6.74B
  # (6,738,415,616 weights in its checkpoint).
  'llama': {'150m': 135e6, '1b': 1.1e9, '7b': 6.74e9},
}


def apply(config, preset):
  """Writes a (layers, width, heads, seq_len) preset into config.model."""
  layers, width, heads, seq_len = preset
  config.model.num_layers = layers
  config.model.d_model = width
  config.model.num_heads = heads
  config.model.seq_len = seq_len
  return config


def preset(table, name, family):
  if name not in table:
    raise UserError(f'unknown {family} preset {name!r}; choose one of {", ".join(table)}')
  return table[name]
