"""Tests for vlp_jax.data.pipeline on a tiny `shapes` build and on hand-made bad sources."""
import os
import re

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import vlp_jax.data.builders  # noqa: F401  (registers `shapes`)
from vlp_jax.data import pipeline
from vlp_jax.data.tokenizer import dataset_captions, load_tokenizer, train_sentencepiece

TRAIN_OPS = "decode|random_resized_crop(48)|flip_lr|value_range(-1,1)|pick_caption|tokenize|pad_objects(6)"
EVAL_OPS = "decode|resize(48)|value_range(-1,1)|all_captions(5)|tokenize|pad_objects(6)"


@pytest.fixture(scope="module")
def shapes_name(shapes_data_dir) -> str:
  root = os.path.join(shapes_data_dir, "shapes")
  (config,) = [name for name in os.listdir(root) if not name.startswith(".")]
  return f"shapes/{config}"


@pytest.fixture(scope="module")
def tokenizer_path(shapes_data_dir, shapes_name, tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("tokenizer") / "shapes.model")
  train_sentencepiece(dataset_captions(shapes_name, shapes_data_dir), vocab_size=200, output=path)
  return path


@pytest.fixture()
def data_config(shapes_data_dir, shapes_name, tokenizer_path) -> dict:
  return {"name": shapes_name, "data_dir": shapes_data_dir, "tokenizer": tokenizer_path, "max_text_length": 24,
          "preprocess": TRAIN_OPS, "preprocess_eval": EVAL_OPS, "shuffle_buffer": 64}


def _split_ids(shapes_data_dir: str, shapes_name: str, split: str) -> list[int]:
  dataset = tfds.load(shapes_name, split=split, data_dir=shapes_data_dir,
                      decoders={"image": tfds.decode.SkipDecoding()})
  return [int(ex["image_id"]) for ex in dataset.as_numpy_iterator()]


def _take(iterator, count: int) -> list[dict[str, np.ndarray]]:
  return [next(iterator) for _ in range(count)]


def _assert_batches_equal(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_train_batch_shapes_and_dtypes(data_config):
  iterator = pipeline.make_pipeline(data_config, split="train", train=True, global_batch_size=16, seed=0,
                                    process_index=0, process_count=1)
  batch = next(iterator)
  expected = {"image": ((16, 48, 48, 3), np.float32), "image_id": ((16,), np.int64),
              "text_ids": ((16, 24), np.int32), "text_mask": ((16, 24), np.int32),
              "boxes": ((16, 6, 4), np.float32), "labels": ((16, 6), np.int32), "box_valid": ((16, 6), bool),
              "colours": ((16, 6), np.int32)}
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
  assert batch["image"].min() >= -1 and batch["image"].max() <= 1
  assert (batch["text_ids"][:, 0] == load_tokenizer(data_config["tokenizer"]).cls_id).all()
  boxes, valid = batch["boxes"], batch["box_valid"]
  assert np.all((boxes[valid] >= 0) & (boxes[valid] <= 1)) and not boxes[~valid].any()
  assert np.all(boxes[valid][:, 2:] > boxes[valid][:, :2])
  assert iterator.num_skipped == 0


def test_global_batch_must_divide(data_config):
  with pytest.raises(ValueError, match="divisible"):
    pipeline.make_pipeline(data_config, split="train", train=True, global_batch_size=15, seed=0,
                           process_index=0, process_count=2)


def test_train_is_deterministic_for_a_seed(data_config):
  def batches(seed):
    return _take(pipeline.make_pipeline(data_config, split="train", train=True, global_batch_size=32, seed=seed,
                                        process_index=0, process_count=1), 10)  # 320 > 256: crosses an epoch
  first, second = batches(3), batches(3)
  _assert_batches_equal(first, second)
  assert not np.array_equal(first[0]["image_id"], batches(4)[0]["image_id"])
  ids = np.concatenate([b["image_id"] for b in first])
  epoch1, epoch2 = ids[:256], ids[256:]
  assert len(set(epoch1)) == 256
  assert not np.array_equal(epoch1[:len(epoch2)], epoch2)  # reshuffled


def test_processes_see_disjoint_parts_covering_the_split(data_config, shapes_data_dir, shapes_name):
  eval_ids, train_ids = [], []
  for process_index in (0, 1):
    iterator = pipeline.make_pipeline(data_config, split="validation", train=False, global_batch_size=20, seed=0,
                                      process_index=process_index, process_count=2)
    batches = list(iterator)
    assert len(batches) == 4  # ceil(32 / 10) on both processes
    eval_ids.append([i for b in batches for i in b["image_id"][b["mask"]]])
    train = pipeline.make_pipeline(data_config, split="train", train=True, global_batch_size=32, seed=0,
                                   process_index=process_index, process_count=2)
    train_ids.append({i for b in _take(train, 8) for i in b["image_id"]})  # 8 * 16 = one epoch of 128
  assert not set(eval_ids[0]) & set(eval_ids[1])
  assert sorted(eval_ids[0] + eval_ids[1]) == sorted(_split_ids(shapes_data_dir, shapes_name, "validation"))
  assert len(train_ids[0]) == len(train_ids[1]) == 128 and not train_ids[0] & train_ids[1]
  assert train_ids[0] | train_ids[1] == set(_split_ids(shapes_data_dir, shapes_name, "train"))


def test_eval_pads_last_batch_with_mask(data_config, shapes_data_dir, shapes_name):
  iterator = pipeline.make_pipeline(data_config, split="validation", train=False, global_batch_size=24, seed=0,
                                    process_index=0, process_count=1)
  batches = list(iterator)
  assert [b["mask"].sum() for b in batches] == [24, 24, 16]
  last = batches[-1]
  assert not last["image"][16:].any() and not last["text_mask"][16:].any()
  assert batches[0]["text_ids"].shape == (24, 5, 24) and batches[0]["text_valid"].shape == (24, 5)
  ids = [i for b in batches for i in b["image_id"][b["mask"]]]
  assert ids == _split_ids(shapes_data_dir, shapes_name, "validation")  # file order, each example once
  assert iterator.skipped == {"undecodable": 0, "no_caption": 0}


def _swap(text: str) -> str:
  return re.sub(r"\b(left|right)", lambda m: {"left": "right", "right": "left"}[m.group(1)], text)


def test_flip_in_pipeline_mirrors_boxes_and_swaps_caption_words(data_config, shapes_data_dir, shapes_name):
  plain = dict(data_config, preprocess_eval="decode|resize(48)|all_captions(5)|tokenize|pad_objects(6)")
  flipped = dict(data_config, preprocess_eval="decode|resize(48)|flip_lr(1.0)|all_captions(5)|tokenize|pad_objects(6)")
  make = lambda config: next(pipeline.make_pipeline(config, split="validation", train=False, global_batch_size=64,
                                                    seed=0, process_index=0, process_count=1))
  a, b = make(plain), make(flipped)
  np.testing.assert_array_equal(a["image"][:, :, ::-1], b["image"])
  valid = a["box_valid"]
  np.testing.assert_allclose(b["boxes"][valid], np.stack([1 - a["boxes"][valid][:, 2], a["boxes"][valid][:, 1],
                                                          1 - a["boxes"][valid][:, 0], a["boxes"][valid][:, 3]], -1))
  left_boxes = a["boxes"][valid][:, 2] < 0.5
  assert left_boxes.any() and (b["boxes"][valid][left_boxes][:, 0] > 0.5).all()

  tokenizer = load_tokenizer(data_config["tokenizer"])
  source = tfds.load(shapes_name, split="validation", data_dir=shapes_data_dir,
                     decoders={"image": tfds.decode.SkipDecoding()})
  swapped_any = False
  for row, example in enumerate(source.take(64).as_numpy_iterator()):
    for k, caption in enumerate(example["captions"][:5]):
      caption = caption.decode()
      expected = [tokenizer.cls_id] + tokenizer.encode(_swap(caption))[:22] + [tokenizer.sep_id]
      assert b["text_ids"][row, k, :len(expected)].tolist() == expected
      swapped_any |= _swap(caption) != caption
  assert swapped_any


@pytest.mark.parametrize("train", [True, False])
def test_save_and_restore_resumes_the_same_batches(data_config, tmp_path, train):
  def make():
    return pipeline.make_pipeline(data_config, split="train" if train else "validation", train=train,
                                  global_batch_size=16, seed=1, process_index=0, process_count=1)
  iterator = make()
  _take(iterator, 2)
  iterator.save(str(tmp_path / "input"))
  expected = _take(iterator, 2)
  resumed = make()
  resumed.restore(str(tmp_path / "input"))
  _assert_batches_equal(_take(resumed, 2), expected)


def _jpeg(seed: int) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 255, (32, 40, 3), dtype=np.uint8)
  return tf.io.encode_jpeg(pixels).numpy()


def _bad_source() -> tuple[tf.data.Dataset, list[int]]:
  """10 examples: #2 not a JPEG, #5 no caption (only blanks), #9 a truncated JPEG. Returns good ids."""
  images = [_jpeg(i) for i in range(10)]
  images[2] = b"definitely not a jpeg"
  images[9] = images[9][:len(images[9]) // 2]
  captions = [[f"caption {i} on the left", f"second {i}"] for i in range(10)]
  captions[5] = ["", "   "]
  bboxes = [[[0.1, 0.2, 0.5, 0.6]]] * 10
  source = tf.data.Dataset.from_tensor_slices({
      "image": tf.constant(images),
      "image_id": tf.range(10, dtype=tf.int64),
      "captions": tf.constant(captions),
      "objects": {"bbox": tf.constant(bboxes, tf.float32), "label": tf.zeros([10, 1], tf.int64)},
  })
  return source, [i for i in range(10) if i not in (2, 5, 9)]


@pytest.mark.parametrize("batch_size", [3, 7])
def test_bad_records_are_skipped_and_counted_in_eval(data_config, batch_size):
  source, good_ids = _bad_source()
  dataset = pipeline.build_dataset(source, data_config, train=False, batch_size=batch_size, seed=0)
  iterator = pipeline.InputIterator(dataset, num_source_examples=10)
  batches = list(iterator)
  assert [i for b in batches for i in b["image_id"][b["mask"]]] == good_ids
  # 8 slots reach the batcher (7 good + the caption-less one, masked out), padded to full batches.
  assert sum(len(b["mask"]) for b in batches) == -(-8 // batch_size) * batch_size
  assert iterator.skipped == {"undecodable": 2, "no_caption": 1}


def test_bad_records_are_skipped_and_counted_in_training(data_config):
  source, good_ids = _bad_source()
  config = dict(data_config, shuffle_buffer=1)  # keep the source order: counts are exact per epoch
  iterator = pipeline.InputIterator(pipeline.build_dataset(source, config, train=True, batch_size=7, seed=0))
  first = next(iterator)
  assert sorted(first["image_id"].tolist()) == good_ids
  assert iterator.skipped == {"undecodable": 1, "no_caption": 1}  # #9 is not reached before the last good one
  next(iterator)
  assert iterator.skipped == {"undecodable": 3, "no_caption": 2}


def test_variable_size_image_is_rejected(data_config):
  config = dict(data_config, preprocess_eval="decode|value_range(0,1)")
  with pytest.raises(ValueError, match="variable shape"):
    pipeline.make_pipeline(config, split="validation", train=False, global_batch_size=8, seed=0,
                           process_index=0, process_count=1)


def test_trailing_batchable_ops_run_per_batch_with_the_same_result(data_config):
  per_example = "decode|random_resized_crop(48)|pick_caption|flip_lr|value_range(-1,1)|tokenize|pad_objects(6)"
  per_batch = "decode|random_resized_crop(48)|pick_caption|flip_lr|pad_objects(6)|value_range(-1,1)|tokenize"
  def batches(spec):
    return _take(pipeline.make_pipeline(dict(data_config, preprocess=spec), split="train", train=True,
                                        global_batch_size=16, seed=5, process_index=0, process_count=1), 2)
  _assert_batches_equal(batches(per_example), batches(per_batch))


def test_accepts_a_config_dict_with_lists(data_config):
  config = ml_collections.ConfigDict(dict(data_config, source_features=["captions"], preprocess=(
      "decode|random_resized_crop(32)|pick_caption|flip_lr|value_range(-1,1)|tokenize")))
  batch = next(pipeline.make_pipeline(config, split="train", train=True, global_batch_size=8, seed=0,
                                      process_index=0, process_count=1))
  assert set(batch) == {"image", "image_id", "text_ids", "text_mask"}
  assert batch["image"].shape == (8, 32, 32, 3)
