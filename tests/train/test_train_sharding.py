"""Logical axis rules, spec fitting, sharded init and metric helpers on one device."""
import types

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import PartitionSpec

from train_testing import tiny_toy_config
from vlp_jax.models.registry import get_family
from vlp_jax.train import metrics as metrics_lib
from vlp_jax.train import optim
from vlp_jax.train import sharding as sharding_lib
from vlp_jax.train import state as state_lib


def test_config_rules_take_precedence_over_defaults():
  rules = sharding_lib.logical_axis_rules((("embed", None), ("mlp", ["fsdp", "tensor"])))
  assert rules[:2] == (("embed", None), ("mlp", ("fsdp", "tensor")))
  assert dict(rules)["activation_batch"] == ("data", "fsdp")
  assert [name for name, _ in rules].count("embed") == 1


def test_default_rules_map_logical_names_to_mesh_axes():
  rules = sharding_lib.logical_axis_rules()
  to_mesh = lambda names: nn.logical_to_mesh_axes(names, rules)
  assert to_mesh(("embed", "mlp")) == PartitionSpec("fsdp", "tensor")
  assert to_mesh(("vocab", "embed")) == PartitionSpec("tensor", "fsdp")
  # fsdp is taken by the batch, so the activation's embed stays whole.
  assert to_mesh(("activation_batch", "activation_embed")) == PartitionSpec(("data", "fsdp"),
                                                                            None)


def test_dims_that_do_not_divide_are_replicated():
  mesh = types.SimpleNamespace(shape={"data": 4, "fsdp": 2, "tensor": 2})
  fit = sharding_lib._fit_spec  # pylint: disable=protected-access
  assert fit((6, 8), PartitionSpec("fsdp", "tensor"), mesh) == PartitionSpec("fsdp", "tensor")
  assert fit((7, 8), PartitionSpec("fsdp", "tensor"), mesh) == PartitionSpec(None, "tensor")
  assert fit((12,), PartitionSpec(("data", "fsdp")), mesh) == PartitionSpec(None)


def test_state_is_initialised_in_its_shardings():
  config = tiny_toy_config()
  config.optimizer.frozen_regex = "^block_0/"
  model = get_family("toy").build(config)
  tx, _ = optim.make_optimizer(config.optimizer, config.total_steps)
  mesh = sharding_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
  rules = sharding_lib.logical_axis_rules()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, shardings = state_lib.state_shardings(model, tx, mesh, rules)
    state = state_lib.init_train_state(model, tx, shardings, jax.random.key(0))
  kernel = state.params["block_1"]["Dense_0"]["kernel"]
  assert kernel.sharding == shardings.params["block_1"]["Dense_0"]["kernel"]
  assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor")
  assert abstract.params["block_1"]["Dense_0"]["kernel"].sharding == kernel.sharding
  # Adam moments follow the params; frozen params have no moments.
  moments = [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.shape == kernel.shape]
  assert moments and all(leaf.sharding.spec == kernel.sharding.spec for leaf in moments)
  assert len(moments) == 2  # mu and nu of block_1/Dense_0 only (block_0 is frozen)


def test_first_non_finite_prefers_model_terms_and_global_batch_assembles():
  values = {"loss": np.nan, "grad_norm": np.inf, "accuracy": 0.5, "contrastive": np.nan}
  assert metrics_lib.first_non_finite(values) == "contrastive"
  assert metrics_lib.first_non_finite({"loss": 1.0, "grad_norm": np.inf}) == "grad_norm"
  assert metrics_lib.first_non_finite({"loss": 1.0}) is None
  mesh = sharding_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
  batch = sharding_lib.global_batch({"x": np.arange(8.0).reshape(4, 2)}, mesh)
  assert batch["x"].shape == (4, 2)
  assert batch["x"].sharding.spec == PartitionSpec(("data", "fsdp"))
