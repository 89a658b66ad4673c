"""Stores examples as a TFDS dataset that `tfds.builder(name, data_dir=...)` reads back.

    path = store_examples("capfilt/shapes_64px", features, {"train": examples}, data_dir)
    tfds.builder("capfilt/shapes_64px", data_dir=data_dir)   # no builder code needed

`name` is "<dataset>/<config>", version 1.0.0. TFDS loads a dataset that has no registered
builder from its files (`dataset_info.json`, `features.json`, TFRecord shards), so the
pipelines' `data.name` / `data.data_dir` read it like any built dataset. Examples are in the
form `features.encode_example` takes; an image may be its encoded bytes (stored as they are).
The writer shuffles the examples of a split by a hash of their keys (deterministic).
"""
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

VERSION = "1.0.0"


class _StoredDataset(tfds.dataset_builders.AdhocBuilder, skip_registration=True):
  """TFDS's ad hoc builder; its own file is the code path TFDS looks up for checksums."""
  code_path = epath.Path(__file__)


def store_examples(name: str, features: tfds.features.FeatureConnector,
                   splits: Mapping[str, Iterable[tuple[int, dict[str, Any]]]], data_dir: str,
                   description: str = "") -> str:
  """Writes `splits` ({split: iterable of (unique int key, example)}) under
  `data_dir/<dataset>/<config>/1.0.0` and returns that folder. Every split needs at least one
  example (TFDS rejects empty splits); an existing dataset of that name is an error."""
  dataset, _, config = name.partition("/")
  if not config:
    raise ValueError(f"name must be '<dataset>/<config>', got {name!r}")
  builder = _StoredDataset(name=dataset, config=config, version=VERSION, features=features,
                           split_datasets=splits, data_dir=data_dir,
                           description=description or None)
  if builder.is_prepared():
    raise FileExistsError(f"{builder.data_dir} already holds a dataset")
  with tempfile.TemporaryDirectory() as downloads:  # TFDS makes a (here unused) download dir
    builder.download_and_prepare(
        download_dir=downloads,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return os.fspath(builder.data_dir)
