"""Reads a local COCO-format folder into per-split image records (no TFDS here).

Layout (any subset): `annotations/captions_<name>.json` and `annotations/instances_<name>.json`
(COCO json), images in `<name>/` (e.g. `train2017/`) or `images/`, and optionally a Karpathy
split file `dataset_coco.json` (in the root or in `annotations/`); when present it decides the
splits (train + restval -> train, val -> validation, test -> test) and provides the captions.
"""
import collections
import dataclasses
import json
import os
import re
from collections.abc import Iterable

KARPATHY_FILE = "dataset_coco.json"
_KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "validation", "test": "test"}
_ANNOTATION_FILE = re.compile(r"^(captions|instances)_(?P<name>.+)\.json$")


@dataclasses.dataclass
class ImageRecord:
  """One image: where it is, its captions and its boxes ([x, y, w, h] pixels, category id)."""
  image_id: int
  file_name: str
  image_dirs: list[str]  # folders (relative to the root) to look for file_name in, in order
  captions: list[str] = dataclasses.field(default_factory=list)
  boxes: list[tuple[list[float], int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CocoFolder:
  splits: dict[str, list[ImageRecord]]
  categories: dict[int, str]  # category id -> name


def split_of(annotation_name: str) -> str:
  """"train2017" -> "train", "val2014" -> "validation", "test-dev" -> "test"."""
  lowered = annotation_name.lower()
  for key, split in (("train", "train"), ("val", "validation"), ("test", "test")):
    if key in lowered:
      return split
  raise ValueError(f"cannot tell the split of annotation file suffix {annotation_name!r}")


def _load_json(path: str) -> dict:
  with open(path, encoding="utf-8") as file:
    return json.load(file)


def _annotation_files(root: str) -> dict[str, dict[str, str]]:
  """{"captions"|"instances": {name: path}} found under root/annotations."""
  found: dict[str, dict[str, str]] = {"captions": {}, "instances": {}}
  directory = os.path.join(root, "annotations")
  for entry in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
    if match := _ANNOTATION_FILE.match(entry):
      found[match.group(1)][match.group("name")] = os.path.join(directory, entry)
  return found


def find_karpathy_file(root: str, file_name: str = KARPATHY_FILE) -> str | None:
  for candidate in (os.path.join(root, file_name), os.path.join(root, "annotations", file_name)):
    if os.path.isfile(candidate):
      return candidate
  return None


def read_coco_folder(root: str, karpathy_file: str = KARPATHY_FILE) -> CocoFolder:
  """Records per split ("train", "validation", "test"; only those with data) and the categories."""
  files = _annotation_files(root)
  categories: dict[int, str] = {}
  boxes: dict[int, list[tuple[list[float], int]]] = collections.defaultdict(list)
  for path in files["instances"].values():
    instances = _load_json(path)
    categories.update({int(c["id"]): str(c["name"]) for c in instances.get("categories", [])})
    for annotation in instances.get("annotations", []):
      boxes[int(annotation["image_id"])].append(([float(v) for v in annotation["bbox"]],
                                                 int(annotation["category_id"])))
  karpathy = find_karpathy_file(root, karpathy_file)
  if karpathy:
    splits = _karpathy_records(_load_json(karpathy))
  else:
    splits = _caption_file_records(files["captions"], instance_files=files["instances"])
  for records in splits.values():
    for record in records:
      record.boxes = boxes.get(record.image_id, [])
  return CocoFolder(splits={name: records for name, records in splits.items() if records}, categories=categories)


def _karpathy_records(karpathy: dict) -> dict[str, list[ImageRecord]]:
  splits: dict[str, list[ImageRecord]] = collections.defaultdict(list)
  for image in karpathy["images"]:
    split = _KARPATHY_SPLITS.get(image.get("split", ""))
    if split is None:
      continue
    image_id = int(image.get("cocoid", image.get("imgid")))
    folders = [image["filepath"]] if image.get("filepath") else []
    splits[split].append(ImageRecord(
        image_id=image_id, file_name=image["filename"], image_dirs=folders + ["images", ""],
        captions=[text for text in (s.get("raw", "").strip() for s in image.get("sentences", [])) if text]))
  return splits


def _caption_file_records(caption_files: dict[str, str],
                          instance_files: dict[str, str]) -> dict[str, list[ImageRecord]]:
  """Images listed in captions_<name>.json (or, without one, instances_<name>.json) per split."""
  splits: dict[str, list[ImageRecord]] = collections.defaultdict(list)
  for name in sorted(set(caption_files) | set(instance_files)):
    listing = _load_json(caption_files[name] if name in caption_files else instance_files[name])
    captions: dict[int, list[str]] = collections.defaultdict(list)
    if name in caption_files:
      for annotation in listing.get("annotations", []):
        if str(annotation.get("caption", "")).strip():
          captions[int(annotation["image_id"])].append(str(annotation["caption"]).strip())
    for image in sorted(listing.get("images", []), key=lambda image: int(image["id"])):
      splits[split_of(name)].append(ImageRecord(
          image_id=int(image["id"]), file_name=image["file_name"], image_dirs=[name, "images", ""],
          captions=captions.get(int(image["id"]), [])))
  return splits


def category_names(categories: dict[int, str]) -> list[str]:
  """Label names ordered by category id (the ClassLabel index of a category is its rank)."""
  return [categories[category_id] for category_id in sorted(categories)]


def unique(records: Iterable[ImageRecord]) -> list[ImageRecord]:
  """Drops repeated image ids (keeping the first), so TFDS keys stay unique."""
  seen: set[int] = set()
  kept = []
  for record in records:
    if record.image_id not in seen:
      seen.add(record.image_id)
      kept.append(record)
  return kept
