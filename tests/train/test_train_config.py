"""Config validation: each bad config fails before anything compiles, naming the field."""
import os

import jax
import pytest

from subprocess_testing import run_module
from train_testing import tiny_toy_config
from vlp_jax.train import config as config_lib
from vlp_jax.train import trainer


def test_toy_config_is_valid_and_mesh_fills_remaining_devices():
  config = tiny_toy_config()
  config.mesh.update(dict(data=-1, fsdp=2, tensor=1))
  assert config_lib.validate_config(config, num_devices=8) == {"data": 4, "fsdp": 2, "tensor": 1}


@pytest.mark.parametrize("mutate,num_devices,message", [
    (lambda c: c.__setattr__("total_step", 3), 1, "config.total_step is not a known field"),
    (lambda c: c.model.__setattr__("widht", 3), 1, "config.model.widht is not a known field"),
    (lambda c: c.optimizer.__setattr__("lr", 3), 1, "config.optimizer.lr is not a known field"),
    (lambda c: c.__setattr__("global_batch_size", 10), 4,
     "config.global_batch_size=10 does not divide over mesh data*fsdp=4"),
    (lambda c: c.mesh.update(dict(data=2, fsdp=2, tensor=1)), 8,
     "config.mesh={'data': 2, 'fsdp': 2, 'tensor': 1} multiplies to 4, but there are 8 devices"),
    (lambda c: c.mesh.update(dict(data=-1, fsdp=-1, tensor=1)), 8, "config.mesh"),
    (lambda c: c.optimizer.__setattr__("accumulation_steps", 3), 1,
     "config.optimizer.accumulation_steps=3"),
    (lambda c: c.__setattr__("dtype", "float8"), 1, "config.dtype='float8'"),
    (lambda c: c.__setattr__("remat_policy", "most"), 1, "config.remat_policy='most'"),
    (lambda c: c.model.__setattr__("family", "nope"), 1, "config.model.family='nope'"),
    (lambda c: c.model.__setattr__("variant", "huge"), 1, "config.model.variant"),
])
def test_invalid_config_names_the_field(mutate, num_devices, message):
  config = tiny_toy_config()
  config.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  mutate(config)
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate_config(config, num_devices=num_devices)
  assert message in str(error.value)


def test_missing_dataset_names_data_dir(tmp_path, monkeypatch):
  config = tiny_toy_config()
  config.data.name = "shapes"
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  with pytest.raises(config_lib.ConfigError, match=r"config.data.data_dir=.*'shapes' not found"):
    config_lib.validate_config(config, num_devices=1)
  (tmp_path / "tfds" / "shapes").mkdir(parents=True)
  config_lib.validate_config(config, num_devices=1)


def test_train_rejects_bad_config_before_building_anything(tmp_path, monkeypatch):
  """The trainer validates first: no model build, no compilation, no workdir."""
  compiled = []
  monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(a) or (lambda *_: None))
  config = tiny_toy_config(global_batch_size=10)
  config.mesh.update(dict(data=4, fsdp=1, tensor=1))
  with pytest.raises(config_lib.ConfigError, match="config.mesh"):
    trainer.train(config, str(tmp_path / "run"))
  config = tiny_toy_config()
  config.total_step = 5
  with pytest.raises(config_lib.ConfigError, match="config.total_step is not a known field"):
    trainer.train(config, str(tmp_path / "run"))
  assert not compiled
  assert not os.path.exists(tmp_path / "run")


def test_train_cli_exits_2_naming_the_field(tmp_path):
  process = run_module("vlp_jax.train", [
      "--config=configs/toy.py:tiny", f"--workdir={tmp_path / 'run'}", "--config.mesh.data=4",
      "--config.mesh.fsdp=2", "--config.global_batch_size=12"],
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert process.returncode == 2, process.stderr[-2000:]
  assert ("invalid config: config.global_batch_size=12 does not divide over mesh data*fsdp=8"
          in process.stderr)
  assert not os.path.exists(tmp_path / "run")
