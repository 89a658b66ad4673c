"""The same trainer on 8 simulated devices, and on two processes resumed by one."""
import json
import os

import numpy as np
import pytest

from subprocess_testing import EIGHT_CPU_DEVICES, REPO_ROOT, run_command, run_python
from train_testing import override_flags, tiny_toy_config, train_records
from vlp_jax.train import checkpoint as checkpoint_lib
from vlp_jax.train import trainer

STEPS = 20
_TEST_DIRS = [os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))]

_EIGHT_DEVICE_RUN = """
import sys
sys.path[:0] = {test_dirs!r}  # train_testing and the subprocess_testing it imports
import jax
from train_testing import tiny_toy_config
from vlp_jax.train import trainer
assert jax.device_count() == 8, jax.devices()
config = tiny_toy_config(total_steps={steps})
config.mesh.update(dict(data=4, fsdp=2, tensor=1))
result = trainer.train(config, {workdir!r})

# The restored state lives on the 4x2 mesh: kernels split over fsdp (embed) as the rules say.
import flax.linen as nn
from jax.sharding import PartitionSpec
from vlp_jax.models.registry import get_family
from vlp_jax.train import checkpoint, optim, sharding, state
model = get_family("toy").build(config)
mesh = sharding.make_mesh(dict(data=4, fsdp=2, tensor=1))
rules = sharding.logical_axis_rules()
tx, _ = optim.make_optimizer(config.optimizer, config.total_steps)
with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
  abstract, _ = state.state_shardings(model, tx, mesh, rules)
  restored, _ = checkpoint.Checkpointer({workdir!r}).restore(abstract)
kernel = restored.params["block_0"]["Dense_0"]["kernel"]  # [embed=32, mlp=64]
assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor"), kernel.sharding.spec
assert kernel.addressable_shards[0].data.shape == (16, 64)
print(result.status, result.step)
"""


@pytest.mark.slow
def test_eight_devices_data4_fsdp2_follow_single_device_loss(tmp_path):
  single = str(tmp_path / "single")
  trainer.train(tiny_toy_config(total_steps=STEPS), single)
  sharded = str(tmp_path / "sharded")
  process = run_python(
      _EIGHT_DEVICE_RUN.format(test_dirs=_TEST_DIRS, steps=STEPS, workdir=sharded),
      env=EIGHT_CPU_DEVICES)
  assert process.returncode == 0, process.stderr[-3000:]
  assert process.stdout.split()[-2:] == ["completed", str(STEPS)]
  expected, actual = train_records(single), train_records(sharded)
  for step in range(1, STEPS + 1):
    assert actual[step]["batch_checksum"] == pytest.approx(expected[step]["batch_checksum"],
                                                          rel=1e-5)
    np.testing.assert_allclose(actual[step]["loss"], expected[step]["loss"], rtol=1e-4,
                               err_msg=f"step {step}")


@pytest.mark.slow
def test_two_processes_train_then_one_process_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  command = [os.path.join(REPO_ROOT, "launch", "local_multiprocess.sh"), "2",
             "--config=configs/toy.py:tiny", f"--workdir={workdir}",
             *override_flags(total_steps=10, checkpoint_every_steps=5)]
  process = run_command(command)
  assert process.returncode == 0, process.stderr[-3000:]
  summaries = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
  assert len(summaries) == 2 and summaries[0]["loss"] == summaries[1]["loss"]
  for step in (5, 10):
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", str(step), "input"))) == [
        "commit_success.txt", "process_0_of_2", "process_1_of_2"]
  two_process_records = train_records(workdir)
  assert sorted(two_process_records) == list(range(1, 11))

  # The same global batches as one process with the same seed: the loss curve matches.
  single = str(tmp_path / "single")
  trainer.train(tiny_toy_config(total_steps=10, checkpoint_every_steps=5), single)
  for step, record in train_records(single).items():
    np.testing.assert_allclose(two_process_records[step]["loss"], record["loss"], rtol=1e-4)

  # One process restores the two-process checkpoint (another mesh) and trains on.
  result = trainer.train(tiny_toy_config(total_steps=15, checkpoint_every_steps=5), workdir)
  assert result.status == "completed" and result.step == 15
  assert sorted(train_records(workdir)) == list(range(1, 16))
  params_10, _ = checkpoint_lib.restore_params(workdir, step=10)
  params_15, _ = checkpoint_lib.restore_params(workdir, step=15)
  kernel_10 = params_10["Dense_0"]["kernel"]
  assert np.all(np.isfinite(params_15["Dense_0"]["kernel"]))
  assert not np.array_equal(kernel_10, params_15["Dense_0"]["kernel"])
