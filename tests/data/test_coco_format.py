"""The `coco_format` builder on a tiny COCO-format folder written into tmp_path."""
import json
import logging

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import vlp_jax.data.builders  # noqa: F401  (registers the builders)
from vlp_jax.data.builders.coco_annotations import split_of
from vlp_jax.data.builders.coco_format import coco_format_config

_NO_GCS = tfds.download.DownloadConfig(try_download_gcs=False)
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]


def _write_image(path, size=(32, 24), colour=(200, 30, 30), image_format="JPEG"):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", size, colour).save(path, format=image_format)


def _write_json(path, content):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(content))


@pytest.fixture
def coco_root(tmp_path):
  """train2017: 1.jpg ok, 2.png ok (PNG), 3.jpg corrupt, 4.jpg without captions, 5.jpg missing; val2017: 10.jpg."""
  root = tmp_path / "coco"
  _write_image(root / "train2017" / "1.jpg")
  _write_image(root / "train2017" / "2.png", size=(20, 40), image_format="PNG")
  (root / "train2017" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
  _write_image(root / "train2017" / "4.jpg")
  _write_image(root / "val2017" / "10.jpg", size=(16, 16))
  train_images = [{"id": i, "file_name": f"{i}.{'png' if i == 2 else 'jpg'}", "width": 32, "height": 24}
                  for i in range(1, 6)]
  _write_json(root / "annotations" / "captions_train2017.json", {
      "images": train_images,
      "annotations": [{"id": 100 + 10 * image_id + i, "image_id": image_id,
                       "caption": f"caption {i} of image {image_id}"}
                      for image_id in (1, 2, 3, 5) for i in range(2)] + [
                          {"id": 200, "image_id": 4, "caption": "   "}]})
  _write_json(root / "annotations" / "captions_val2017.json", {
      "images": [{"id": 10, "file_name": "10.jpg"}],
      "annotations": [{"id": 300, "image_id": 10, "caption": "A validation image."}]})
  _write_json(root / "annotations" / "instances_train2017.json", {
      "images": train_images, "categories": CATEGORIES,
      "annotations": [{"id": 1, "image_id": 1, "bbox": [4, 6, 10, 12], "category_id": 18},
                      {"id": 2, "image_id": 1, "bbox": [20, 0, 30, 30], "category_id": 1},  # clipped to the image
                      {"id": 3, "image_id": 1, "bbox": [5, 5, 0, 4], "category_id": 1}]})  # empty: dropped
  return root


def _build(root, data_dir):
  builder = tfds.builder("coco_format", root=str(root), data_dir=str(data_dir))
  builder.download_and_prepare(download_config=_NO_GCS)
  return builder


def _examples(builder, split):
  return {int(ex["image_id"]): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def test_captions_boxes_and_skipped_records(coco_root, tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    builder = _build(coco_root, tmp_path / "tfds")
  assert builder.info.features["objects"]["label"].names == ["person", "dog"]
  train = _examples(builder, "train")
  assert sorted(train) == [1, 2]
  assert [c.decode() for c in train[1]["captions"]] == ["caption 0 of image 1", "caption 1 of image 1"]
  assert train[1]["image"].shape == (24, 32, 3) and train[2]["image"].shape == (40, 20, 3)
  assert np.abs(train[1]["image"].astype(int) - (200, 30, 30)).max() < 8
  objects = train[1]["objects"]
  np.testing.assert_allclose(objects["bbox"], [[6 / 24, 4 / 32, 18 / 24, 14 / 32], [0, 20 / 32, 1, 1]], atol=1e-6)
  assert objects["label"].tolist() == [1, 0]  # dog, person
  assert objects["colour"].tolist() == [-1, -1] and objects["size"].tolist() == [-1, -1]
  assert len(train[2]["objects"]["label"]) == 0 and len(train[2]["questions"]["question"]) == 0
  assert list(_examples(builder, "validation")) == [10]
  assert builder.info.metadata["skipped"]["train"] == {"missing": 1, "corrupt": 1, "no_captions": 1}
  assert "skipped 3 of 5 images" in caplog.text
  reloaded = tfds.builder(f"coco_format/{builder.builder_config.name}", data_dir=str(tmp_path / "tfds"))
  assert reloaded.info.splits["train"].num_examples == 2
  assert reloaded.info.metadata["skipped"]["validation"] == {"missing": 0, "corrupt": 0, "no_captions": 0}


def test_karpathy_split_file_decides_splits_and_captions(coco_root, tmp_path):
  sentences = lambda *texts: [{"raw": text} for text in texts]  # noqa: E731
  _write_json(coco_root / "dataset_coco.json", {"images": [
      {"filepath": "train2017", "filename": "1.jpg", "cocoid": 1, "split": "train", "sentences": sentences("one")},
      {"filepath": "train2017", "filename": "2.png", "cocoid": 2, "split": "restval", "sentences": sentences("two")},
      {"filepath": "val2017", "filename": "10.jpg", "cocoid": 10, "split": "test",
       "sentences": sentences("ten", " a second ten ")},
      {"filepath": "train2017", "filename": "4.jpg", "cocoid": 4, "split": "val", "sentences": []},
  ]})
  builder = _build(coco_root, tmp_path / "tfds")
  assert sorted(_examples(builder, "train")) == [1, 2]
  test = _examples(builder, "test")
  assert [c.decode() for c in test[10]["captions"]] == ["ten", "a second ten"]
  assert "validation" not in builder.info.splits  # its only image has no captions
  assert builder.info.metadata["skipped"]["validation"]["no_captions"] == 1
  assert len(_examples(builder, "train")[1]["objects"]["label"]) == 2  # boxes still come from instances


def test_config_names_follow_the_folder(tmp_path):
  first, again = coco_format_config(str(tmp_path / "a")), coco_format_config(str(tmp_path / "a") + "/")
  other = coco_format_config(str(tmp_path / "b"))
  assert first.name == again.name and first.name != other.name and first.name.startswith("a_")
  with pytest.raises(ValueError):
    tfds.builder("coco_format", data_dir=str(tmp_path))
  assert [split_of(name) for name in ("train2017", "val2014", "test-dev2015")] == ["train", "validation", "test"]
