"""Mesh presets: axis sizes plus the logical-axis rules that map model axes onto them.

Mesh axes: `data` (replicas), `fsdp` (params, grads and optimizer state sharded, ZeRO-3),
`tensor` (Megatron: heads, MLP width and vocabulary split). A size of -1 takes the devices
the other axes leave.
"""

import ml_collections

# Rules are tried in order and a mesh axis is used at most once per array, so an
# activation named ('batch', 'length', 'embed') gets batch -> (data, fsdp) and leaves
# embed unsharded, while a parameter ('embed', 'mlp') gets embed -> fsdp.
RULES = (
  ('batch', ('data', 'fsdp')),
  ('vocab', 'tensor'),
  ('heads', 'tensor'),
  # Grouped-query attention's key/value heads: split too, unless they are too few to divide
  # the axis (then replicated; sharding.model_rules decides, and the planner says so).
  ('kv_heads', 'tensor'),
  ('mlp', 'tensor'),
  ('embed', 'fsdp'),
  ('length', None),
  ('head_dim', None),
  ('layers', None),
)

SHAPES = {
  'dp': {'data': -1, 'fsdp': 1, 'tensor': 1},
  'fsdp': {'data': 1, 'fsdp': -1, 'tensor': 1},
  'tp': {'data': 1, 'fsdp': 1, 'tensor': -1},
}


def get(name: str = 'dp') -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.shape = ml_collections.ConfigDict(dict(SHAPES[name]))
  m.rules = RULES
  return m
