"""Device mesh (data, fsdp, tensor), logical axis rules and shardings of pytrees and batches."""
import logging
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axes, in precedence order (flax uses the first rule whose mesh
# axes are still free in a given spec).
DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("conv_height", None),
    ("conv_width", None),
    ("layers", None),
)

PyTree = Any


def make_mesh(mesh_shape: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh over all (or the given) devices with axes (data, fsdp, tensor) of `mesh_shape`."""
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(mesh_shape[axis] for axis in MESH_AXES)
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (AssertionError, NotImplementedError, ValueError):
    device_array = np.asarray(devices).reshape(shape)  # CPU / unknown topologies
  return Mesh(device_array, MESH_AXES)


def logical_axis_rules(overrides: Sequence[Sequence[Any]] = ()) -> tuple[tuple[str, Any], ...]:
  """`overrides` (from `config.logical_axis_rules`) take precedence over the defaults."""
  rules = tuple((str(name), _as_mesh_axes(axes)) for name, axes in overrides)
  overridden = {name for name, _ in rules}
  return rules + tuple(rule for rule in DEFAULT_LOGICAL_AXIS_RULES if rule[0] not in overridden)


def _as_mesh_axes(axes: Any) -> Any:
  if axes is None or isinstance(axes, str):
    return axes
  return tuple(axes)


def _fit_spec(shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes from dims they do not divide evenly (those dims are then replicated)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[name] for name in names])) if names else 1
    if size > 1 and dim % size:
      logging.info("dimension %d does not divide over mesh axes %s: replicated", dim, names)
      fitted.append(None)
    else:
      fitted.append(axes)
  return PartitionSpec(*fitted)


def strip_boxes(tree: PyTree) -> PyTree:
  """The values of `nn.Partitioned` (or other axis-metadata) boxes, with no constraints."""
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False)
                      if isinstance(x, nn.Partitioned) else
                      (x.unbox() if isinstance(x, nn.meta.AxisMetadata) else x),
                      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def tree_shardings(boxed_tree: PyTree, mesh: Mesh,
                   rules: Sequence[tuple[str, Any]]) -> PyTree:
  """NamedShardings for a (possibly `nn.Partitioned`-boxed, abstract) tree, unboxed structure.

  Leaves without logical names are replicated.
  """
  logical_specs = nn.get_partition_spec(boxed_tree)
  shapes = strip_boxes(boxed_tree)
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)

  def to_sharding(spec: Any, leaf: Any) -> NamedSharding:
    spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec()
    return NamedSharding(mesh, _fit_spec(tuple(np.shape(leaf)), spec, mesh))

  return jax.tree.map(to_sharding, mesh_specs, shapes,
                      is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over data*fsdp."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles global arrays from this process's share of the batch (leading axis)."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for name, value in local_batch.items()}
