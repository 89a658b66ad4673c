"""Speed of batched Hungarian matching: ours vs optax vs scipy (host loop).

Run: .venv/bin/python benchmarks/matching.py [--rounds 30]

Problems are DETR-sized: a batch of 32 cost matrices of 100 queries x up to T
targets, uniform random costs (and one case with DETR matching costs). Timings of
the solvers are interleaved, in a random order, in each round (the CPU is
shared, so only ratios measured side by side are meaningful); medians are printed.
"""
import argparse
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.optimize import linear_sum_assignment

from vlp_jax.matching import hungarian_match
from vlp_jax.objectives.detection import detr_matching_cost


def make_problem(rng: np.random.Generator, batch: int, num_queries: int,
                 max_targets: int, padded: bool,
                 detr_costs: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Returns cost [B, Q, T] float32 and valid [B, T] (a random count when padded).

  Costs are uniform in [0, 1), or with `detr_costs` DETR matching costs of random
  predictions (91 classes) against random boxes: structured, with many near-ties.
  """
  counts = rng.integers(1, max_targets + 1, batch) if padded else np.full(batch, max_targets)
  valid = np.arange(max_targets)[None, :] < counts[:, None]
  if not detr_costs:
    return rng.random((batch, num_queries, max_targets), dtype=np.float32), valid
  def random_boxes(*shape: int) -> np.ndarray:
    return np.concatenate([rng.uniform(0.2, 0.8, (*shape, 2)),
                           rng.uniform(0.05, 0.4, (*shape, 2))], -1).astype(np.float32)
  cost = detr_matching_cost(
      rng.normal(size=(batch, num_queries, 92)).astype(np.float32),
      random_boxes(batch, num_queries), rng.integers(0, 91, (batch, max_targets)),
      random_boxes(batch, max_targets))
  return np.asarray(cost), valid


def ours_solver() -> Callable[[np.ndarray, np.ndarray], jax.Array]:
  return jax.jit(hungarian_match)


def ours_vmapped_solver() -> Callable[[np.ndarray, np.ndarray], jax.Array]:
  """One problem per vmap lane (the while_loop is batched by vmap, not natively)."""
  return jax.jit(jax.vmap(hungarian_match))


def optax_solver() -> Callable[[np.ndarray, np.ndarray], jax.Array]:
  """optax solves [rows, cols] with rows <= cols without transposing: pass [T, Q].

  It has no notion of padding, so padded targets get a constant cost (which keeps
  the valid targets' optimum) and are solved too.
  """
  def solve(cost: jax.Array, valid: jax.Array) -> jax.Array:
    rows = jnp.where(valid[:, :, None], jnp.swapaxes(cost, 1, 2), 0.0)
    target_index, query_index = jax.vmap(optax.assignment.hungarian_algorithm)(rows)
    return jnp.zeros(valid.shape, jnp.int32).at[
        jnp.arange(valid.shape[0])[:, None], target_index].set(query_index)
  return jax.jit(solve)


def scipy_solve(cost: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Host loop over the batch, valid targets only."""
  matches = np.full(valid.shape, -1, np.int64)
  for b in range(cost.shape[0]):
    targets = np.flatnonzero(valid[b])
    queries, columns = linear_sum_assignment(cost[b][:, targets])
    matches[b, targets[columns]] = queries
  return matches


def time_ms(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return 1e3 * (time.perf_counter() - start)


def check_same_cost(cost: np.ndarray, valid: np.ndarray, *matches: np.ndarray) -> None:
  totals = []
  for match in matches:
    match = np.asarray(match)
    picked = np.take_along_axis(cost, np.maximum(match, 0)[:, None, :], axis=1)[:, 0]
    totals.append(np.where(valid, picked, 0.0).sum(axis=1))
  for total in totals[1:]:
    np.testing.assert_allclose(total, totals[0], rtol=1e-5)


def run(title: str, batch: int, num_queries: int, max_targets: int, padded: bool,
        rounds: int, detr_costs: bool = False) -> None:
  rng = np.random.default_rng(0)
  problems = [make_problem(rng, batch, num_queries, max_targets, padded, detr_costs)
              for _ in range(8)]
  solvers = {
      "ours": ours_solver(),
      "ours_vmap": ours_vmapped_solver(),
      "optax": optax_solver(),
  }
  cost, valid = problems[0]
  check_same_cost(cost, valid, scipy_solve(cost, valid),
                  *(solve(cost, valid) for solve in solvers.values()))  # also compiles
  device_problems = [(jnp.asarray(c), jnp.asarray(v)) for c, v in problems]
  times = {name: [] for name in [*solvers, "scipy"]}
  runners = {name: (lambda solve: lambda i: solve(*device_problems[i % len(problems)]))(solve)
             for name, solve in solvers.items()}
  runners["scipy"] = lambda i: scipy_solve(*problems[i % len(problems)])
  names = list(runners)
  order_rng = np.random.default_rng(1)
  for i in range(rounds):
    # A fresh random order every round: no solver always runs after the same one.
    for name in order_rng.permutation(names):
      times[name].append(time_ms(lambda: runners[name](i)))
  median = {k: float(np.median(t)) for k, t in times.items()}
  ratio = lambda a, b: float(np.median(np.array(times[a]) / np.array(times[b])))
  print(f"{title}: batch {batch} x ({num_queries} queries x {'up to ' if padded else ''}"
        f"{max_targets} targets), median ms per batch over {rounds} rounds")
  print("  " + "  ".join(f"{k} {m:.3f}" for k, m in median.items()))
  print(f"  optax/ours {ratio('optax', 'ours'):.2f}x   ours/scipy {ratio('ours', 'scipy'):.2f}x"
        f"   ours_vmap/ours {ratio('ours_vmap', 'ours'):.2f}x"
        f"   optax/scipy {ratio('optax', 'scipy'):.2f}x")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--rounds", type=int, default=30)
  args = parser.parse_args()
  run("detr_padded", 32, 100, 20, padded=True, rounds=args.rounds)
  run("detr_full", 32, 100, 20, padded=False, rounds=args.rounds)
  run("dense", 32, 100, 50, padded=False, rounds=args.rounds)
  run("detr_costs_padded", 32, 100, 20, padded=True, rounds=args.rounds, detr_costs=True)


if __name__ == "__main__":
  main()
