"""Will this config fit that target? Compile the train step for it, without running it.

`plan(config, 'v5p-64')` lowers and compiles the real train step (same shardings, same
donation) for the config's mesh over the target's devices: emulated CPU devices (`cpu:8`)
or a TPU slice described by libtpu (`jax.experimental.topologies`), so a CPU machine can
answer before any accelerator time is spent. It reports per-device bytes (params,
optimizer state, gradients, XLA's temporaries), whether they fit the device memory, XLA's
FLOPs beside the model's, and the collectives in the compiled program.
"""

import collections
import importlib.metadata
import json
import math
import re

import jax
import numpy as np

from configs import topologies
from jaxgpt import model as model_lib
from jaxgpt import sharding
from jaxgpt import runstate
from jaxgpt import step as step_lib
from jaxgpt.runstate import Run
from jaxgpt.errors import UserError

GIB = 1 << 30
LIBTPU = '0.0.42.1'  # the libtpu jax 0.10.2 compiles with (0.0.52 crashes inside XLA)
_DTYPE_BYTES = {
  'f32': 4,
  'bf16': 2,
  'f16': 2,
  's32': 4,
  'u32': 4,
  'f64': 8,
  's64': 8,
  'u64': 8,
  's8': 1,
  'u8': 1,
  'pred': 1,
  's16': 2,
  'u16': 2,
}
_COLLECTIVE = re.compile(
  r'= (.+?) (all-reduce|all-gather|reduce-scatter|all-to-all|'
  r'collective-permute)(?:-start)?\('
)
_SHAPE = re.compile(r'\b([a-z]+\d*)\[([\d,]*)\]')


def target_devices(topology: str):
  """(devices, device memory bytes or 0, peak FLOP/s or 0) for 'cpu:N' or a TPU slice."""
  if topology.startswith('cpu:'):
    n = int(topology[4:])
    cpus = jax.devices('cpu')
    if len(cpus) < n:
      raise UserError(
        f'--topology={topology} needs {n} CPU devices but jax has {len(cpus)}; '
        'run.py sets jax_num_cpu_devices from --topology before jax starts, so '
        'pass it on the command line rather than importing jax first'
      )
    return cpus[:n], 0, 0.0
  try:
    topo_name, chip_config, _, hbm, peak = topologies.parse(topology)
  except ValueError as e:
    raise UserError(str(e)) from None
  check_libtpu(topology)
  try:
    from jax.experimental import topologies as jax_topologies

    desc = jax_topologies.get_topology_desc(
      platform='tpu',
      topology_name=topo_name,
      chip_config_name=chip_config,
      chips_per_host_bounds=(2, 2, 1),
      num_slices=1,
    )
  except Exception as e:  # no libtpu: jax raises RuntimeError or ValueError depending on version
    raise UserError(
      f'--topology={topology} needs the TPU compiler from the optional libtpu '
      f'package (pip install libtpu=={LIBTPU}); it could not be loaded: {e}'
    ) from None
  return list(desc.devices), hbm, peak


def check_libtpu(topology: str):
  """The libtpu that jax's version compiles with, or a message that names it."""
  try:
    installed = importlib.metadata.version('libtpu')
  except importlib.metadata.PackageNotFoundError:
    raise UserError(
      f'--topology={topology} needs the TPU compiler from the optional libtpu '
      f'package: pip install libtpu=={LIBTPU} (the version jax {jax.__version__} '
      'works with)'
    ) from None
  if installed != LIBTPU:
    raise UserError(
      f'libtpu {installed} is installed, but jax {jax.__version__} needs libtpu '
      f'{LIBTPU} (newer ones crash inside XLA compiling for a TPU topology): '
      f'pip install libtpu=={LIBTPU}'
    )


def _shard_bytes(abstract_tree) -> int:
  return sum(
    math.prod(a.sharding.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
    for a in jax.tree.leaves(abstract_tree)
  )


def collectives(hlo_text: str) -> dict[str, dict]:
  """Kind -> {count, bytes}: the collectives of the compiled program, result bytes summed."""
  out = collections.defaultdict(lambda: {'count': 0, 'bytes': 0})
  for line in hlo_text.splitlines():
    m = _COLLECTIVE.search(line)
    if not m:
      continue
    size = sum(
      _DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(',') if d)
      for dt, dims in _SHAPE.findall(m.group(1))
    )
    out[m.group(2)]['count'] += 1
    out[m.group(2)]['bytes'] += size
  return dict(out)


def compile_train_step(config, run: Run):
  """The train step of `run`, lowered and compiled for its abstract state and batch."""
  batch_sharding = sharding.batch_sharding(run.mesh)
  batch = {
    name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
    for name, (shape, dtype) in run.batch_shapes(config.train.batch_size).items()
  }
  with run.context():
    return step_lib.jit_train_step(run, config).lower(run.abstract_state, batch).compile()


def plan(config, topology: str, device_memory_gb: float = 0.0, build_run=None) -> dict:
  """The report for config's train step on `topology`. `build_run(config, mesh)` makes the
  Run (a fine-tune's own); by default, pretraining's."""
  devices, hbm, peak = target_devices(topology)
  mesh = sharding.make_mesh(config.mesh, devices)
  runstate.check_config(config, mesh)
  if build_run is None:
    build_run = lambda c, mesh: runstate.pretraining(
      c, model_lib.ModelConfig.from_config(c, c.data.tokenizer.vocab_size), mesh
    )
  run = build_run(config, mesh)
  model_cfg = run.model.cfg
  params = _shard_bytes(run.abstract_state.params)
  optimizer = _shard_bytes(run.abstract_state.opt_state)
  capacity = int(device_memory_gb * GIB) or hbm
  tokens = math.prod(run.batch_shapes(config.train.batch_size)['inputs'][0])  # DPO: pairs x 2
  report = {
    'topology': topology,
    'devices': len(devices),
    'mesh': dict(mesh.shape),
    'params': model_lib.param_count(model_cfg),
    'bytes_per_device': {
      'params': params,
      'optimizer': optimizer,
      # float32 and sharded like the params; XLA counts them as temporaries
      'gradients': params,
    },
    'device_memory': capacity,
    'flops_per_device': {'model': run.flops_per_token * tokens / len(devices)},
    'peak_flops_per_device': peak,
    'scan_layers': model_cfg.scan_layers,
    'loss_chunks': model_cfg.loss_chunks,
    'micro_batches': config.execution.micro_batches,
  }
  step = _compiled(config, run, capacity, params + optimizer)
  report['bytes_per_device'].update(temporaries=step['temporaries'], total=step['total'])
  report['fits'] = step['fits']
  if 'xla_flops' in step:
    report['flops_per_device']['xla'] = step['xla_flops']
  report['collectives'] = step.get('collectives', {})
  report['attention'] = model_cfg.attention
  report['kv_heads'] = {
    'heads': model_cfg.num_heads,
    'kv_heads': model_cfg.kv_heads,
    'note': sharding.kv_heads_note(config.mesh, mesh, model_cfg),
  }
  if model_cfg.attention in ('splash', 'cudnn'):
    # The fused kernel's saving, measured: the same step with the einsum path compiled beside.
    einsum = config.copy_and_resolve_references()
    einsum.model.attention_impl = 'einsum'
    report['einsum_attention'] = _compiled(
      einsum, build_run(einsum, mesh), capacity, params + optimizer
    )
  return report


def _compiled(config, run: Run, capacity: int, state_bytes: int) -> dict:
  """Temporaries, total bytes, fits, XLA's FLOPs and the collectives of the compiled step."""
  try:
    compiled = compile_train_step(config, run)
  except jax.errors.JaxRuntimeError as e:
    # The TPU compiler refuses a program that cannot fit, naming what its temporaries need.
    m = re.search(r'temporaries \(([\d.]+)G\) exceeds available HBM', str(e))
    if 'RESOURCE_EXHAUSTED' not in str(e) or not m:
      raise
    temps = int(float(m.group(1)) * GIB)
    return {'temporaries': temps, 'total': state_bytes + temps, 'fits': False}
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  required = (
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    - mem.alias_size_in_bytes
    + mem.temp_size_in_bytes
  )
  return {
    'temporaries': mem.temp_size_in_bytes,
    'total': required,
    'fits': bool(capacity) and required <= capacity,
    'xla_flops': float(cost.get('flops', 0.0)),
    'collectives': collectives(compiled.as_text()),
  }


def table(r: dict) -> str:
  gib = lambda b: f'{b / GIB:,.2f} GiB' if b >= GIB / 4 else f'{b / (1 << 20):,.2f} MiB'
  mem = r['bytes_per_device']
  rows = [
    ('target', f'{r["topology"]} ({r["devices"]} devices, mesh {r["mesh"]})'),
    ('parameters', f'{r["params"]:,}'),
  ]
  rows += [(f'{k} / device', gib(v)) for k, v in mem.items()]
  cap = r['device_memory']
  rows.append(('device memory', gib(cap) if cap else 'unknown (pass --device_memory_gb)'))
  rows.append(('fits', ('yes' if r['fits'] else 'NO') if cap else 'n/a'))
  flops = r['flops_per_device']
  if 'xla' in flops:
    rows.append(
      (
        'FLOPs / step / device',
        f'XLA {flops["xla"]:.3e}, model {flops["model"]:.3e} '
        f'(x{flops["xla"] / max(flops["model"], 1):.2f})',
      )
    )
    loops = (
      ([f'the {r["micro_batches"]} micro-batches'] if r.get('micro_batches', 1) > 1 else [])
      + (['the scanned layers'] if r['scan_layers'] else [])
      + ([f"the loss's {r['loss_chunks']} chunks"] if r['loss_chunks'] > 1 else [])
    )
    if loops:
      rows.append(('', f"XLA's count has one pass of each loop: {', '.join(loops)}"))
  else:
    rows.append(
      (
        'FLOPs / step / device',
        f'model {flops["model"]:.3e} (XLA: not compiled, the program does not fit)',
      )
    )
  if r['peak_flops_per_device']:
    rows.append(('step time at 100% MFU', f'{flops["model"] / r["peak_flops_per_device"]:.3f} s'))
  for kind, c in sorted(r['collectives'].items()):
    rows.append((f'  {kind}', f'{c["count"]} ops, {gib(c["bytes"])}'))
  rows.append(('attention', r['attention']))
  kv = r['kv_heads']
  if kv['kv_heads'] != kv['heads']:
    split = kv['note'] or 'split like the query heads'
    rows.append(('key/value heads', f'{kv["kv_heads"]} for {kv["heads"]} query heads: {split}'))
  einsum = r.get('einsum_attention')
  if einsum:
    fits = ('yes' if einsum['fits'] else 'NO') if cap else 'n/a'
    xla = f', XLA FLOPs {einsum["xla_flops"]:.3e}' if 'xla_flops' in einsum else ''
    rows.append(
      (
        '  the einsum path',
        f'temporaries {gib(einsum["temporaries"])}, total {gib(einsum["total"])} '
        f'(fits: {fits}){xla}',
      )
    )
    if xla:
      rows.append(('', f"XLA's FLOPs leave out the {r['attention']} kernel (a custom call)"))
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}} | {v}' for k, v in rows)


def write(r: dict, path: str):
  with open(path, 'w') as f:
    json.dump(r, f, indent=2)
