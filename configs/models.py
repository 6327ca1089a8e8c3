"""Model size presets: (num_layers, d_model, num_heads, seq_len)."""

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
