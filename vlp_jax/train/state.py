"""Train state and its sharded init: eval_shape -> shardings -> jit(init, out_shardings)."""
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from vlp_jax.models.registry import TrainableModel
from vlp_jax.train import sharding as sharding_lib

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. `step` is an int32 scalar."""
  step: jax.Array
  params: PyTree
  opt_state: PyTree
  extra_state: PyTree


def state_shardings(model: TrainableModel, tx: optax.GradientTransformation, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]]) -> tuple[TrainState, TrainState]:
  """(abstract state with shardings attached, state shardings), without allocating anything.

  Param and extra-state shardings come from their logical axis names; optimiser-state
  copies of the params follow the params, other optimiser fields are replicated.
  """
  boxed_params, boxed_extra = jax.eval_shape(model.init, jax.random.key(0))
  param_shardings = sharding_lib.tree_shardings(boxed_params, mesh, rules)
  extra_shardings = sharding_lib.tree_shardings(boxed_extra, mesh, rules)
  abstract_params = sharding_lib.strip_boxes(boxed_params)
  abstract_opt_state = jax.eval_shape(tx.init, abstract_params)
  replicated = sharding_lib.replicated(mesh)
  opt_shardings = _follow_param_shardings(abstract_opt_state, abstract_params, param_shardings,
                                          replicated)
  shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                         extra_state=extra_shardings)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                        opt_state=abstract_opt_state,
                        extra_state=sharding_lib.strip_boxes(boxed_extra))
  abstract = jax.tree.map(
      lambda leaf, leaf_sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                       sharding=leaf_sharding),
      abstract, shardings)
  return abstract, shardings


def _follow_param_shardings(opt_state: PyTree, params: PyTree, param_shardings: PyTree,
                            default: NamedSharding) -> PyTree:
  """Shards each optimiser-state leaf whose key path ends with a param's path (and whose shape
  matches) like that param; everything else (counts, scalars) gets `default`.

  Path matching works through any optax wrapper (`multi_transform`, `masked`, `chain`).
  """
  by_path = {}
  for (path, leaf), leaf_sharding in zip(jax.tree_util.tree_leaves_with_path(params),
                                         jax.tree.leaves(param_shardings)):
    by_path[tuple(str(key) for key in path)] = (leaf.shape, leaf_sharding)

  def sharding_for(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
    keys = tuple(str(key) for key in path)
    for start in range(len(keys)):
      match = by_path.get(keys[start:])
      if match is not None and match[0] == leaf.shape:
        return match[1]
    return default

  return jax.tree_util.tree_map_with_path(sharding_for, opt_state)


def init_train_state(model: TrainableModel, tx: optax.GradientTransformation,
                     shardings: TrainState, rng: jax.Array) -> TrainState:
  """Initialises the state directly into `shardings` (no replicated copy on any device)."""
  def init(rng: jax.Array) -> TrainState:
    params, extra_state = nn.meta.unbox(model.init(rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), extra_state=extra_state)
  return jax.jit(init, out_shardings=shardings)(rng)
