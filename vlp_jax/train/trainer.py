"""The one sharded trainer: any registered model family, any mesh, any number of processes.

`train(config, workdir)` validates the config, builds the mesh and the family's model,
initialises (or resumes) the sharded state and runs the jitted step until
`config.total_steps`, checkpointing, evaluating and logging on the way. SIGTERM / SIGINT
save a checkpoint (with the input position) and return `status="preempted"`; a non-finite
loss term raises `NonFiniteLossError` without saving the bad state.
"""
import dataclasses
import importlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from vlp_jax.models.registry import get_family
from vlp_jax.train import checkpoint as checkpoint_lib
from vlp_jax.train import evaluation
from vlp_jax.train import metrics as metrics_lib
from vlp_jax.train import optim
from vlp_jax.train import sharding as sharding_lib
from vlp_jax.train import state as state_lib
from vlp_jax.train import step as step_lib
from vlp_jax.train.config import check_param_patterns, validate_config

InputFn = Callable[..., Iterator[dict[str, np.ndarray]]]
# In-library synthetic sources: data.name -> (module, function), same signature as make_pipeline.
SYNTHETIC_SOURCES = {"toy_synthetic": ("vlp_jax.models.toy", "make_toy_pipeline")}


class NonFiniteLossError(RuntimeError):
  """A loss term became NaN/Inf; the message names the step and the term."""

  def __init__(self, step: int, term: str, values: dict[str, Any]):
    self.step, self.term = step, term
    super().__init__(f"non-finite {term}={values.get(term)} at step {step} "
                     f"(metrics: {values}); the state was not saved")


@dataclasses.dataclass
class TrainResult:
  step: int
  status: str  # "completed" | "preempted"
  metrics: dict[str, Any]
  eval_metrics: dict[str, float]


def default_input_fn(data_config: ml_collections.ConfigDict, *, split: str, train: bool,
                     global_batch_size: int, seed: int, process_index: int | None = None,
                     process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """`vlp_jax.data.pipeline.make_pipeline`, or an in-library synthetic source by name."""
  if data_config.name in SYNTHETIC_SOURCES:
    module, function = SYNTHETIC_SOURCES[data_config.name]
    make = getattr(importlib.import_module(module), function)
  else:
    make = importlib.import_module("vlp_jax.data.pipeline").make_pipeline
  return make(data_config, split=split, train=train, global_batch_size=global_batch_size,
              seed=seed, process_index=process_index, process_count=process_count)


class PreemptionSignal:
  """Turns SIGTERM / SIGINT into a flag checked between steps (handlers restored on exit)."""

  def __init__(self) -> None:
    self.received: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> "PreemptionSignal":
    try:
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    except ValueError:  # not the main thread: no handlers
      logging.warning("not in the main thread: SIGTERM/SIGINT will not save a checkpoint")
    return self

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    self.received = signum

  def __exit__(self, *exc: Any) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def any_process(self) -> bool:
    """Whether any process got a signal (a collective when there are several processes)."""
    local = self.received is not None
    if jax.process_count() == 1:
      return local
    flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
    return bool(np.any(flags))


def _configure_host() -> None:
  jax.config.update("jax_threefry_partitionable", True)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # TF must not take accelerator memory


def train(config: ml_collections.ConfigDict, workdir: str,
          input_fn: InputFn | None = None) -> TrainResult:
  """Trains (or resumes) `config` in `workdir`; see the module docstring.

  `input_fn` has the signature of `vlp_jax.data.pipeline.make_pipeline` (default:
  `default_input_fn`, looked up at call time).
  """
  input_fn = input_fn or default_input_fn
  _configure_host()
  mesh_shape = validate_config(config, num_devices=jax.device_count(),
                               process_count=jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  is_primary = jax.process_index() == 0
  if is_primary:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as stream:
      stream.write(config.to_json_best_effort(indent=2))

  model = get_family(config.model.family).build(config)
  mesh = sharding_lib.make_mesh(mesh_shape)
  rules = sharding_lib.logical_axis_rules(config.logical_axis_rules)
  tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))

  # Params are created and restored outside the global mesh: `out_shardings` place them,
  # and the step below runs under the mesh so activation constraints apply.
  with nn.logical_axis_rules(rules):
    abstract_state, shardings = state_lib.state_shardings(model, tx, mesh, rules)
    check_param_patterns(config.optimizer, [
        optim.param_path(path) for path, _ in jax.tree_util.tree_leaves_with_path(
            abstract_state.params)])
    make_train_input = lambda seed: input_fn(
        config.data, split=config.data.train_split, train=True,
        global_batch_size=config.global_batch_size, seed=seed)
    train_input = make_train_input(config.seed)
    checkpointer = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints,
                                               async_save=config.async_checkpoints)
    latest = checkpointer.latest_step()
    if latest is None:
      state = state_lib.init_train_state(model, tx, shardings, init_rng)
    else:
      state, input_restored = checkpointer.restore(abstract_state, train_input)
      if not input_restored:  # e.g. another process count: fresh order, not a replay
        train_input = make_train_input(config.seed + latest)
      logging.info("resumed from %s at step %d", checkpointer.directory, latest)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):  # activation constraints in the step
    train_step = step_lib.make_train_step(model.loss_fn, tx, schedule, shardings, mesh,
                                          config.optimizer.accumulation_steps)
    start_step = int(jax.device_get(state.step))
    writer = metrics_lib.MetricsWriter(workdir, total_steps=config.total_steps,
                                       start_step=start_step, is_primary=is_primary)
    try:
      with PreemptionSignal() as preemption:
        return _train_loop(config, model, state, train_step, train_rng, train_input, mesh,
                           checkpointer, writer, preemption, input_fn, start_step)
    finally:
      writer.close()
      checkpointer.close()


def _train_loop(config, model, state, train_step, train_rng, train_input, mesh, checkpointer,
                writer, preemption, input_fn, start_step) -> TrainResult:
  step = start_step
  timer = metrics_lib.WindowTimer()
  last_logged_step = start_step
  pending: tuple[int, Any] | None = None  # the latest step's metrics, still on device
  last_values: dict[str, Any] = {}
  eval_values: dict[str, float] = {}
  saved_step = checkpointer.latest_step()
  # Several processes agree on preemption through a collective, so only every log step.
  sync_every = 1 if jax.process_count() == 1 else config.log_every_steps

  def settle() -> None:
    """Fetches the pending step's metrics, stops on non-finite terms, logs when due."""
    nonlocal pending, last_values, last_logged_step
    if pending is None:
      return
    pending_step, device_metrics = pending
    pending = None
    host_metrics = jax.device_get(device_metrics)
    values = metrics_lib.to_python(host_metrics)
    bad_term = metrics_lib.first_non_finite(host_metrics)
    if bad_term is not None:
      raise NonFiniteLossError(pending_step, bad_term, values)
    last_values = values
    writer.advance(pending_step)
    if pending_step % config.log_every_steps == 0 or pending_step == config.total_steps:
      rates = timer.rates(pending_step - last_logged_step, config.global_batch_size)
      writer.write(pending_step, {**values, **rates})
      last_logged_step = pending_step
      timer.reset()

  def save(at_step: int) -> None:
    nonlocal saved_step
    settle()
    if saved_step != at_step:
      checkpointer.save(at_step, state, train_input)
      saved_step = at_step

  def evaluate(at_step: int) -> dict[str, float]:
    nonlocal last_logged_step
    settle()
    results = evaluation.run_evaluators(model, config, state.params, state.extra_state, mesh,
                                        input_fn)
    if results:
      writer.write(at_step, results)
    timer.reset()  # evaluation time is not training time
    last_logged_step = at_step
    return results

  while step < config.total_steps:
    if (step - start_step) % sync_every == 0 or step % config.checkpoint_every_steps == 0:
      if preemption.any_process():
        save(step)
        checkpointer.wait()
        logging.warning("preempted at step %d: checkpoint saved", step)
        return TrainResult(step=step, status="preempted", metrics=last_values,
                           eval_metrics=eval_values)
    input_start = time.perf_counter()
    batch = sharding_lib.global_batch(next(train_input), mesh)
    timer.add_input_wait(time.perf_counter() - input_start)
    state, device_metrics = train_step(state, batch, train_rng)
    step += 1
    settle()  # the previous step's metrics: one step of lag keeps the device busy
    pending = (step, device_metrics)
    if step % config.checkpoint_every_steps == 0:
      save(step)
    if config.eval_every_steps and step % config.eval_every_steps == 0 and (
        step != config.total_steps):
      eval_values = evaluate(step)

  settle()
  save(step)
  eval_values = evaluate(step)
  checkpointer.wait()
  return TrainResult(step=step, status="completed", metrics=last_values,
                     eval_metrics=eval_values)


def result_summary(result: TrainResult) -> str:
  return json.dumps({"step": result.step, "status": result.status,
                     **metrics_lib.to_python({**result.metrics, **result.eval_metrics})})
