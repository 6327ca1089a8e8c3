"""Model size presets: (num_layers, d_model, num_heads, seq_len)."""

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


def apply(config, preset):
  """Writes a (layers, width, heads, seq_len) preset into config.model."""
  layers, width, heads, seq_len = preset
  config.model.num_layers = layers
  config.model.d_model = width
  config.model.num_heads = heads
  config.model.seq_len = seq_len
  return config
