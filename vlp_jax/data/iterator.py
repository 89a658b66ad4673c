"""A tf.data iterator that yields numpy batches and can save and restore its position."""
import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

_CHECKPOINT_PREFIX = "input"


class CheckpointableIterator(Iterator[dict[str, np.ndarray]]):
  """Iterates a `tf.data.Dataset` of dicts as numpy, resumable through `save`/`restore`.

  The dataset must use in-graph ops only (no `tf.py_function`), so that its iterator
  state (shuffle buffers, positions, random seeds) can be checkpointed by TensorFlow.
  """

  def __init__(self, dataset: tf.data.Dataset):
    self.element_spec = dataset.element_spec
    self._iterator = iter(dataset)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

  def __next__(self) -> dict[str, np.ndarray]:
    """The next element as read-only numpy views of TensorFlow's buffers (no copy)."""
    return tf.nest.map_structure(np.asarray, next(self._iterator))

  def save(self, directory: str) -> None:
    """Writes the iterator position under `directory` (created if missing)."""
    tf.io.gfile.makedirs(directory)
    self._checkpoint.write(os.path.join(directory, _CHECKPOINT_PREFIX))

  def restore(self, directory: str) -> None:
    """Restores a position written by `save` (from an iterator over the same pipeline)."""
    self._checkpoint.read(os.path.join(directory, _CHECKPOINT_PREFIX)).assert_consumed()

