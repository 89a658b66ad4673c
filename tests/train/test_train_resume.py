"""Preemption and resume: SIGTERM -> checkpoint -> restart gives the uninterrupted run exactly."""
import json
import os
import signal

import numpy as np
import pytest

from subprocess_testing import run_module, run_python
from train_testing import override_flags, tiny_toy_config, train_records
from vlp_jax.train import checkpoint as checkpoint_lib
from vlp_jax.train import trainer

TOTAL_STEPS = 40
SIGNAL_AFTER_BATCHES = 15

# Runs the train CLI; the training input sends this process a real SIGTERM right after
# handing out its N-th batch (so the signal lands while step N is being dispatched).
_SIGTERM_RUN = """
import os, signal, sys
from absl import app
from vlp_jax.train import __main__ as cli, trainer

class SigtermAfter:
  def __init__(self, iterator, count):
    self.iterator, self.count, self.seen = iterator, count, 0
  def __iter__(self):
    return self
  def __next__(self):
    batch = next(self.iterator)
    self.seen += 1
    if self.seen == self.count:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch
  def save(self, directory):
    self.iterator.save(directory)
  def restore(self, directory):
    self.iterator.restore(directory)

make_input = trainer.default_input_fn
def input_fn(*args, **kwargs):
  iterator = make_input(*args, **kwargs)
  return SigtermAfter(iterator, {count}) if kwargs["train"] else iterator
trainer.default_input_fn = input_fn
sys.argv = ["train"] + {flags!r}
app.run(cli.main)
"""


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  result = trainer.train(tiny_toy_config(total_steps=TOTAL_STEPS), workdir)
  assert result.status == "completed" and result.step == TOTAL_STEPS
  return workdir


@pytest.mark.slow
def test_sigterm_then_resume_matches_uninterrupted_run(uninterrupted_run, tmp_path):
  workdir = str(tmp_path / "interrupted")
  flags = ["--config=configs/toy.py:tiny", f"--workdir={workdir}",
           *override_flags(total_steps=TOTAL_STEPS)]
  process = run_python(_SIGTERM_RUN.format(count=SIGNAL_AFTER_BATCHES, flags=flags))
  assert process.returncode == 0, process.stderr[-3000:]
  assert f"preempted at step {SIGNAL_AFTER_BATCHES}: checkpoint saved" in process.stderr
  checkpointer = checkpoint_lib.Checkpointer(workdir)
  assert checkpointer.all_steps() == [10, SIGNAL_AFTER_BATCHES]
  checkpointer.close()
  assert max(train_records(workdir)) == SIGNAL_AFTER_BATCHES

  result = trainer.train(tiny_toy_config(total_steps=TOTAL_STEPS), workdir)
  assert result.status == "completed" and result.step == TOTAL_STEPS

  expected, resumed = train_records(uninterrupted_run), train_records(workdir)
  assert sorted(resumed) == list(range(1, TOTAL_STEPS + 1)) == sorted(expected)
  for step in range(1, TOTAL_STEPS + 1):
    assert resumed[step]["batch_checksum"] == expected[step]["batch_checksum"], step
    np.testing.assert_allclose(resumed[step]["loss"], expected[step]["loss"], rtol=1e-6,
                               err_msg=f"step {step}")
  assert resumed[TOTAL_STEPS]["loss"] == expected[TOTAL_STEPS]["loss"]  # bitwise on CPU


def test_signal_handler_is_restored_after_training(tmp_path):
  previous = signal.getsignal(signal.SIGTERM)
  trainer.train(tiny_toy_config(total_steps=2, log_every_steps=1), str(tmp_path))
  assert signal.getsignal(signal.SIGTERM) is previous


def test_evaluate_cli_prints_json_and_appends_metrics(uninterrupted_run):
  metrics_path = os.path.join(uninterrupted_run, "metrics.jsonl")
  lines_before = len(open(metrics_path, encoding="utf-8").read().splitlines())
  process = run_module("vlp_jax.evaluate", [
      "--config=configs/toy.py:tiny", f"--workdir={uninterrupted_run}",
      *override_flags(total_steps=TOTAL_STEPS)])
  assert process.returncode == 0, process.stderr[-3000:]
  result = json.loads(process.stdout.strip().splitlines()[-1])
  assert result["step"] == TOTAL_STEPS
  assert 0.0 <= result["classification/accuracy"] <= 1.0
  assert result["classification/num_examples"] == 64
  lines = open(metrics_path, encoding="utf-8").read().splitlines()
  assert len(lines) == lines_before + 1 and json.loads(lines[-1]) == result
  # The trainer's own end-of-run evaluation of the same checkpoint agrees.
  trainer_eval = [json.loads(line) for line in lines[:-1] if "classification/accuracy" in line]
  assert trainer_eval[-1]["classification/accuracy"] == result["classification/accuracy"]
