"""Shared helpers for the trainer tests: tiny toy configs, CLI flags, metrics."""
import os
from typing import Any

import ml_collections

from subprocess_testing import REPO_ROOT
from vlp_jax.train import metrics as metrics_lib
from vlp_jax.train.config import load_config_file


TINY_OVERRIDES = {
    "global_batch_size": 16, "total_steps": 20, "log_every_steps": 1,
    "checkpoint_every_steps": 10, "eval_every_steps": 0, "data.eval_examples": 64,
}


def tiny_toy_config(**overrides: Any) -> ml_collections.ConfigDict:
  """`configs/toy.py:tiny` with `TINY_OVERRIDES` and `overrides` ('a.b' keys allowed)."""
  config = load_config_file(os.path.join(REPO_ROOT, "configs", "toy.py:tiny"))
  for field, value in {**TINY_OVERRIDES, **overrides}.items():
    target = config
    *parents, name = field.split(".")
    for parent in parents:
      target = target[parent]
    target[name] = value
  return config


def override_flags(**overrides: Any) -> list[str]:
  """The `--config.<field>=<value>` flags giving `tiny_toy_config(**overrides)` from the CLI."""
  return [f"--config.{field}={value}" for field, value in {**TINY_OVERRIDES, **overrides}.items()]


def train_records(workdir: str) -> dict[int, dict[str, Any]]:
  """Per-step training records of metrics.jsonl (the last record of a step wins)."""
  records = {}
  for record in metrics_lib.read_jsonl(os.path.join(workdir, metrics_lib.METRICS_FILENAME)):
    if "loss" in record:
      records[record["step"]] = record
  return records
