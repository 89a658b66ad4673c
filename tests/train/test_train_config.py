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
    (lambda c: c.optimizer.__setattr__("frozen_regex", "(["), 1,
     "config.optimizer.frozen_regex='([' is not a regex"),
    (lambda c: c.optimizer.__setattr__("lr_multipliers", (("^a", 2.0), ("b)", 2.0))), 1,
     "config.optimizer.lr_multipliers[1]='b)' is not a regex"),
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


def test_train_rejects_param_patterns_matching_no_param_before_compiling(tmp_path, monkeypatch):
  """A misspelt param path in `lr_multipliers` (or the other param regexes) would change
  nothing; the trainer stops on it once the params' shapes are known, before it initialises
  (compiles) anything."""
  def compiles(*args, **kwargs):
    raise AssertionError("the trainer went past the param patterns' check")
  monkeypatch.setattr(trainer.state_lib, "init_train_state", compiles)
  monkeypatch.setattr(trainer.step_lib, "make_train_step", compiles)
  config = tiny_toy_config()
  config.optimizer.lr_multipliers = (("kernel", 0.5), ("^embeding/", 2.0))
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.optimizer.lr_multipliers\[1\]='\^embeding/' matches no parameter"):
    trainer.train(config, str(tmp_path / "run"))
  config.optimizer.lr_multipliers = ()
  config.optimizer.no_decay_regex = "^no_such_layer/"
  with pytest.raises(config_lib.ConfigError, match="config.optimizer.no_decay_regex"):
    trainer.train(config, str(tmp_path / "run"))


def test_train_cli_exits_2_naming_the_field(tmp_path):
  process = run_module("vlp_jax.train", [
      "--config=configs/toy.py:tiny", f"--workdir={tmp_path / 'run'}", "--config.mesh.data=4",
      "--config.mesh.fsdp=2", "--config.global_batch_size=12"],
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert process.returncode == 2, process.stderr[-2000:]
  assert ("invalid config: config.global_batch_size=12 does not divide over mesh data*fsdp=8"
          in process.stderr)
  assert not os.path.exists(tmp_path / "run")
