"""`coco_format`: a TFDS builder over a local COCO-format folder, into the shared image-text features.

    builder = tfds.builder("coco_format", root="/data/coco", data_dir="/data/tfds")
    builder.download_and_prepare()
    train = builder.as_dataset(split="train")

`root` can also come through `config=coco_format_config(root)`. Each root gets its own config
name ("<folder>_<hash of the path>"), so different folders never share a cache directory.
Images that are missing, unreadable or without captions are skipped, counted, logged, and the
counts stored in `builder.info.metadata["skipped"]` (a split left with no image file at all is
omitted; one whose every file is corrupt makes TFDS fail, as it rejects empty splits).
"""
import collections
import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, UnidentifiedImageError

from vlp_jax.data.builders.coco_annotations import (KARPATHY_FILE, ImageRecord, category_names, read_coco_folder,
                                                    unique)
from vlp_jax.data.features import image_text_features

_LOG = logging.getLogger(__name__)
SKIP_REASONS = ("missing", "corrupt", "no_captions")
_FALLBACK_LABELS = ("object",)  # a folder without instances still needs a ClassLabel


@dataclasses.dataclass(eq=False)
class CocoFormatConfig(tfds.core.BuilderConfig):
  """Where the COCO-format folder is (see `vlp_jax.data.builders.coco_annotations` for the layout)."""
  root: str = ""
  karpathy_file: str = KARPATHY_FILE


def coco_format_config(root: str, karpathy_file: str = KARPATHY_FILE) -> CocoFormatConfig:
  """A config named after the folder and a hash of its absolute path."""
  root = os.path.abspath(os.path.expanduser(root))
  digest = hashlib.sha1(f"{root}|{karpathy_file}".encode()).hexdigest()[:8]
  folder = "".join(ch if ch.isalnum() else "_" for ch in os.path.basename(root.rstrip("/")) or "root")
  return CocoFormatConfig(name=f"{folder}_{digest}", version=CocoFormat.VERSION, root=root,
                          karpathy_file=karpathy_file, description=f"COCO-format folder {root}")


class CocoFormat(tfds.core.GeneratorBasedBuilder):
  """Captions and boxes from a local COCO-format folder; colour/size -1, no questions or referring."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # TFDS finds this through `importlib_resources`, which is not a dependency of ours.
  code_path = epath.Path(__file__)

  def __init__(self, *, config: CocoFormatConfig | str | None = None, root: str | None = None,
               karpathy_file: str = KARPATHY_FILE, **kwargs: Any):
    """Pass `root` (the folder) or a `CocoFormatConfig`; **kwargs go to TFDS (data_dir, ...)."""
    if root is not None:
      config = coco_format_config(root, karpathy_file)
    if not isinstance(config, CocoFormatConfig):
      raise ValueError("coco_format needs the folder: tfds.builder('coco_format', root=..., data_dir=...)")
    self._folder = None
    super().__init__(config=config, **kwargs)

  def _read_folder(self):
    if self._folder is None:
      self._folder = read_coco_folder(self.builder_config.root, self.builder_config.karpathy_file)
    return self._folder

  def _label_names(self) -> list[str]:
    return category_names(self._read_folder().categories) or list(_FALLBACK_LABELS)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=image_text_features(self._label_names()),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    """One generator per split with at least one captioned image file (TFDS rejects empty splits)."""
    del dl_manager  # the data is local
    self.info.metadata["skipped"] = {}
    generators = {}
    for split, records in self._read_folder().splits.items():
      skipped = collections.Counter({reason: 0 for reason in SKIP_REASONS})
      candidates = []
      for record in unique(records):
        path = _find_image(self.builder_config.root, record)
        if not record.captions:
          skipped["no_captions"] += 1
        elif path is None:
          skipped["missing"] += 1
        else:
          candidates.append((record, path))
      if candidates:
        generators[split] = self._generate_examples(split, candidates, skipped)
      else:
        self._record_skipped(split, skipped, total=len(records))
    return generators

  def _generate_examples(self, split: str, candidates: list[tuple[ImageRecord, str]],
                         skipped: collections.Counter) -> Iterator[tuple[int, dict[str, Any]]]:
    label_index = {category_id: rank for rank, category_id in enumerate(sorted(self._read_folder().categories))}
    for record, path in candidates:
      try:
        image, (width, height) = _read_image(path)
      except (OSError, UnidentifiedImageError, ValueError) as error:
        _LOG.debug("coco_format: unreadable image %s: %s", path, error)
        skipped["corrupt"] += 1
        continue
      yield record.image_id, {
          "image": image,
          "image_id": record.image_id,
          "captions": record.captions,
          "objects": _objects(record, width, height, label_index),
          "questions": [],
          "referring": [],
      }
    self._record_skipped(split, skipped, total=len(candidates) + skipped["missing"] + skipped["no_captions"])

  def _record_skipped(self, split: str, skipped: collections.Counter, total: int) -> None:
    self.info.metadata["skipped"][split] = dict(skipped)
    if sum(skipped.values()):
      _LOG.warning("coco_format %s: skipped %d of %d images (%s)", split, sum(skipped.values()), total,
                   ", ".join(f"{count} {reason}" for reason, count in skipped.items()))


def _find_image(root: str, record: ImageRecord) -> str | None:
  for folder in record.image_dirs:
    path = os.path.join(root, folder, record.file_name)
    if os.path.isfile(path):
      return path
  return None


def _read_image(path: str) -> tuple[bytes, tuple[int, int]]:
  """(RGB JPEG bytes, (width, height)); JPEG RGB files are kept as they are, others re-encoded."""
  with open(path, "rb") as file:
    data = file.read()
  with Image.open(io.BytesIO(data)) as image:
    image.load()  # decodes fully: raises on truncated or corrupt files
    if image.format == "JPEG" and image.mode == "RGB":
      return data, image.size
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), image.size


def _objects(record: ImageRecord, width: int, height: int, label_index: dict[int, int]) -> list[dict[str, Any]]:
  """COCO [x, y, w, h] pixel boxes -> normalised TFDS BBoxes; unknown categories and empty boxes dropped."""
  objects = []
  for (x, y, box_width, box_height), category_id in record.boxes:
    ymin, xmin = max(0.0, y / height), max(0.0, x / width)
    ymax, xmax = min(1.0, (y + box_height) / height), min(1.0, (x + box_width) / width)
    if category_id not in label_index or ymax <= ymin or xmax <= xmin:
      continue
    objects.append({"bbox": tfds.features.BBox(ymin, xmin, ymax, xmax), "label": label_index[category_id],
                    "colour": -1, "size": -1})
  return objects
