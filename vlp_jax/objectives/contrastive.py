"""Image-text contrastive loss (ITC) with momentum distillation and feature queues, as in BLIP.

With image features `v`, text features `t` (L2-normalised projections of the [CLS] outputs),
their momentum-encoder counterparts `v_m`, `t_m`, and queues `Q_v`, `Q_t` of past momentum
features (size Kq):

  sim_i2t   = v   @ [t_m ; Q_t]^T / temp        sim_t2i   = t   @ [v_m ; Q_v]^T / temp
  sim_i2t_m = v_m @ [t_m ; Q_t]^T / temp        sim_t2i_m = t_m @ [v_m ; Q_v]^T / temp
  targets_i2t = alpha * softmax(sim_i2t_m) + (1 - alpha) * positives      (likewise t2i)
  loss = (CE(sim_i2t, targets_i2t) + CE(sim_t2i, targets_t2i)) / 2

`positives` is the in-batch diagonal (pretraining). When `image_ids` are given (BLIP's
retrieval finetuning), every column whose image id equals the row's, queue included, is a
positive, and the positive mass is spread evenly over them. Targets and momentum features
carry no gradient.

State (kept by the trainer in `extra_state`, updated by pure functions here):
- `FeatureQueue`: queues stored row-major `[Kq, D]` (BLIP stores `[D, Kq]`), the image ids
  of the queued pairs and the write pointer. `enqueue` overwrites `B` rows at the pointer and
  advances it modulo Kq; Kq must be a multiple of the (global) batch.
- `ema_update`: momentum params `m * p_m + (1 - m) * p` over any pytree (BLIP: m = 0.995).
  BLIP updates the momentum encoders *before* their forward pass in each step.

Distribution: BLIP all-gathers momentum features across GPUs before the loss and the queue
update. Under `jax.jit` with sharded inputs the arrays here are already the global batch
(jit has a global view and inserts the collectives), so no gather appears in this code; the
queue holds global batches and stays replicated (or sharded along Kq) by the trainer's rules.

Temperature: a learnable scalar (init 0.07). BLIP clamps the stored parameter to
[0.001, 0.5] in place at the start of each forward; here `clamp_temperature` clamps in the
forward with a straight-through gradient (identity), so an update that pushes the raw value
past a bound still gets gradients to come back instead of freezing at the bound.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

PyTree = object
TEMPERATURE_INIT = 0.07
TEMPERATURE_MIN = 0.001
TEMPERATURE_MAX = 0.5
EMPTY_ID = -1


class FeatureQueue(NamedTuple):
  """image_features, text_features [Kq, D] float32; image_ids [Kq] int32; pointer [] int32."""
  image_features: jax.Array
  text_features: jax.Array
  image_ids: jax.Array
  pointer: jax.Array


class ContrastiveOutput(NamedTuple):
  """loss []; sim_i2t, sim_t2i [B, B + Kq] (online features against [momentum batch; queue],
  divided by the clamped temperature; BLIP samples ITM hard negatives from their [:, :B])."""
  loss: jax.Array
  sim_i2t: jax.Array
  sim_t2i: jax.Array


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) over the last axis, in float32 (torch's F.normalize). [..., D]."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def init_feature_queue(rng: jax.Array, queue_size: int, dim: int) -> FeatureQueue:
  """Random unit vectors (as BLIP initialises its queues), ids EMPTY_ID, pointer 0."""
  image_rng, text_rng = jax.random.split(rng)
  return FeatureQueue(
      image_features=l2_normalize(jax.random.normal(image_rng, (queue_size, dim))),
      text_features=l2_normalize(jax.random.normal(text_rng, (queue_size, dim))),
      image_ids=jnp.full((queue_size,), EMPTY_ID, jnp.int32),
      pointer=jnp.zeros((), jnp.int32))


def clamp_temperature(temperature: jax.Array) -> jax.Array:
  """Clamps to [0.001, 0.5] in the forward; the gradient passes straight through."""
  clamped = jax.lax.stop_gradient(jnp.clip(temperature, TEMPERATURE_MIN, TEMPERATURE_MAX))
  return clamped + (temperature - jax.lax.stop_gradient(temperature))


def ramped_alpha(step: jax.Array, alpha: float, ramp_steps: int) -> jax.Array:
  """alpha * min(1, step / ramp_steps) (BLIP ramps over the first epoch); alpha if ramp_steps<=0."""
  if ramp_steps <= 0:
    return jnp.asarray(alpha, jnp.float32)
  return alpha * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / ramp_steps)


def _positive_targets(batch_size: int, queue_size: int,
                      image_ids: jax.Array | None, queue_ids: jax.Array) -> jax.Array:
  """[B, B + Kq] rows summing to one over the positive columns."""
  if image_ids is None:
    return jnp.eye(batch_size, batch_size + queue_size, dtype=jnp.float32)
  all_ids = jnp.concatenate([image_ids.astype(jnp.int32), queue_ids])
  positives = (image_ids[:, None] == all_ids[None, :]).astype(jnp.float32)
  return positives / jnp.sum(positives, axis=1, keepdims=True)


def _soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """mean over rows of -sum(targets * log_softmax(logits)). [N, C] -> []."""
  return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def image_text_contrastive_loss(image_features: jax.Array, text_features: jax.Array,
                                image_features_m: jax.Array, text_features_m: jax.Array,
                                queue: FeatureQueue, temperature: jax.Array, alpha: jax.Array,
                                image_ids: jax.Array | None = None) -> ContrastiveOutput:
  """BLIP's ITC over normalised features [B, D] (online) and [B, D] (momentum).

  `temperature` is the raw learnable scalar (clamped here); `alpha` the (ramped) distillation
  weight; `image_ids` [B] optional (see the module docstring).
  """
  temp = clamp_temperature(temperature.astype(jnp.float32))
  image_features_m = jax.lax.stop_gradient(image_features_m.astype(jnp.float32))
  text_features_m = jax.lax.stop_gradient(text_features_m.astype(jnp.float32))
  image_bank = jnp.concatenate([image_features_m, queue.image_features], axis=0)
  text_bank = jnp.concatenate([text_features_m, queue.text_features], axis=0)

  sim_i2t = image_features.astype(jnp.float32) @ text_bank.T / temp
  sim_t2i = text_features.astype(jnp.float32) @ image_bank.T / temp

  temp_m = jax.lax.stop_gradient(temp)
  sim_i2t_m = image_features_m @ text_bank.T / temp_m
  sim_t2i_m = text_features_m @ image_bank.T / temp_m
  positives = _positive_targets(image_features.shape[0], queue.image_features.shape[0],
                                image_ids, queue.image_ids)
  targets_i2t = jax.lax.stop_gradient(alpha * jax.nn.softmax(sim_i2t_m) + (1 - alpha) * positives)
  targets_t2i = jax.lax.stop_gradient(alpha * jax.nn.softmax(sim_t2i_m) + (1 - alpha) * positives)

  loss = (_soft_cross_entropy(sim_i2t, targets_i2t) + _soft_cross_entropy(sim_t2i, targets_t2i)) / 2
  return ContrastiveOutput(loss=loss, sim_i2t=sim_i2t, sim_t2i=sim_t2i)


def enqueue(queue: FeatureQueue, image_features_m: jax.Array, text_features_m: jax.Array,
            image_ids: jax.Array | None = None) -> FeatureQueue:
  """Writes a batch [B, D] of momentum features at the pointer; pointer += B modulo Kq."""
  batch_size = image_features_m.shape[0]
  queue_size = queue.image_features.shape[0]
  if queue_size % batch_size:
    raise ValueError(f"queue size {queue_size} is not a multiple of the batch {batch_size}")
  if image_ids is None:
    image_ids = jnp.full((batch_size,), EMPTY_ID, jnp.int32)
  pointer = queue.pointer

  def write(buffer: jax.Array, rows: jax.Array) -> jax.Array:
    rows = jax.lax.stop_gradient(rows).astype(buffer.dtype)
    start = (pointer,) + (0,) * (buffer.ndim - 1)
    return jax.lax.dynamic_update_slice(buffer, rows, start)

  return FeatureQueue(
      image_features=write(queue.image_features, image_features_m),
      text_features=write(queue.text_features, text_features_m),
      image_ids=write(queue.image_ids, image_ids),
      pointer=((pointer + batch_size) % queue_size).astype(jnp.int32))


def ema_update(momentum_params: PyTree, params: PyTree, momentum: float = 0.995) -> PyTree:
  """momentum * p_m + (1 - momentum) * p, leaf by leaf (no gradient flows into the result)."""
  return jax.tree.map(
      lambda p_m, p: jax.lax.stop_gradient(momentum * p_m + (1.0 - momentum) * p).astype(p_m.dtype),
      momentum_params, params)
