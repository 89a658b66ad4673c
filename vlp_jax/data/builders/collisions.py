"""How often two images share a description: the ceiling it puts on text-image retrieval.

A `shapes` caption names every object's size, colour, shape and place, so two images whose
objects agree on all four are described by exactly the same set of possible captions; no
retrieval model can tell them apart from text.
"""
import collections
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

from vlp_jax.data.builders.vocabulary import GRID_SIZE

SceneDescription = frozenset[tuple[int, int, int, int]]


def scene_description(objects: Mapping[str, Sequence]) -> SceneDescription:
  """{(size, colour, shape, grid cell)} of a TFDS `objects` dict (bbox, label, colour, size)."""
  bboxes = np.asarray(objects["bbox"], dtype=np.float64).reshape(-1, 4)
  rows = np.clip(((bboxes[:, 0] + bboxes[:, 2]) / 2 * GRID_SIZE).astype(int), 0, GRID_SIZE - 1)
  columns = np.clip(((bboxes[:, 1] + bboxes[:, 3]) / 2 * GRID_SIZE).astype(int), 0, GRID_SIZE - 1)
  cells = rows * GRID_SIZE + columns
  return frozenset(zip(np.asarray(objects["size"]).tolist(), np.asarray(objects["colour"]).tolist(),
                       np.asarray(objects["label"]).tolist(), cells.tolist()))


def collision_fraction(descriptions: Sequence[Hashable]) -> float:
  """Share of items whose description equals another item's (0 for no items)."""
  if not descriptions:
    return 0.0
  counts = collections.Counter(descriptions)
  return sum(counts[d] > 1 for d in descriptions) / len(descriptions)


def description_collision_fraction(objects_per_image: Iterable[Mapping[str, Sequence]]) -> float:
  """Share of images whose scene description collides with another image's (see module doc)."""
  return collision_fraction([scene_description(objects) for objects in objects_per_image])
