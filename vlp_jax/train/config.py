"""Generic run-config fields (same names in every config) and validation before compilation.

A config file `configs/<family>.py` defines `get_config(variant)` and builds on
`run_config(family, variant)`: the generic fields below plus the family's `model` and `data`
defaults (`ModelFamily.default_config`). `validate_config` rejects, with a message naming the
field, anything that would otherwise fail late: unknown fields, a mesh that does not match the
devices, a batch that does not divide over the data axes, a missing dataset, a param-path
regex that does not compile; `check_param_patterns` (called by the trainer once the params'
shapes are known, before anything compiles) one that matches no param.
"""
import importlib.util
import os
import re

import ml_collections

from vlp_jax.models.registry import get_family
from vlp_jax.train import memory

SYNTHETIC_DATASETS = ("toy_synthetic",)
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
  """A run config that cannot work; the message names the offending field."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config of `path/to/config.py[:variant]`, as `--config=` takes it on the command line."""
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  if module_spec is None:
    raise ConfigError(f"config file {path!r} cannot be loaded")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def default_optimizer_config() -> ml_collections.ConfigDict:
  """`config.optimizer` defaults (see `vlp_jax.train.optim.make_optimizer`)."""
  return ml_collections.ConfigDict(dict(
      name="adamw",
      learning_rate=1e-3,
      schedule="cosine",            # cosine | linear | constant (each after linear warm-up)
      warmup_steps=0,
      end_learning_rate_factor=0.0,  # final lr = learning_rate * this
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      no_decay_regex="",            # params with ndim <= 1 never decay; these paths neither
      grad_clip_norm=1.0,           # global norm; 0 disables
      accumulation_steps=1,         # micro-batches per step (lax.scan inside the step)
      lr_multipliers=(),            # ((regex on param path, multiplier), ...), first match wins
      frozen_regex="",              # params whose path matches get no update
  ))


def base_config() -> ml_collections.ConfigDict:
  """Generic fields shared by every run config, with their defaults."""
  return ml_collections.ConfigDict(dict(
      seed=0,
      total_steps=1000,
      global_batch_size=32,
      eval_batch_size=0,            # 0: same as global_batch_size
      log_every_steps=50,
      checkpoint_every_steps=1000,  # and always at the end
      eval_every_steps=0,           # 0: only at the end; evaluators also run at the end
      keep_checkpoints=3,
      async_checkpoints=True,
      mesh=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),
      dtype="float32",              # matmul compute dtype; params stay float32
      remat_policy="none",          # see vlp_jax.train.memory
      scan_layers=False,
      logical_axis_rules=(),        # ((logical, mesh axis | (axes,) | None), ...) before defaults
      optimizer=default_optimizer_config(),
      model=ml_collections.ConfigDict(dict(family="", variant="")),
      data=ml_collections.ConfigDict(dict(name="")),
  ))


def run_config(family: str, variant: str) -> ml_collections.ConfigDict:
  """Generic defaults + the family's `model` and `data` defaults for `variant`."""
  config = base_config()
  defaults = get_family(family).default_config(variant)
  config.model = defaults.model
  config.data = defaults.data
  return config


def resolve_mesh_shape(mesh_config: ml_collections.ConfigDict,
                       num_devices: int) -> dict[str, int]:
  """{data, fsdp, tensor} sizes with one -1 filled from `num_devices`; checks the product."""
  sizes = {axis: int(mesh_config[axis]) for axis in ("data", "fsdp", "tensor")}
  unknown = [axis for axis, size in sizes.items() if size == -1]
  if len(unknown) > 1:
    raise ConfigError(f"config.mesh: at most one axis may be -1, got {dict(sizes)}")
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      raise ConfigError(f"config.mesh.{axis}={size} must be positive or -1")
  known = 1
  for axis, size in sizes.items():
    if size != -1:
      known *= size
  if unknown:
    if num_devices % known:
      raise ConfigError(f"config.mesh={dict(sizes)}: {num_devices} devices do not divide "
                        f"by the fixed axes (product {known})")
    sizes[unknown[0]] = num_devices // known
  elif known != num_devices:
    raise ConfigError(f"config.mesh={dict(sizes)} multiplies to {known}, but there are "
                      f"{num_devices} devices")
  return sizes


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int,
                    process_count: int = 1) -> dict[str, int]:
  """Raises ConfigError naming the field of the first problem; returns the mesh shape."""
  if not config.get("model") or not config.model.get("family"):
    raise ConfigError("config.model.family is missing")
  try:
    family = get_family(config.model.family)
  except KeyError as error:
    raise ConfigError(f"config.model.family={config.model.family!r}: {error}") from None
  schema = base_config()
  try:
    defaults = family.default_config(config.model.get("variant", ""))
  except ValueError as error:
    raise ConfigError(f"config.model.variant: {error}") from None
  schema.model, schema.data = defaults.model, defaults.data
  _check_known_fields(config, schema, "config")

  for field in ("total_steps", "global_batch_size", "log_every_steps",
                "checkpoint_every_steps", "keep_checkpoints"):
    if config[field] <= 0:
      raise ConfigError(f"config.{field}={config[field]} must be positive")
  if config.eval_every_steps < 0 or config.eval_batch_size < 0:
    raise ConfigError("config.eval_every_steps and config.eval_batch_size must be >= 0")
  if config.dtype not in DTYPES:
    raise ConfigError(f"config.dtype={config.dtype!r} is not one of {DTYPES}")
  if config.remat_policy not in memory.remat_policy_names():
    raise ConfigError(f"config.remat_policy={config.remat_policy!r} is not one of "
                      f"{memory.remat_policy_names()}")
  _check_optimizer(config.optimizer)

  mesh_shape = resolve_mesh_shape(config.mesh, num_devices)
  batch_axes = mesh_shape["data"] * mesh_shape["fsdp"]
  micro = config.optimizer.accumulation_steps
  if config.global_batch_size % batch_axes:
    raise ConfigError(f"config.global_batch_size={config.global_batch_size} does not divide "
                      f"over mesh data*fsdp={batch_axes}")
  if config.global_batch_size % (batch_axes * micro):
    raise ConfigError(f"config.global_batch_size={config.global_batch_size} does not divide "
                      f"into config.optimizer.accumulation_steps={micro} micro-batches over "
                      f"mesh data*fsdp={batch_axes}")
  eval_batch = config.eval_batch_size or config.global_batch_size
  for name, size in (("global_batch_size", config.global_batch_size),
                     ("eval_batch_size", eval_batch)):
    if size % process_count:
      raise ConfigError(f"config.{name}={size} does not divide over {process_count} processes")
  if eval_batch % batch_axes:
    raise ConfigError(f"config.eval_batch_size={eval_batch} does not divide over mesh "
                      f"data*fsdp={batch_axes}")
  _check_dataset(config.data)
  return mesh_shape


def _check_known_fields(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                        path: str) -> None:
  for key in config.keys():
    if key not in schema:
      raise ConfigError(f"{path}.{key} is not a known field (known: {sorted(schema.keys())})")
    value, reference = config[key], schema[key]
    if isinstance(value, ml_collections.ConfigDict) and isinstance(
        reference, ml_collections.ConfigDict):
      _check_known_fields(value, reference, f"{path}.{key}")


def _check_optimizer(optimizer: ml_collections.ConfigDict) -> None:
  if optimizer.name != "adamw":
    raise ConfigError(f"config.optimizer.name={optimizer.name!r}: only 'adamw' is supported")
  if optimizer.schedule not in ("cosine", "linear", "constant"):
    raise ConfigError(f"config.optimizer.schedule={optimizer.schedule!r} is not one of "
                      "cosine, linear, constant")
  if optimizer.accumulation_steps < 1:
    raise ConfigError(f"config.optimizer.accumulation_steps={optimizer.accumulation_steps} "
                      "must be >= 1")
  if optimizer.warmup_steps < 0 or optimizer.grad_clip_norm < 0:
    raise ConfigError("config.optimizer.warmup_steps and grad_clip_norm must be >= 0")
  for entry in optimizer.lr_multipliers:
    if len(entry) != 2:
      raise ConfigError(f"config.optimizer.lr_multipliers entry {entry!r} is not "
                        "(regex, multiplier)")
  for field, pattern in _param_patterns(optimizer):
    try:
      re.compile(pattern)
    except re.error as error:
      raise ConfigError(f"{field}={pattern!r} is not a regex: {error}") from None


def _param_patterns(optimizer: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """(field name, regex) of each param-path pattern set in `optimizer`."""
  patterns = [(f"config.optimizer.lr_multipliers[{index}]", str(entry[0]))
              for index, entry in enumerate(optimizer.lr_multipliers)]
  return patterns + [(f"config.optimizer.{name}", optimizer[name])
                     for name in ("no_decay_regex", "frozen_regex") if optimizer[name]]


def check_param_patterns(optimizer: ml_collections.ConfigDict, param_paths: list[str]) -> None:
  """Raises ConfigError naming the field of a param-path regex that matches none of
  `param_paths` ('/'-joined, e.g. `vision/patch_embedding/projection/kernel`): a typo there
  would otherwise change nothing, silently."""
  for field, pattern in _param_patterns(optimizer):
    if not any(re.search(pattern, path) for path in param_paths):
      raise ConfigError(f"{field}={pattern!r} matches no parameter; the paths look like "
                        f"{param_paths[:3]}")


def _check_dataset(data: ml_collections.ConfigDict) -> None:
  """A TFDS dataset needs `<data_dir>/<name>` to exist (synthetic sources need nothing); an
  unset `data.data_dir` means $TFDS_DATA_DIR or ~/tensorflow_datasets, as in TFDS."""
  if not data.get("name"):
    raise ConfigError("config.data.name is missing")
  if data.name in SYNTHETIC_DATASETS:
    return
  data_dir = (data.get("data_dir") or os.environ.get("TFDS_DATA_DIR")
              or os.path.expanduser("~/tensorflow_datasets"))  # TFDS's own default
  dataset_dir = os.path.join(data_dir, data.name.split(":")[0].split("/")[0])
  import tensorflow as tf  # pylint: disable=g-import-not-at-top (heavy; gfile reads gs:// too)
  if not tf.io.gfile.isdir(dataset_dir):
    raise ConfigError(f"config.data.data_dir={data_dir!r}: dataset {data.name!r} not found "
                      f"(no directory {dataset_dir}); build it first")
