"""Params files for JAX users: one flat name per leaf (`text/encoder/layers_0/.../kernel`).

`.safetensors` (numpy arrays, float32 as stored) or `.msgpack` (flax serialization of the
nested dict). Both load back into the same nested dict of numpy arrays.
"""
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import serialization, traverse_util
from safetensors.numpy import load_file, save_file

Params = dict[str, Any]
SEPARATOR = "/"


def flatten(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Nested dict -> {"a/b/c": array}."""
  flat = traverse_util.flatten_dict(dict(params), sep=SEPARATOR)
  return {name: np.array(value, order="C") for name, value in flat.items()}


def unflatten(flat: Mapping[str, np.ndarray]) -> Params:
  """{"a/b/c": array} -> nested dict."""
  return traverse_util.unflatten_dict(dict(flat), sep=SEPARATOR)


def save_params(path: str, params: Mapping[str, Any]) -> None:
  """Writes `params` to `path` (`.safetensors` or `.msgpack`)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.endswith(".safetensors"):
    save_file(flatten(params), path)
  elif path.endswith(".msgpack"):
    with open(path, "wb") as stream:
      stream.write(serialization.msgpack_serialize(unflatten(flatten(params))))
  else:
    raise ValueError(f"params file must end in .safetensors or .msgpack: {path}")


def load_params(path: str) -> Params:
  """Reads a file written by `save_params` -> nested dict of numpy arrays."""
  if path.endswith(".safetensors"):
    return unflatten(load_file(path))
  if path.endswith(".msgpack"):
    with open(path, "rb") as stream:
      return serialization.msgpack_restore(stream.read())
  raise ValueError(f"params file must end in .safetensors or .msgpack: {path}")


def unscan_layers(params: Any) -> Any:
  """Stacked `layers` trees ([L, ...] leaves, from `scan_layers=True`) -> `layers_i` trees."""
  if not isinstance(params, Mapping):
    return params
  out = {}
  for name, value in params.items():
    if name == "layers" and isinstance(value, Mapping):
      leaves = traverse_util.flatten_dict(dict(value))
      num_layers = next(iter(leaves.values())).shape[0]
      for i in range(num_layers):
        out[f"layers_{i}"] = traverse_util.unflatten_dict(
            {key: np.asarray(leaf)[i] for key, leaf in leaves.items()})
    else:
      out[name] = unscan_layers(value)
  return out
