"""The TFDS features every image-text builder yields (shapes, coco_format, ...).

One schema for all sources lets the same configs and pipelines run on the synthetic
`shapes` set and on real data. Fields a source does not have are left empty (empty
sequences) or set to -1 (unknown attribute ids).
"""
from collections.abc import Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

QUESTION_TYPES = ("colour", "shape", "count", "exists", "spatial")
NUM_ANSWERS_PER_QUESTION = 10


def image_text_features(label_names: Sequence[str], image_size: int | None = None) -> tfds.features.FeaturesDict:
  """Returns the feature spec.

  Args:
    label_names: object class names (`objects/label` is a ClassLabel over them).
    image_size: fixed square size in pixels, or None for variable-size images.

  Features:
    image: uint8 [H, W, 3], stored JPEG-encoded.
    image_id: int64.
    captions: Text [num_captions].
    objects: sequence of {bbox: TFDS BBox (ymin, xmin, ymax, xmax) normalised to [0, 1],
      label: ClassLabel, colour: int64 (-1 unknown), size: int64 (-1 unknown)}.
    questions: sequence of {question: Text, answers: Text [10], type: Text (QUESTION_TYPES)}.
    referring: sequence of {expression: Text, object_index: int64 (index into objects)}.
  """
  shape = (image_size, image_size, 3) if image_size else (None, None, 3)
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=shape, encoding_format="jpeg"),
      "image_id": tf.int64,
      "captions": tfds.features.Sequence(tfds.features.Text()),
      "objects": tfds.features.Sequence({
          "bbox": tfds.features.BBoxFeature(),
          "label": tfds.features.ClassLabel(names=list(label_names)),
          "colour": tf.int64,
          "size": tf.int64,
      }),
      "questions": tfds.features.Sequence({
          "question": tfds.features.Text(),
          # A fixed-length Tensor, not a nested Sequence(length=10): TFDS 4.9 cannot decode the latter.
          "answers": tfds.features.Tensor(shape=(NUM_ANSWERS_PER_QUESTION,), dtype=tf.string),
          "type": tfds.features.Text(),
      }),
      "referring": tfds.features.Sequence({
          "expression": tfds.features.Text(),
          "object_index": tf.int64,
      }),
  })
