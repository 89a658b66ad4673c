"""Run metrics: `<workdir>/metrics.jsonl`, TensorBoard events, a progress bar or log lines.

Only the primary process (index 0) writes. One JSON object per logged step, e.g.
{"step": 100, "loss": 0.31, "cross_entropy": 0.31, "lr": 1e-3, "grad_norm": 0.8,
 "steps_per_s": 210.0, "examples_per_s": 6720.0, "input_wait_fraction": 0.12}
Evaluator results are logged the same way under `<evaluator>/<metric>` keys.
"""
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
TRAINER_TERMS = ("loss", "grad_norm", "lr")


def first_non_finite(metrics: Mapping[str, Any]) -> str | None:
  """Name of the first non-finite value: model terms (sorted) first, then loss, grad_norm."""
  model_terms = sorted(name for name in metrics if name not in TRAINER_TERMS)
  for name in model_terms + [name for name in TRAINER_TERMS if name in metrics]:
    if not np.all(np.isfinite(np.asarray(metrics[name]))):
      return name
  return None


def to_python(values: Mapping[str, Any]) -> dict[str, float | int]:
  """Scalars as JSON-ready python numbers (non-finite floats become strings 'nan', 'inf')."""
  result = {}
  for name, value in values.items():
    value = np.asarray(value).item() if not isinstance(value, (int, float)) else value
    if isinstance(value, float) and not math.isfinite(value):
      value = str(value)
    result[name] = value
  return result


def append_jsonl(path: str, record: Mapping[str, Any]) -> None:
  with open(path, "a", encoding="utf-8") as stream:
    stream.write(json.dumps(record, sort_keys=False) + "\n")


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path, encoding="utf-8") as stream:
    return [json.loads(line) for line in stream if line.strip()]


class WindowTimer:
  """Wall time and time spent waiting for input since the last `reset` (a logging window)."""

  def __init__(self) -> None:
    self.reset()

  def reset(self) -> None:
    self.start = time.perf_counter()
    self.input_seconds = 0.0

  def add_input_wait(self, seconds: float) -> None:
    self.input_seconds += seconds

  def rates(self, num_steps: int, examples_per_step: int) -> dict[str, float]:
    """steps_per_s, examples_per_s and input_wait_fraction of the window's `num_steps` steps."""
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    steps_per_s = num_steps / elapsed
    return {"steps_per_s": steps_per_s, "examples_per_s": steps_per_s * examples_per_step,
            "input_wait_fraction": min(self.input_seconds / elapsed, 1.0)}


class MetricsWriter:
  """Writes logged steps to metrics.jsonl, TensorBoard and the terminal (primary process only)."""

  def __init__(self, workdir: str, *, total_steps: int, start_step: int, is_primary: bool):
    self.is_primary = is_primary
    self.path = os.path.join(workdir, METRICS_FILENAME)
    self._summary_writer = None
    self._progress = None
    if not is_primary:
      return
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._summary_writer = tf.summary.create_file_writer(os.path.join(workdir,
                                                                      TENSORBOARD_SUBDIR))
    if sys.stderr.isatty():
      import tqdm  # pylint: disable=g-import-not-at-top
      self._progress = tqdm.tqdm(total=total_steps, initial=start_step, unit="step",
                                 dynamic_ncols=True)

  def write(self, step: int, values: Mapping[str, Any]) -> dict[str, Any]:
    """Logs `values` at `step`; returns the JSON record."""
    record = {"step": int(step), **to_python(values)}
    if not self.is_primary:
      return record
    append_jsonl(self.path, record)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with self._summary_writer.as_default(step=int(step)):
      for name, value in record.items():
        if name != "step" and isinstance(value, (int, float)):
          tf.summary.write(name, tf.constant(value, tf.float32), metadata=_scalar_metadata())
    self._summary_writer.flush()
    summary = " ".join(f"{name}={_short(value)}" for name, value in record.items()
                       if name != "step")
    if self._progress is not None and "loss" in record:
      self._progress.set_postfix_str(" ".join(
          f"{name}={_short(record[name])}" for name in ("loss", "examples_per_s",
                                                         "input_wait_fraction")
          if name in record), refresh=False)
    elif self._progress is not None:  # evaluation results: a line above the bar
      self._progress.write(f"step {step}: {summary}", file=sys.stderr)
    else:
      print(f"step {step}: {summary}", file=sys.stderr, flush=True)
    return record

  def advance(self, step: int) -> None:
    """Moves the progress bar to `step` (steps/s and ETA come from tqdm)."""
    if self._progress is not None:
      self._progress.update(step - self._progress.n)

  def close(self) -> None:
    if self._progress is not None:
      self._progress.close()
    if self._summary_writer is not None:
      self._summary_writer.close()


def _scalar_metadata() -> bytes:
  """TensorBoard's scalar-plugin metadata, so that events need no `tensorboard` package."""
  from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
  return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
      plugin_name="scalars")).SerializeToString()


def _short(value: Any) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)
