"""Shared helpers for the trainer tests: tiny toy configs, runs in subprocesses, metrics."""
import os
import subprocess
import sys
from typing import Any

import ml_collections

from vlp_jax.train import config as config_lib
from vlp_jax.train import metrics as metrics_lib

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def tiny_toy_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The toy family's tiny variant with fast settings: log every step, no async saves."""
  config = config_lib.run_config("toy", "tiny")
  config.global_batch_size = 16
  config.total_steps = 20
  config.log_every_steps = 1
  config.checkpoint_every_steps = 10
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 5
  config.optimizer.weight_decay = 1e-4
  config.data.eval_examples = 64
  for field, value in overrides.items():
    target = config
    *parents, name = field.split(".")
    for parent in parents:
      target = target[parent]
    target[name] = value
  return config


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: int = 240,
               cwd: str = REPO_ROOT) -> subprocess.CompletedProcess:
  """Runs `python -c code` with this interpreter; returns the completed process."""
  full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu", **(env or {})}
  return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True,
                        text=True, timeout=timeout, check=False)


def train_records(workdir: str) -> dict[int, dict[str, Any]]:
  """Per-step training records of metrics.jsonl (the last record of a step wins)."""
  records = {}
  for record in metrics_lib.read_jsonl(os.path.join(workdir, metrics_lib.METRICS_FILENAME)):
    if "loss" in record:
      records[record["step"]] = record
  return records
