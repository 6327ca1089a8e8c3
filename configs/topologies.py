"""Accelerator slices the planner can compile for, by their Cloud TPU names.

For v4 and v5p the number in the name counts TensorCores (two per chip, fused into one
"megacore" device); for v5e and v6e it counts chips. Memory is HBM per device.
"""

from configs import devices

GIB = 1 << 30

# family: (chip config, HBM bytes per device, names count cores?, peak bf16 FLOP/s per device)
FAMILIES = {
  'v4': ('megacore', 32 * GIB, True, devices.bf16_peak('TPU v4')),
  'v5p': ('megacore', 95 * GIB, True, devices.bf16_peak('TPU v5p')),
  'v5e': ('default', 16 * GIB, False, devices.bf16_peak('TPU v5e')),
  'v6e': ('default', 32 * GIB, False, devices.bf16_peak('TPU v6e')),
}

# Chip grids by chip count: 2-D tori for v5e/v6e, 3-D for v4/v5p.
GRID_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16', 256: '16x16'}
GRID_3D = {
  4: '2x2x1',
  8: '2x2x2',
  16: '2x2x4',
  32: '2x4x4',
  64: '4x4x4',
  128: '4x4x8',
  256: '4x8x8',
  512: '8x8x8',
  1024: '8x8x16',
}


def parse(name: str):
  """'v5p-64' -> (topology name for jax, chip config, devices, HBM bytes, peak FLOP/s)."""
  family, _, count = name.partition('-')
  if family not in FAMILIES or not count.isdigit():
    raise ValueError(
      f'unknown topology {name!r}: use cpu:N or one of '
      f'{", ".join(f + "-N" for f in FAMILIES)} (e.g. v5e-8, v5p-64, v4-32)'
    )
  chip_config, hbm, counts_cores, peak = FAMILIES[family]
  chips = int(count) // 2 if counts_cores else int(count)
  grids = GRID_3D if counts_cores else GRID_2D
  if chips not in grids:
    names = ', '.join(f'{family}-{c * (2 if counts_cores else 1)}' for c in grids)
    raise ValueError(f'{name!r}: no {family} slice with {chips} chips; choose among {names}')
  return f'{family}:{grids[chips]}', chip_config, chips, hbm, peak
