"""One `shapes` example as a dict of the `image_text_features` spec, from (seed, split, index)."""
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vlp_jax.data.builders.captions import captions
from vlp_jax.data.builders.questions import annotator_answers, questions
from vlp_jax.data.builders.references import referring_expressions
from vlp_jax.data.builders.scenes import draw_scene, encode_jpeg, sample_scene

SPLIT_CODES = {"train": 1, "validation": 2, "test": 3}
_IMAGE_ID_STRIDE = 1_000_000_000  # image_id = split code * stride + index
CAPTIONS_PER_IMAGE = 5


def image_id(split: str, index: int) -> int:
  """Unique across splits: 1_000_000_007 is train example 7, 3_000_000_000 the first test one."""
  if not 0 <= index < _IMAGE_ID_STRIDE:
    raise ValueError(f"index {index} out of range")
  return SPLIT_CODES[split] * _IMAGE_ID_STRIDE + index


def example_streams(seed: int, split: str, index: int) -> list[np.random.Generator]:
  """Independent random streams (scene, pixels, captions, questions) for one example."""
  sequence = np.random.SeedSequence([seed, SPLIT_CODES[split], index])
  return [np.random.default_rng(child) for child in sequence.spawn(4)]


def make_example(seed: int, split: str, index: int, image_size: int) -> dict[str, Any]:
  """The example for (seed, split, index); the same arguments always give the same bytes."""
  scene_rng, pixel_rng, caption_rng, question_rng = example_streams(seed, split, index)
  objects = sample_scene(scene_rng)
  image = encode_jpeg(draw_scene(objects, image_size, pixel_rng))
  asked = questions(objects, question_rng)
  return {
      "image": image,
      "image_id": image_id(split, index),
      "captions": captions(objects, caption_rng, CAPTIONS_PER_IMAGE),
      "objects": [{"bbox": tfds.features.BBox(*obj.bbox), "label": obj.shape, "colour": obj.colour,
                   "size": obj.size} for obj in objects],
      "questions": [{"question": q.question, "answers": annotator_answers(q, question_rng), "type": q.type}
                    for q in asked],
      "referring": [{"expression": text, "object_index": index_} for text, index_ in referring_expressions(objects)],
  }
