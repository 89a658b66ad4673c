"""The `shapes` TFDS dataset: procedurally drawn scenes with captions, boxes, VQA and referring.

Load a default build with `tfds.load("shapes/64px", data_dir=...)`; tiny or custom builds
with `tfds.builder("shapes", config="64px", train_size=256, validation_size=64, test_size=64,
data_dir=...)` (or `config=shapes_config(...)`). Every configuration gets its own name, so
different sizes never share a cache directory, and the name alone rebuilds it:
`tfds.load("shapes/64px_train256_validation64_test64", data_dir=...)`.
"""
import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from vlp_jax.data.builders.examples import make_example
from vlp_jax.data.builders.vocabulary import SHAPE_NAMES
from vlp_jax.data.features import image_text_features

_VERSION = tfds.core.Version("1.0.0")
_DEFAULT_SIZES = {"train_size": 10_000, "validation_size": 1_000, "test_size": 1_000}
_CONFIG_NAME = re.compile(r"^(?P<image_size>\d+)px"
                          r"(?:_train(?P<train_size>\d+)_validation(?P<validation_size>\d+)_test(?P<test_size>\d+))?"
                          r"(?:_seed(?P<seed>\d+))?$")


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Image resolution, split sizes and seed of one `shapes` build (see `shapes_config`)."""
  image_size: int = 64
  train_size: int = _DEFAULT_SIZES["train_size"]
  validation_size: int = _DEFAULT_SIZES["validation_size"]
  test_size: int = _DEFAULT_SIZES["test_size"]
  seed: int = 0

  def split_sizes(self) -> dict[str, int]:
    return {"train": self.train_size, "validation": self.validation_size, "test": self.test_size}


def config_name(image_size: int, train_size: int, validation_size: int, test_size: int, seed: int) -> str:
  """"64px" for the defaults, else e.g. "64px_train256_validation64_test64_seed1"."""
  name = f"{image_size}px"
  sizes = {"train_size": train_size, "validation_size": validation_size, "test_size": test_size}
  if sizes != _DEFAULT_SIZES:
    name += f"_train{train_size}_validation{validation_size}_test{test_size}"
  return name + (f"_seed{seed}" if seed else "")


_REGISTERED_CONFIGS = {
    size: ShapesConfig(name=f"{size}px", version=_VERSION, image_size=size,
                       description=f"{size}x{size} images, 10k/1k/1k train/validation/test, seed 0")
    for size in (64, 224)
}


def shapes_config(image_size: int = 64, train_size: int = _DEFAULT_SIZES["train_size"],
                  validation_size: int = _DEFAULT_SIZES["validation_size"],
                  test_size: int = _DEFAULT_SIZES["test_size"], seed: int = 0) -> ShapesConfig:
  """The config for these settings, named after them (a registered one for the defaults)."""
  name = config_name(image_size, train_size, validation_size, test_size, seed)
  if name in (config.name for config in _REGISTERED_CONFIGS.values()):
    return _REGISTERED_CONFIGS[image_size]
  if image_size < 16 or min(train_size, validation_size, test_size, seed) < 0:
    raise ValueError(f"invalid shapes settings: {image_size}px, sizes {train_size}/{validation_size}/{test_size},"
                     f" seed {seed}")
  return ShapesConfig(name=name, version=_VERSION, image_size=image_size, train_size=train_size,
                      validation_size=validation_size, test_size=test_size, seed=seed,
                      description=f"{image_size}x{image_size} images, {train_size}/{validation_size}/{test_size}"
                                  f" train/validation/test, seed {seed}")


def parse_config_name(name: str) -> ShapesConfig:
  """Inverse of `config_name`: "64px_train256_validation64_test64" -> its ShapesConfig."""
  match = _CONFIG_NAME.match(name)
  if not match:
    raise ValueError(f"not a shapes config name: {name!r} (e.g. '64px' or '64px_train256_validation64_test64')")
  settings = {key: int(value) for key, value in match.groupdict().items() if value is not None}
  return shapes_config(**settings)


def resolve_config(config: str | ShapesConfig | None, **overrides: int | None) -> ShapesConfig:
  """Applies builder kwargs (image_size, train_size, ..., seed) on top of a config or config name."""
  overrides = {key: value for key, value in overrides.items() if value is not None}
  if config is None:
    config = _REGISTERED_CONFIGS[64]
  elif isinstance(config, str):
    config = parse_config_name(config.split(":")[0])
  if not overrides:
    return config
  settings = {"image_size": config.image_size, "seed": config.seed, **_split_kwargs(config)}
  settings.update(overrides)
  return shapes_config(**settings)


def _split_kwargs(config: ShapesConfig) -> dict[str, int]:
  return {f"{split}_size": size for split, size in config.split_sizes().items()}


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Synthetic scenes of 1-4 coloured shapes on a 3x3 grid, built offline and deterministically."""

  VERSION = _VERSION
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = list(_REGISTERED_CONFIGS.values())
  DEFAULT_CONFIG_NAME = "64px"
  # TFDS derives this from package resources through `importlib_resources`, which is not a
  # dependency of ours; the builder's own file is what it needs (for checksums lookup).
  code_path = epath.Path(__file__)

  def __init__(self, *, config: str | ShapesConfig | None = None, image_size: int | None = None,
               train_size: int | None = None, validation_size: int | None = None, test_size: int | None = None,
               seed: int | None = None, **kwargs: Any):
    """`config` (name or ShapesConfig, default "64px"); size/seed kwargs override it; **kwargs go to TFDS."""
    config = resolve_config(config, image_size=image_size, train_size=train_size,
                            validation_size=validation_size, test_size=test_size, seed=seed)
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=image_text_features(SHAPE_NAMES, self.builder_config.image_size),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split, size) for split, size in self.builder_config.split_sizes().items()
            if size > 0}

  def _generate_examples(self, split: str, size: int) -> Iterator[tuple[int, dict[str, Any]]]:
    config = self.builder_config
    for index in range(size):
      yield index, make_example(config.seed, split, index, config.image_size)
