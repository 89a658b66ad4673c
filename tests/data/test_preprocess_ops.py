"""Tests for vlp_jax.data.preprocess_ops: the op registry and box-aware image / text ops."""
import numpy as np
import pytest
import tensorflow as tf

from vlp_jax.data import preprocess_ops as ops
from vlp_jax.data.tokenizer import train_sentencepiece

HEIGHT, WIDTH = 64, 96
BOX_PIXELS = (10, 20, 30, 40)  # x1, y1, x2, y2 of the white rectangle


def _image_with_box() -> np.ndarray:
  image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
  x1, y1, x2, y2 = BOX_PIXELS
  image[y1:y2, x1:x2] = 255
  return image


def _example(image, seed: int = 0, **extra) -> dict[str, tf.Tensor]:
  x1, y1, x2, y2 = BOX_PIXELS
  box = [x1 / WIDTH, y1 / HEIGHT, x2 / WIDTH, y2 / HEIGHT]
  example = {
      "image": tf.convert_to_tensor(image),
      "boxes": tf.constant([box, [0.9, 0.9, 1.0, 1.0]], tf.float32),
      "labels": tf.constant([3, 5], tf.int64),
      "referring_object_index": tf.constant([1, 0], tf.int64),
      ops.SEED_KEY: tf.constant([seed, 7], tf.int64),
  }
  example.update({k: tf.constant(v) for k, v in extra.items()})
  return example


def _bright_extent(image: np.ndarray) -> tuple[int, int, int, int] | None:
  """(x1, y1, x2, y2) pixel extent of pixels brighter than mid-grey, None if none."""
  ys, xs = np.nonzero(np.asarray(image).mean(-1) > 127)
  if not len(xs):
    return None
  return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  captions = ["a red circle on the left", "a blue square on the right", "two green triangles"] * 10
  return train_sentencepiece(captions, vocab_size=48, output=str(tmp_path_factory.mktemp("sp") / "t.model"))


def test_parse_ops_arguments_and_errors():
  op = ops.parse_ops("value_range(0, 1)|value_range(vmin=-1, vmax=1, in_min=0, in_max=1)")
  image = op({"image": tf.constant([[[0, 255, 51]]], tf.uint8)})["image"].numpy()
  np.testing.assert_allclose(image, [[[-1.0, 1.0, -0.6]]], atol=1e-6)
  with pytest.raises(ValueError, match="unknown op"):
    ops.parse_ops("decode|no_such_op(3)")
  with pytest.raises(ValueError, match="cannot parse"):
    ops.parse_ops("decode|resize(224)+1")
  assert {"decode", "random_resized_crop", "flip_lr", "tokenize", "pad_objects"} <= set(ops.registered_ops())


def test_flip_moves_boxes_and_pixels():
  example = ops.parse_ops("flip_lr(prob=1.0)")(_example(_image_with_box()))
  box = example["boxes"].numpy()[0]
  x1, y1, x2, y2 = BOX_PIXELS
  np.testing.assert_allclose(box, [1 - x2 / WIDTH, y1 / HEIGHT, 1 - x1 / WIDTH, y2 / HEIGHT], atol=1e-6)
  assert _bright_extent(example["image"].numpy()) == (WIDTH - x2, y1, WIDTH - x1, y2)
  unflipped = ops.parse_ops("flip_lr(prob=0.0)")(_example(_image_with_box()))
  np.testing.assert_array_equal(unflipped["image"].numpy(), _image_with_box())


def test_flip_swaps_left_and_right_in_text():
  texts = {"text": "the circle left of the square is Right of the leftmost one, bright and upright.",
           "captions": ["left", "Right LEFT"], "questions": ["is it left or right?"],
           "answers": [["left"] * 10], "referring_expressions": ["the rightward shape"]}
  example = ops.parse_ops("flip_lr(1.0)")(_example(_image_with_box(), **texts))
  assert example["text"].numpy().decode() == (
      "the circle right of the square is Left of the rightmost one, bright and upright.")
  assert [c.decode() for c in example["captions"].numpy()] == ["right", "Left RIGHT"]
  assert example["questions"].numpy()[0].decode() == "is it right or left?"
  assert {a.decode() for a in example["answers"].numpy()[0]} == {"right"}
  assert example["referring_expressions"].numpy()[0].decode() == "the leftward shape"


def test_flip_is_random_per_seed():
  flips = [ops.parse_ops("flip_lr")(_example(_image_with_box(), seed=s))["boxes"].numpy()[0, 0] > 0.5
           for s in range(40)]
  assert 5 < sum(flips) < 35
  again = [ops.parse_ops("flip_lr")(_example(_image_with_box(), seed=s))["boxes"].numpy()[0, 0] > 0.5
           for s in range(40)]
  assert flips == again


def test_random_resized_crop_keeps_boxes_consistent_with_pixels():
  crop = ops.parse_ops("random_resized_crop(48, area_min=0.05)")
  kept = dropped = checked = 0
  for seed in range(60):
    example = crop(_example(_image_with_box(), seed=seed))
    image, boxes = example["image"].numpy(), example["boxes"].numpy()
    assert image.shape == (48, 48, 3) and image.dtype == np.float32
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert len(example["labels"].numpy()) == len(boxes)
    extent = _bright_extent(image)
    if 3 in example["labels"].numpy():
      kept += 1
      box = boxes[list(example["labels"].numpy()).index(3)] * 48
      if min(box[2] - box[0], box[3] - box[1]) >= 2:  # thinner slivers fade under bilinear resizing
        assert extent is not None
        np.testing.assert_allclose(extent, box, atol=1.5)
        checked += 1
    else:
      dropped += 1
      assert extent is None
  assert checked > 5 and dropped > 5


def test_crop_remaps_referring_indices():
  crop = ops.parse_ops("random_resized_crop(32, area_min=0.05)")
  for seed in range(40):
    example = crop(_example(_image_with_box(), seed=seed))
    labels = list(example["labels"].numpy())
    expected = [labels.index(label) if label in labels else -1 for label in (5, 3)]
    assert example["referring_object_index"].numpy().tolist() == expected


def test_fused_decode_crop_equals_decode_then_crop():
  jpeg = tf.io.encode_jpeg(_image_with_box(), quality=95)
  parsed = ops.parse_ops("decode|random_resized_crop(40)")
  fused = ops.parse_ops("decode_random_resized_crop(40)")
  unfused = ops.parse_ops("decode|resize(96)|random_resized_crop(40)")  # the resize stops the fusion
  for seed in range(5):
    a, b = parsed(_example(jpeg, seed=seed)), fused(_example(jpeg, seed=seed))
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    decoded = ops.parse_ops("decode")(_example(jpeg, seed=seed))
    c = ops.parse_ops("random_resized_crop(40)")(decoded)
    np.testing.assert_allclose(a["boxes"].numpy(), c["boxes"].numpy(), atol=1e-6)
    assert np.abs(a["image"].numpy() - c["image"].numpy()).mean() < 2.0
  assert unfused(_example(jpeg))["image"].shape == (40, 40, 3)


def test_normalize_presets():
  image = tf.fill([2, 2, 3], tf.constant(255, tf.uint8))
  out = ops.parse_ops("normalize('clip')")({"image": image})["image"].numpy()
  mean, std = ops.MEAN_STD_PRESETS["clip"]
  np.testing.assert_allclose(out[0, 0], (1 - np.array(mean)) / np.array(std), rtol=1e-5)
  out = ops.parse_ops("normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))")({"image": image})["image"].numpy()
  np.testing.assert_allclose(out, 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="preset"):
    ops.parse_ops("normalize('nope')")


def test_pick_caption_and_all_captions():
  captions = ["first", "second", "third"]
  picks = {ops.parse_ops("pick_caption")(_example(_image_with_box(), seed=s, captions=captions))["text"].numpy()
           for s in range(30)}
  assert picks == {c.encode() for c in captions}
  example = ops.parse_ops("all_captions(5)")(_example(_image_with_box(), captions=captions))
  assert example["text"].numpy().tolist() == [b"first", b"second", b"third", b"", b""]
  assert example["text_valid"].numpy().tolist() == [True, True, True, False, False]
  example = ops.parse_ops("all_captions(2)")(_example(_image_with_box(), captions=captions))
  assert example["text"].numpy().tolist() == [b"first", b"second"]


def test_tokenize_adds_specials_pads_and_truncates(tokenizer):
  context = ops.OpContext(tokenizer=tokenizer, max_text_length=8)
  text = "a red circle on the left"
  pieces = tokenizer.encode(text)
  example = ops.parse_ops("tokenize(32)", context)({"text": tf.constant(text)})
  ids, mask = example["text_ids"].numpy(), example["text_mask"].numpy()
  assert ids.dtype == np.int32 and ids.shape == (32,)
  assert ids[:len(pieces) + 2].tolist() == [tokenizer.cls_id, *pieces, tokenizer.sep_id]
  assert not ids[len(pieces) + 2:].any() and mask.tolist() == [1] * (len(pieces) + 2) + [0] * (30 - len(pieces))
  example = ops.parse_ops("tokenize(bos='dec', eos=None)", context)({"text": tf.constant([text, ""])})
  ids = example["text_ids"].numpy()
  assert ids.shape == (2, 8)
  assert ids[0].tolist() == [tokenizer.dec_id, *pieces[:7]]
  assert ids[1].tolist() == [tokenizer.dec_id] + [0] * 7
  assert example["text_mask"].numpy().sum(-1).tolist() == [8, 1]
  with pytest.raises(ValueError, match="tokenizer"):
    ops.parse_ops("tokenize(8)")


def test_pad_objects_formats():
  example = {"boxes": tf.constant([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4]]),
             "labels": tf.constant([1, 2, 3], tf.int64)}
  out = ops.parse_ops("pad_objects(4, box_format='cxcywh')")(example)
  np.testing.assert_allclose(out["boxes"].numpy()[:2], [[0.3, 0.4, 0.4, 0.4], [0.5, 0.5, 1.0, 1.0]], atol=1e-6)
  assert out["labels"].numpy().tolist() == [1, 2, 3, 0] and out["labels"].dtype == tf.int32
  assert out["box_valid"].numpy().tolist() == [True, True, True, False]
  out = ops.parse_ops("pad_objects(2)")(example)
  np.testing.assert_allclose(out["boxes"].numpy(), [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]])
  assert out["box_valid"].numpy().all()


def test_pad_objects_carries_colours_and_crops_drop_them_with_their_boxes():
  example = {"boxes": tf.constant([[0.0, 0.0, 0.2, 0.2], [0.6, 0.6, 1.0, 1.0]]),
             "labels": tf.constant([1, 2], tf.int64), "colours": tf.constant([4, 5], tf.int64)}
  out = ops.parse_ops("pad_objects(3)")(example)
  assert out["colours"].numpy().tolist() == [4, 5, -1] and out["colours"].dtype == tf.int32
  cropped = ops._crop_objects(example, tf.constant([10, 10]), tf.constant([5, 5]), tf.constant([5, 5]))
  assert cropped["labels"].numpy().tolist() == [2] and cropped["colours"].numpy().tolist() == [5]
