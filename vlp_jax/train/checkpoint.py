"""Orbax checkpoints of the train state and the input position, one atomic step directory each.

Layout (`<workdir>/checkpoints/<step>/`, finalised by orbax with an atomic rename, so a
half-written step is never listed):
  params/        the params pytree (also what `restore_params` exports)
  model_state/   {"step": int32, "extra_state": ...}
  opt_state/     the optax state
  input/process_<i>_of_<n>/   each process's tf.data iterator position (when it has one)
Restoring takes an abstract target carrying the current shardings, so a checkpoint written
on one mesh / process count restores onto another.
"""
import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vlp_jax.train.state import TrainState

PyTree = Any
CHECKPOINT_SUBDIR = "checkpoints"


def input_state_dirname(process_index: int, process_count: int) -> str:
  return f"process_{process_index}_of_{process_count}"


class InputIteratorHandler(ocp.CheckpointHandler):
  """Saves / restores this process's input iterator (`save(dir)` / `restore(dir)`)."""

  def save(self, directory: epath.Path, args: "InputIteratorSave") -> None:
    target = epath.Path(directory) / input_state_dirname(jax.process_index(),
                                                         jax.process_count())
    args.iterator.save(os.fspath(target))

  def restore(self, directory: epath.Path, args: "InputIteratorRestore") -> bool:
    """Returns False (iterator untouched) when this process count saved no position."""
    source = epath.Path(directory) / input_state_dirname(jax.process_index(),
                                                         jax.process_count())
    if not source.exists():
      return False
    args.iterator.restore(os.fspath(source))
    return True


@ocp.args.register_with_handler(InputIteratorHandler, for_save=True)
@dataclasses.dataclass
class InputIteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(InputIteratorHandler, for_restore=True)
@dataclasses.dataclass
class InputIteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any


def _is_checkpointable(iterator: Any) -> bool:
  return hasattr(iterator, "save") and hasattr(iterator, "restore")


class Checkpointer:
  """Keep-N, optionally asynchronous checkpoints of `TrainState` + input position."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: TrainState, iterator: Any = None) -> None:
    """Starts saving `state` (and `iterator`'s position) as `step`; returns before the write
    of arrays completes when asynchronous."""
    items = dict(params=ocp.args.StandardSave(state.params),
                 model_state=ocp.args.StandardSave(_model_state(state)),
                 opt_state=ocp.args.StandardSave(state.opt_state))
    if iterator is not None and _is_checkpointable(iterator):
      items["input"] = InputIteratorSave(iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: TrainState, iterator: Any = None,
              step: int | None = None) -> tuple[TrainState, bool]:
    """(state in the shardings of `abstract_state`, whether the input position was restored)."""
    step = self.latest_step() if step is None else step
    items = dict(params=ocp.args.StandardRestore(abstract_state.params),
                 model_state=ocp.args.StandardRestore(_model_state(abstract_state)),
                 opt_state=ocp.args.StandardRestore(abstract_state.opt_state))
    has_input = "input" in self._item_names(step)
    if iterator is not None and _is_checkpointable(iterator) and has_input:
      items["input"] = InputIteratorRestore(iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    model_state = restored["model_state"]
    state = TrainState(step=model_state["step"], params=restored["params"],
                       opt_state=restored["opt_state"],
                       extra_state=model_state.get("extra_state", {}))
    input_restored = bool(restored["input"]) if "input" in items else False
    if iterator is not None and not input_restored:
      logging.warning("checkpoint %d holds no input position for process %d of %d: the input "
                      "pipeline starts afresh", step, jax.process_index(), jax.process_count())
    return state, input_restored

  def restore_model(self, abstract_params: PyTree, abstract_extra_state: PyTree,
                    step: int | None = None) -> tuple[PyTree, PyTree, int]:
    """(params, extra_state, step) only, e.g. for evaluation."""
    step = self.latest_step() if step is None else step
    abstract_model_state = {"step": jax.ShapeDtypeStruct((), np.int32),
                            "extra_state": abstract_extra_state}
    restored = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        model_state=ocp.args.StandardRestore(abstract_model_state)))
    return (restored["params"], restored["model_state"].get("extra_state", {}),
            int(restored["model_state"]["step"]))

  def _item_names(self, step: int) -> set[str]:
    return {path.name for path in epath.Path(self.directory, str(step)).iterdir()}

  def wait(self) -> None:
    """Blocks until every started save is finalised."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _model_state(state: TrainState) -> dict[str, Any]:
  return {"step": state.step, "extra_state": state.extra_state}


def restore_params(workdir: str, step: int | None = None) -> tuple[PyTree, int]:
  """Params-only export: (params as numpy arrays on the host, step) from a workdir's checkpoint.

  Needs no model code and works on any device count (used by the export CLI).
  """
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {workdir}/{CHECKPOINT_SUBDIR}")
  path = epath.Path(manager.directory, str(step), "params")
  metadata = ocp.PyTreeCheckpointHandler().metadata(path).tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.PyTreeRestore(restore_args=restore_args)))
  manager.close()
  return restored["params"], step
