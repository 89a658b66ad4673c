"""The jitted train step: gradients (optionally accumulated over micro-batches), update, metrics."""
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlp_jax.models.registry import LossFn
from vlp_jax.train import sharding as sharding_lib
from vlp_jax.train.optim import Schedule
from vlp_jax.train.state import TrainState

PyTree = Any
Batch = dict[str, jax.Array]


def split_micro_batches(batch: Batch, num_micro: int, mesh: Mesh | None) -> Batch:
  """[B, ...] -> [num_micro, B / num_micro, ...]; micro-batch j takes examples j, j+k, j+2k, ...

  Interleaving keeps every micro-batch spread over all data shards like the full batch.
  """
  def split(x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(
          x, NamedSharding(mesh, PartitionSpec(None, sharding_lib.BATCH_AXES)))
    return x
  return jax.tree.map(split, batch)


def compute_gradients(loss_fn: LossFn, params: PyTree, extra_state: PyTree, batch: Batch,
                      rng: jax.Array, num_micro: int = 1, mesh: Mesh | None = None
                      ) -> tuple[PyTree, jax.Array, dict[str, jax.Array], PyTree]:
  """(grads, loss, metrics, new_extra_state), averaged over `num_micro` micro-batches.

  Micro-batches run in a `lax.scan`; `extra_state` is threaded through them in order, and
  micro-batch i uses `fold_in(rng, i)`. Gradients accumulate in float32.
  """
  def objective(params: PyTree, extra_state: PyTree, batch: Batch, rng: jax.Array):
    loss, metrics, new_extra = loss_fn(params, extra_state, batch, rng)
    return loss.astype(jnp.float32), (metrics, new_extra)

  grad_fn = jax.value_and_grad(objective, has_aux=True)
  if num_micro == 1:
    (loss, (metrics, new_extra)), grads = grad_fn(params, extra_state, batch, rng)
    return grads, loss, metrics, new_extra

  micro_batches = split_micro_batches(batch, num_micro, mesh)
  first = jax.tree.map(lambda x: x[0], micro_batches)
  (_, (metrics_shape, _)), _ = jax.eval_shape(grad_fn, params, extra_state, first, rng)

  def accumulate(carry, inputs):
    grad_sum, loss_sum, metric_sums, extra = carry
    micro_batch, index = inputs
    (loss, (metrics, extra)), grads = grad_fn(params, extra, micro_batch,
                                              jax.random.fold_in(rng, index))
    grad_sum = jax.tree.map(lambda s, g: s + g.astype(jnp.float32), grad_sum, grads)
    metric_sums = jax.tree.map(lambda s, m: s + m.astype(jnp.float32), metric_sums, metrics)
    return (grad_sum, loss_sum + loss, metric_sums, extra), None

  zeros = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
           jnp.zeros((), jnp.float32),
           jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), metrics_shape), extra_state)
  (grad_sum, loss_sum, metric_sums, new_extra), _ = jax.lax.scan(
      accumulate, zeros, (micro_batches, jnp.arange(num_micro)))
  mean = lambda x: x / num_micro
  grads = jax.tree.map(lambda g, p: mean(g).astype(p.dtype), grad_sum, params)
  return grads, mean(loss_sum), jax.tree.map(mean, metric_sums), new_extra


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: Schedule,
                    shardings: TrainState, mesh: Mesh, num_micro: int = 1):
  """jit(train_step)(state, batch, rng) -> (state, metrics); the state is donated.

  `metrics` holds the model's terms plus `loss`, `grad_norm` (before clipping) and `lr`.
  The step's PRNG key is `fold_in(rng, state.step)`, so a resumed run draws the same keys.
  """
  def train_step(state: TrainState, batch: Batch, rng: jax.Array
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
    step_rng = jax.random.fold_in(rng, state.step)
    grads, loss, metrics, new_extra = compute_gradients(
        loss_fn, state.params, state.extra_state, batch, step_rng, num_micro, mesh)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads),
               "lr": schedule(state.step)}
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                           extra_state=new_extra)
    return new_state, metrics

  replicated = sharding_lib.replicated(mesh)
  return jax.jit(train_step,
                 in_shardings=(shardings, sharding_lib.batch_sharding(mesh), replicated),
                 out_shardings=(shardings, replicated), donate_argnums=(0,))
