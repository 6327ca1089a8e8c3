"""Meshes, logical-axis rules and the shardings of state and batches.

The model names axes logically; this module (with the rules in config.mesh) is the only
place that knows about mesh axes. Everything here checks what a user can get wrong before
anything is compiled.
"""

import math
import os

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxgpt.errors import UserError

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # the batch is split over both replica-like axes


def mesh_shape(shape_cfg, num_devices: int) -> dict[str, int]:
  """Resolves the -1 entry of config.mesh.shape and checks it divides the devices."""
  shape = dict(shape_cfg)
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise UserError(f'config.mesh.shape has unknown axes {sorted(unknown)}; use {MESH_AXES}')
  sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise UserError(f'config.mesh.shape={sizes}: sizes must be positive, with at most one -1')
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if num_devices % fixed:
    raise UserError(
      f'config.mesh.shape={sizes} needs a multiple of {fixed} devices but there '
      f'are {num_devices}; change the sizes so their product divides {num_devices}'
    )
  if free:
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise UserError(
      f'config.mesh.shape={sizes} uses {fixed} devices but there are '
      f'{num_devices}; set one axis to -1 to take the rest'
    )
  return sizes


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  sizes = mesh_shape(mesh_cfg.shape, len(devices))
  grid = np.asarray(devices).reshape([sizes[a] for a in MESH_AXES])
  # Auto axes: under jax's default Explicit axes linen's sharding constraints assert.
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def platform(mesh: Mesh) -> str:
  """'cpu', 'gpu' or 'tpu': what the mesh's devices are (a TPU topology's too)."""
  return mesh.devices.flat[0].platform


def rules(mesh_cfg):
  return tuple(
    (name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in mesh_cfg.rules
  )


def model_rules(mesh_cfg, mesh: Mesh, cfg) -> tuple:
  """config.mesh's rules for the model `cfg` on `mesh`: its key/value heads (grouped-query
  attention) split as the rules say where they divide those mesh axes, else replicated
  (`kv_heads_note` says so)."""
  return tuple(
    (name, None if name == 'kv_heads' and _kv_heads_replicated(axes, mesh, cfg) else axes)
    for name, axes in rules(mesh_cfg)
  )


def _kv_heads_replicated(axes, mesh: Mesh, cfg) -> bool:
  if axes is None or cfg.kv_heads == cfg.num_heads:
    return False
  return cfg.kv_heads % axes_size(mesh, axes) != 0


def axes_size(mesh, axes) -> int:
  """Devices along mesh axes named as in a PartitionSpec entry: one, several or None."""
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def kv_heads_note(mesh_cfg, mesh: Mesh, cfg) -> str:
  """A sentence when the model's key/value heads are replicated over mesh axes that its
  query heads split over; '' otherwise."""
  axes = dict(rules(mesh_cfg)).get('kv_heads')
  if not _kv_heads_replicated(axes, mesh, cfg):
    return ''
  return (
    f'model.num_kv_heads={cfg.kv_heads} does not divide mesh axes {axes} '
    f'({axes_size(mesh, axes)} devices): the key/value projection is replicated there, '
    'while the query heads stay split'
  )


def batch_parallelism(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(global_batch: int, micro_batches: int, mesh: Mesh):
  dp = batch_parallelism(mesh)
  if micro_batches < 1 or global_batch % micro_batches:
    raise UserError(
      f'train.batch_size={global_batch} does not split into '
      f'execution.micro_batches={micro_batches}; use a divisor of the batch'
    )
  if (global_batch // micro_batches) % dp:
    raise UserError(
      f'train.batch_size={global_batch} (micro-batch {global_batch // micro_batches}) does '
      f'not divide the data-parallel size {dp} (mesh data x fsdp); use a multiple of {dp}'
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def rows(mesh: Mesh) -> tuple[NamedSharding, int]:
  """Where host rows fed to a jitted function go (scoring), and how many shards they split
  into: over the batch axes when the mesh has them, else replicated."""
  if set(BATCH_AXES) <= set(mesh.axis_names):
    return NamedSharding(mesh, P(BATCH_AXES)), batch_parallelism(mesh)
  return NamedSharding(mesh, P()), 1


def logical_shardings(boxed_tree, mesh: Mesh, logical_rules: tuple):
  """NamedShardings for a tree of nn.Partitioned (abstract) values."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, logical_rules)


def check_divisible(abstract_tree, shardings):
  """Every sharded dimension must split evenly over its mesh axes; names the first that does not."""
  flat_a = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sh in zip(flat_a, flat_s):
    for dim, axes in zip(leaf.shape, sh.spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else axes
      parts = axes_size(sh.mesh, axes)
      if dim % parts:
        name = '/'.join(str(getattr(k, 'key', k)) for k in path)
        raise UserError(
          f'{name} has a dimension of {dim} that does not split over mesh '
          f'axes {axes} ({parts} devices); change the model size (heads, '
          'width, mlp_dim) or the mesh so that it divides'
        )


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's rows -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def maybe_initialize_distributed(
  coordinator: str = '', num_processes: int = 0, process_id: int = -1
):
  """Joins a multi-process run when the environment (or the flags) describe one.

  TPU pod workers and SLURM jobs are detected by jax itself; GPU clusters without SLURM
  pass the coordinator address, process count and id.
  """
  if jax.distributed.is_initialized():
    return
  if coordinator:
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif 'SLURM_JOB_ID' in os.environ and int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize()
  elif 'TPU_WORKER_HOSTNAMES' in os.environ and ',' in os.environ['TPU_WORKER_HOSTNAMES']:
    jax.distributed.initialize()
