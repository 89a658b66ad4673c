"""Runs a model's evaluators on held-out splits, feeding them sharded global batches."""
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from vlp_jax.models.registry import TrainableModel
from vlp_jax.train import sharding as sharding_lib

InputFn = Callable[..., Iterator[dict[str, Any]]]


def global_batches(local_batches: Iterator[dict[str, Any]], mesh: Mesh
                   ) -> Iterator[dict[str, jax.Array]]:
  for batch in local_batches:
    yield sharding_lib.global_batch(batch, mesh)


def run_evaluators(model: TrainableModel, config: ml_collections.ConfigDict, params: Any,
                   extra_state: Any, mesh: Mesh, input_fn: InputFn) -> dict[str, float]:
  """{'<evaluator>/<metric>': value} over every evaluator of `model`, each on a fresh finite
  pipeline of its split (`Evaluator.split` or `config.data.eval_split`)."""
  results = {}
  batch_size = config.eval_batch_size or config.global_batch_size
  for name, evaluator in model.evaluators.items():
    batches = input_fn(config.data, split=evaluator.split or config.data.eval_split,
                       train=False, global_batch_size=batch_size, seed=config.seed)
    metrics = evaluator.run(params, extra_state, global_batches(batches, mesh))
    results.update({f"{name}/{metric}": float(value) for metric, value in metrics.items()})
  return results
