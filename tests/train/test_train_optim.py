"""Optimiser: decay masks, freezing, lr multipliers, schedules, gradient accumulation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax.models import toy
from vlp_jax.train import config as config_lib
from vlp_jax.train import optim
from vlp_jax.train.step import compute_gradients

PARAMS = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
          "norm": {"scale": jnp.ones((4,))},
          "embedding": {"table": jnp.ones((5, 4))}}
ZERO_GRADS = jax.tree.map(jnp.zeros_like, PARAMS)


def optimizer_config(**fields):
  config = config_lib.default_optimizer_config()
  config.update({"schedule": "constant", "learning_rate": 0.1, "grad_clip_norm": 0.0, **fields})
  return config


def apply_once(config, grads=ZERO_GRADS, params=PARAMS):
  tx, _ = optim.make_optimizer(config, total_steps=10)
  updates, _ = tx.update(grads, tx.init(params), params)
  return jax.tree.map(np.asarray, optax_apply(params, updates))


def optax_apply(params, updates):
  return jax.tree.map(lambda p, u: p + u, params, updates)


def test_weight_decay_skips_biases_and_norms():
  new = apply_once(optimizer_config(weight_decay=0.5))
  np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.5)
  np.testing.assert_allclose(new["embedding"]["table"], 1 - 0.1 * 0.5)
  np.testing.assert_array_equal(new["dense"]["bias"], 1.0)
  np.testing.assert_array_equal(new["norm"]["scale"], 1.0)


def test_no_decay_regex_excludes_matching_paths():
  new = apply_once(optimizer_config(weight_decay=0.5, no_decay_regex=r"^embedding/"))
  np.testing.assert_array_equal(new["embedding"]["table"], 1.0)
  np.testing.assert_allclose(new["dense"]["kernel"], 0.95)


def test_frozen_params_are_unchanged_and_have_no_optimizer_state():
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  config = optimizer_config(weight_decay=0.5, frozen_regex=r"^dense/")
  new = apply_once(config, grads)
  np.testing.assert_array_equal(new["dense"]["kernel"], 1.0)
  np.testing.assert_array_equal(new["dense"]["bias"], 1.0)
  assert np.all(new["norm"]["scale"] < 1.0)
  tx, _ = optim.make_optimizer(config, total_steps=10)
  state_sizes = sum(x.size for x in jax.tree.leaves(tx.init(PARAMS)))
  trained_sizes = 4 + 20  # norm scale + embedding table, times mu and nu, plus counts
  assert state_sizes < 2 * trained_sizes + 8


def test_lr_multipliers_scale_updates_first_match_wins():
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  config = optimizer_config(lr_multipliers=((r"^dense/kernel", 0.0), (r"^dense", 0.5),
                                            (r"table", 2.0)))
  new = apply_once(config, grads)
  base_step = 1 - apply_once(optimizer_config(), grads)["norm"]["scale"]  # lr * adam(1)
  np.testing.assert_array_equal(new["dense"]["kernel"], 1.0)
  np.testing.assert_allclose(1 - new["dense"]["bias"], 0.5 * base_step, rtol=1e-6)
  np.testing.assert_allclose(1 - new["embedding"]["table"], 2.0 * base_step[0], rtol=1e-6)
  np.testing.assert_allclose(1 - new["norm"]["scale"], base_step, rtol=1e-6)


@pytest.mark.parametrize("kind,expected", [
    ("cosine", [0.0, 0.5, 1.0, 0.5 * (1 + np.cos(np.pi * 0.5)) * 0.9 + 0.1, 0.1, 0.1]),
    ("linear", [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]),
    ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
])
def test_schedules_warm_up_then_decay(kind, expected):
  config = optimizer_config(schedule=kind, learning_rate=1.0, warmup_steps=2,
                            end_learning_rate_factor=0.1)
  schedule = optim.make_schedule(config, total_steps=12)
  values = [float(schedule(step)) for step in (0, 1, 2, 7, 12, 20)]
  np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-7)


def test_accumulating_micro_batches_equals_one_big_batch():
  config = config_lib.run_config("toy", "tiny")
  model = toy.build(config)
  params, extra_state = jax.tree.map(np.asarray, toy.nn.meta.unbox(model.init(jax.random.key(0))))
  batch = next(toy.make_toy_pipeline(config.data, split="train", train=True,
                                     global_batch_size=32, seed=0, process_index=0,
                                     process_count=1))
  rng = jax.random.key(1)
  big = jax.jit(lambda p, e, b: compute_gradients(model.loss_fn, p, e, b, rng, 1))(
      params, extra_state, batch)
  accumulated = jax.jit(lambda p, e, b: compute_gradients(model.loss_fn, p, e, b, rng, 4))(
      params, extra_state, batch)
  big_grads, big_loss, big_metrics, big_extra = big
  grads, loss, metrics, extra = accumulated
  for big_leaf, leaf in zip(jax.tree.leaves(big_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(leaf, big_leaf, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss, big_loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["accuracy"], big_metrics["accuracy"], rtol=1e-6)
  # Metrics are means over micro-batches: a per-batch sum becomes a micro-batch mean.
  np.testing.assert_allclose(4 * metrics["batch_checksum"], big_metrics["batch_checksum"],
                             rtol=1e-5)
  # extra_state runs through the micro-batches in order, so it differs from one big update.
  assert not np.allclose(extra["feature_mean"], big_extra["feature_mean"])
