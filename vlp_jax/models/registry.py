"""Model families by name, imported lazily.

The protocol between a model family and the one trainer (`vlp_jax.train`):

A family module (e.g. `vlp_jax/models/toy.py`) defines a module-level `FAMILY: ModelFamily`:

- `ModelFamily.default_config(variant) -> ConfigDict` with two sections, `model` and `data`:
  every field a config of this family may set there (the trainer rejects any other).
  `model.family` is the family name.
- `ModelFamily.build(config) -> TrainableModel`, given the full run config (it reads
  `config.model`, `config.data` and the generic `dtype`, `remat_policy`, `scan_layers`).

A `TrainableModel` holds pure functions; the trainer jits and shards them:

- `init(rng) -> (params, extra_state)`: variables from a PRNG key alone (the family builds
  its dummy inputs from the config). Leaves may be boxed with logical axis names
  (`nn.with_logical_partitioning` -> `nn.Partitioned`), which the trainer maps through the
  logical axis rules to mesh shardings; unboxed leaves are replicated.
  `params` are trained by gradients; `extra_state` holds what is not (momentum encoders,
  feature queues, batch statistics) and may be an empty dict.
- `loss_fn(params, extra_state, batch, rng) -> (loss, metrics, new_extra_state)`: `batch`
  is a dict of global arrays with the batch on the leading axis (one micro-batch when the
  optimiser accumulates gradients); `loss` a float32 scalar; `metrics` a flat dict of
  float32 scalars (each loss term by name), logged as they are.
- `evaluators: Mapping[str, Evaluator]`: `Evaluator.run(params, extra_state, batches)`
  consumes an iterable of global batches from the held-out split `Evaluator.split` (or
  `config.data.eval_split` when None), each with a `mask` [B] marking real examples, and
  returns a flat dict `metric name -> float`. The trainer logs them as `<evaluator>/<metric>`.
"""
import dataclasses
import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import ml_collections

PyTree = Any
Batch = dict[str, jax.Array]
LossFn = Callable[[PyTree, PyTree, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array],
                                                             PyTree]]


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """Produces metrics from params/extra_state and an iterable of held-out global batches."""
  run: Callable[[PyTree, PyTree, Iterable[Batch]], dict[str, float]]
  split: str | None = None


@dataclasses.dataclass(frozen=True)
class TrainableModel:
  """What the trainer needs from a model: `init`, the objective and evaluators."""
  init: Callable[[jax.Array], tuple[PyTree, PyTree]]
  loss_fn: LossFn
  evaluators: Mapping[str, Evaluator] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """A model family: its config defaults per variant and a builder from a full config."""
  name: str
  default_config: Callable[[str], ml_collections.ConfigDict]
  build: Callable[[ml_collections.ConfigDict], TrainableModel]


_FAMILY_MODULES: dict[str, str] = {
    "toy": "vlp_jax.models.toy",
    "blip": "vlp_jax.models.blip_family",
    "e2e_vlp": "vlp_jax.models.e2e_vlp_family",
}


def register_family(name: str, module_path: str) -> None:
  """Registers `module_path` (defining `FAMILY`) under `name`; imported on first use."""
  _FAMILY_MODULES[name] = module_path


def family_names() -> list[str]:
  return sorted(_FAMILY_MODULES)


def get_family(name: str) -> ModelFamily:
  """Imports and returns the family registered as `name`."""
  if name not in _FAMILY_MODULES:
    raise KeyError(f"unknown model family {name!r}; known: {family_names()}")
  family = importlib.import_module(_FAMILY_MODULES[name]).FAMILY
  if family.name != name:
    raise ValueError(f"{_FAMILY_MODULES[name]}.FAMILY is named {family.name!r}, not {name!r}")
  return family
