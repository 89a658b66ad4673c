"""hungarian_match against scipy.optimize.linear_sum_assignment."""
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from subprocess_testing import EIGHT_CPU_DEVICES, run_python
from vlp_jax.matching import hungarian_match

_match = jax.jit(hungarian_match)


def scipy_totals(cost: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """cost [B, Q, T], valid [B, T] -> [B] optimal total cost (float64)."""
  totals = np.zeros(cost.shape[0])
  for b in range(cost.shape[0]):
    targets = np.flatnonzero(valid[b])
    rows, cols = linear_sum_assignment(cost[b][:, targets].astype(np.float64))
    totals[b] = cost[b][rows, targets[cols]].astype(np.float64).sum()
  return totals


def assert_optimal(cost: np.ndarray, valid: np.ndarray, match, rtol: float = 0.0,
                   atol: float = 1e-4) -> None:
  """match is a valid injection of the valid targets with scipy's total cost."""
  match = np.asarray(match)
  assert match.dtype == np.int32 and match.shape == valid.shape
  np.testing.assert_array_equal(match[~valid], -1)
  assert np.all((match[valid] >= 0) & (match[valid] < cost.shape[1]))
  for row, row_valid in zip(match, valid):
    assert len(np.unique(row[row_valid])) == row_valid.sum()
  picked = np.take_along_axis(cost, np.maximum(match, 0)[:, None, :], axis=1)[:, 0]
  totals = np.where(valid, picked.astype(np.float64), 0.0).sum(axis=1)
  np.testing.assert_allclose(totals, scipy_totals(cost, valid), rtol=rtol, atol=atol)


def random_valid(rng: np.random.Generator, batch: int, num_targets: int) -> np.ndarray:
  """Random padding masks: a random number of valid targets at random positions."""
  counts = rng.integers(0, num_targets + 1, batch)
  order = rng.permuted(np.tile(np.arange(num_targets), (batch, 1)), axis=1)
  return order < counts[:, None]


@pytest.mark.parametrize("batch,num_queries,num_targets", [
    (2000, 10, 4), (2000, 6, 6), (500, 30, 12), (200, 100, 20), (3000, 5, 1)])
def test_random_float_costs(batch, num_queries, num_targets):
  rng = np.random.default_rng(num_queries * 100 + num_targets)
  cost = rng.normal(size=(batch, num_queries, num_targets)).astype(np.float32)
  valid = np.ones((batch, num_targets), bool)
  assert_optimal(cost, valid, _match(cost, valid))
  assert_optimal(cost, valid, _match(cost))


@pytest.mark.parametrize("batch,num_queries,num_targets", [(2000, 9, 5), (1000, 7, 7)])
def test_padded_targets(batch, num_queries, num_targets):
  rng = np.random.default_rng(1)
  cost = rng.random((batch, num_queries, num_targets), dtype=np.float32)
  valid = random_valid(rng, batch, num_targets)
  assert_optimal(cost, valid, _match(cost, valid))


def test_padding_does_not_change_valid_assignment():
  rng = np.random.default_rng(2)
  cost = rng.random((500, 12, 6), dtype=np.float32)
  valid = np.zeros((500, 6), bool)
  valid[:, :3] = True
  padded = np.asarray(_match(cost, valid))
  unpadded = np.asarray(_match(cost[:, :, :3]))
  np.testing.assert_array_equal(padded[:, :3], unpadded)


@pytest.mark.parametrize("batch,num_queries,num_targets,high", [
    (3000, 8, 5, 3), (2000, 6, 6, 2), (500, 40, 15, 5)])
def test_integer_ties(batch, num_queries, num_targets, high):
  rng = np.random.default_rng(high)
  cost = rng.integers(0, high, (batch, num_queries, num_targets)).astype(np.float32)
  valid = random_valid(rng, batch, num_targets)
  assert_optimal(cost, valid, _match(cost, valid), atol=0.0)


def test_constant_costs():
  cost = np.full((4, 10, 7), 3.0, np.float32)
  valid = np.ones((4, 7), bool)
  assert_optimal(cost, valid, _match(cost, valid), atol=0.0)


def test_large_magnitude_costs():
  rng = np.random.default_rng(3)
  batch, num_queries, num_targets = 2000, 10, 5
  # Uniform over [1e6, 1e9]: float32 spacing up to 64.
  cost = rng.uniform(1e6, 1e9, (batch, num_queries, num_targets)).astype(np.float32)
  valid = random_valid(rng, batch, num_targets)
  assert_optimal(cost, valid, _match(cost, valid), rtol=1e-6, atol=0.0)
  # Large per-target offsets with small integer differences: exact after the shift.
  offsets = 10.0 ** rng.uniform(6, 9, (batch, 1, num_targets))
  noise = rng.integers(0, 64, (batch, num_queries, num_targets)) * 64.0
  cost = (np.float32(offsets) + np.float32(noise)).astype(np.float32)
  assert_optimal(cost, valid, _match(cost, valid), atol=0.0)


def test_no_valid_target():
  cost = np.random.default_rng(4).random((3, 5, 4), dtype=np.float32)
  match = _match(cost, np.zeros((3, 4), bool))
  np.testing.assert_array_equal(match, -1)


def test_square_identity_and_leading_batch_dims():
  rng = np.random.default_rng(5)
  cost = rng.random((2, 3, 8, 8), dtype=np.float32)
  perm = rng.permutation(8)
  cost[..., perm, np.arange(8)] = -1.0
  match = _match(jnp.asarray(cost))
  assert match.shape == (2, 3, 8)
  np.testing.assert_array_equal(match, np.broadcast_to(perm, (2, 3, 8)))


def test_non_finite_costs_are_avoided():
  rng = np.random.default_rng(6)
  batch, num_queries, num_targets = 1000, 8, 5
  cost = rng.random((batch, num_queries, num_targets), dtype=np.float32)
  forbidden = rng.random(cost.shape) < 0.3
  cost_nan = np.where(forbidden, np.where(rng.random(cost.shape) < 0.5, np.nan, np.inf),
                      cost).astype(np.float32)
  valid = np.ones((batch, num_targets), bool)
  match = np.asarray(_match(cost_nan, valid))
  # scipy with +inf: the forbidden entries are avoided whenever possible.
  feasible = []
  for b in range(batch):
    try:
      linear_sum_assignment(np.where(forbidden[b], np.inf, cost[b]))
      feasible.append(True)
    except ValueError:
      feasible.append(False)
  feasible = np.array(feasible)
  assert feasible.sum() > batch // 2
  big = np.where(forbidden, 1e6, cost).astype(np.float32)
  assert_optimal(big[feasible], valid[feasible], match[feasible], atol=1e-3)
  # Infeasible problems still return a valid injection.
  assert all(len(set(row)) == num_targets for row in match[~feasible])


def test_negative_infinity_counts_as_row_minimum():
  cost = np.array([[3.0, 4.0, -np.inf, 4.0], [1.0, 9.0, 9.0, 9.0]], np.float32).T[None]
  np.testing.assert_array_equal(_match(cost), [[2, 0]])


def test_vmap_matches_batched():
  rng = np.random.default_rng(7)
  cost = rng.integers(0, 4, (64, 12, 6)).astype(np.float32)
  valid = random_valid(rng, 64, 6)
  vmapped = jax.jit(jax.vmap(hungarian_match))(cost, valid)
  assert_optimal(cost, valid, vmapped, atol=0.0)


def test_sharded_jit_over_eight_devices():
  script = textwrap.dedent("""
      import jax, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from scipy.optimize import linear_sum_assignment
      from vlp_jax.matching import hungarian_match
      assert jax.device_count() == 8
      mesh = Mesh(np.array(jax.devices()), ("data",))
      rng = np.random.default_rng(0)
      cost = rng.random((64, 20, 6), dtype=np.float32)
      valid = rng.random((64, 6)) < 0.8
      sharding = NamedSharding(mesh, P("data"))
      match = jax.jit(hungarian_match, out_shardings=sharding)(
          jax.device_put(cost, sharding), jax.device_put(valid, sharding))
      assert match.sharding.is_equivalent_to(sharding, 2)
      match = np.asarray(match)
      for b in range(64):
        targets = np.flatnonzero(valid[b])
        rows, cols = linear_sum_assignment(cost[b][:, targets])
        got = cost[b][match[b, targets], targets].sum()
        assert abs(got - cost[b][rows, targets[cols]].sum()) < 1e-5
        assert (match[b, ~valid[b]] == -1).all()
      print("ok")
  """)
  result = run_python(script, env=EIGHT_CPU_DEVICES)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().endswith("ok")


def test_more_valid_targets_than_queries_keeps_the_first_ones():
  rng = np.random.default_rng(8)
  cost = rng.random((50, 3, 5), dtype=np.float32)
  valid = np.ones((50, 5), bool)
  valid[:, 1] = False
  match = np.asarray(_match(cost, valid))
  kept = np.zeros_like(valid)
  kept[:, [0, 2, 3]] = True
  assert_optimal(cost, kept, match)
  assert np.all(hungarian_match(np.zeros((2, 0, 3), np.float32)) == -1)
