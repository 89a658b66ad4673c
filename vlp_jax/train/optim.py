"""AdamW, warm-up + cosine/linear/constant schedules, clipping, decay masks, lr groups, freezing.

Param paths are '/'-joined dict keys (`block_0/Dense_0/kernel`); `lr_multipliers` and
`frozen_regex` match them with `re.search`. Gradient accumulation is not an optax wrapper:
the train step scans over micro-batches (`vlp_jax.train.step`), which keeps micro-batches
sharded like the full batch and the optimiser state free of accumulators.
"""
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any
Schedule = Callable[[jax.Array | int], jax.Array]


def param_path(path: tuple[Any, ...]) -> str:
  """'/'-joined names of a `jax.tree_util` key path."""
  parts = []
  for key in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def make_schedule(optimizer: ml_collections.ConfigDict, total_steps: int) -> Schedule:
  """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then cosine/linear/constant
  decay to `learning_rate * end_learning_rate_factor` at `total_steps`."""
  peak = float(optimizer.learning_rate)
  end = peak * float(optimizer.end_learning_rate_factor)
  warmup = int(optimizer.warmup_steps)
  decay_steps = max(total_steps - warmup, 1)
  kind = optimizer.schedule

  def schedule(step: jax.Array | int) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    if kind == "cosine":
      decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    elif kind == "linear":
      decayed = peak + (end - peak) * progress
    elif kind == "constant":
      decayed = jnp.full_like(progress, peak)
    else:
      raise ValueError(f"unknown schedule {kind!r}")
    if warmup == 0:
      return decayed
    return jnp.where(step < warmup, peak * step / warmup, decayed)

  return schedule


def decay_mask(params: PyTree, no_decay_regex: str = "") -> PyTree:
  """True where weight decay applies: ndim > 1 (not biases / norm scales) and path not excluded."""
  def decays(path: tuple[Any, ...], leaf: Any) -> bool:
    if jnp.ndim(leaf) <= 1:
      return False
    return not (no_decay_regex and re.search(no_decay_regex, param_path(path)))
  return jax.tree_util.tree_map_with_path(decays, params)


def lr_multiplier(path: str, multipliers: tuple[tuple[str, float], ...]) -> float:
  """The multiplier of the first regex matching `path` (1.0 when none does)."""
  for pattern, multiplier in multipliers:
    if re.search(pattern, path):
      return float(multiplier)
  return 1.0


class _EmptyState(NamedTuple):
  pass


def scale_by_path_multipliers(multipliers: tuple[tuple[str, float], ...]
                              ) -> optax.GradientTransformation:
  """Multiplies each update by `lr_multiplier(path)` (per-parameter-group learning rates)."""
  def init(params: PyTree) -> _EmptyState:
    del params
    return _EmptyState()

  def update(updates: PyTree, state: _EmptyState, params: PyTree = None
             ) -> tuple[PyTree, _EmptyState]:
    del params
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, u: u * lr_multiplier(param_path(path), multipliers), updates)
    return scaled, state

  return optax.GradientTransformation(init, update)


def trainable_labels(params: PyTree, frozen_regex: str) -> PyTree:
  """'frozen' for params whose path matches `frozen_regex`, else 'trained'."""
  def label(path: tuple[Any, ...], _: Any) -> str:
    return "frozen" if frozen_regex and re.search(frozen_regex, param_path(path)) else "trained"
  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(optimizer: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, Schedule]:
  """The optax transformation for `config.optimizer` and its learning-rate schedule.

  Order: clip by global norm (over trained params) -> Adam moments -> decoupled weight decay
  (masked by `decay_mask`) -> -lr(step) -> per-group multipliers. Frozen params get zero
  updates and no optimiser state.
  """
  schedule = make_schedule(optimizer, total_steps)
  multipliers = tuple((str(p), float(m)) for p, m in optimizer.lr_multipliers)
  no_decay_regex = optimizer.no_decay_regex
  parts = []
  if optimizer.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optimizer.grad_clip_norm))
  parts.append(optax.scale_by_adam(b1=optimizer.b1, b2=optimizer.b2, eps=optimizer.eps))
  if optimizer.weight_decay > 0:
    parts.append(optax.add_decayed_weights(
        optimizer.weight_decay, mask=lambda params: decay_mask(params, no_decay_regex)))
  parts.append(optax.scale_by_learning_rate(schedule))
  if multipliers:
    parts.append(scale_by_path_multipliers(multipliers))
  trained = optax.chain(*parts)
  if not optimizer.frozen_regex:
    return trained, schedule
  frozen_regex = optimizer.frozen_regex
  transform = optax.multi_transform(
      {"trained": trained, "frozen": optax.set_to_zero()},
      lambda params: trainable_labels(params, frozen_regex))
  return transform, schedule
