"""NaN guard: a non-finite loss term stops the run naming step and term; good checkpoints stay."""
import jax
import numpy as np
import pytest

from train_testing import tiny_toy_config
from vlp_jax.models import toy
from vlp_jax.train import checkpoint as checkpoint_lib
from vlp_jax.train import trainer

BAD_BATCH = 8  # the 8th training batch (step 8) carries out-of-range labels -> NaN CE


class CorruptLabelsAt:
  """Wraps a training iterator; batch number `index` gets labels no class has."""

  def __init__(self, iterator, index: int, num_classes: int):
    self.iterator, self.index, self.num_classes, self.seen = iterator, index, num_classes, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.iterator)
    self.seen += 1
    if self.seen == self.index:
      batch = {**batch, "label": np.full_like(batch["label"], self.num_classes + 3)}
    return batch

  def save(self, directory):
    self.iterator.save(directory)

  def restore(self, directory):
    self.iterator.restore(directory)


def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_toy_config(total_steps=20, checkpoint_every_steps=5)

  def input_fn(*args, **kwargs):
    iterator = trainer.default_input_fn(*args, **kwargs)
    return CorruptLabelsAt(iterator, BAD_BATCH, config.data.num_classes) if kwargs["train"] \
        else iterator

  with pytest.raises(trainer.NonFiniteLossError) as error:
    trainer.train(config, str(tmp_path), input_fn=input_fn)
  assert error.value.step == BAD_BATCH and error.value.term == "cross_entropy"
  assert f"non-finite cross_entropy=nan at step {BAD_BATCH}" in str(error.value)

  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path))
  assert checkpointer.all_steps() == [5]
  checkpointer.close()
  params, step = checkpoint_lib.restore_params(str(tmp_path))
  assert step == 5
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))
  assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(
      toy.nn.meta.unbox(jax.eval_shape(toy.build(config).init, jax.random.key(0))[0])))

  # The run resumes from the good checkpoint (the input position of step 5) and finishes.
  result = trainer.train(config, str(tmp_path))
  assert result.status == "completed" and result.step == 20
  assert np.isfinite(result.metrics["loss"])
