"""Memory / precision options reach the model: scanned + rematerialised layers, bf16 matmuls."""
import jax
import numpy as np
import pytest

from train_testing import tiny_toy_config
from vlp_jax.models import toy
from vlp_jax.train import checkpoint as checkpoint_lib
from vlp_jax.train import memory, trainer


def test_remat_policy_names():
  assert memory.remat_policy("none") is None and not memory.uses_remat("none")
  assert memory.uses_remat("full")
  with pytest.raises(ValueError, match="unknown remat policy 'most'"):
    memory.remat_policy("most")


def test_scan_remat_bf16_run_trains_with_float32_params_and_loss(tmp_path):
  config = tiny_toy_config(total_steps=4, checkpoint_every_steps=4, scan_layers=True,
                           remat_policy="full", dtype="bfloat16")
  config.optimizer.accumulation_steps = 2
  result = trainer.train(config, str(tmp_path))
  assert result.status == "completed" and np.isfinite(result.metrics["loss"])
  params, _ = checkpoint_lib.restore_params(str(tmp_path))
  kernel = params["blocks"]["Dense_0"]["kernel"]
  assert kernel.shape == (config.model.num_layers, config.model.width, config.model.mlp_dim)
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
  model = toy.build(config)
  params_abstract, _ = jax.eval_shape(model.init, jax.random.key(0))
  batch = next(toy.make_toy_pipeline(config.data, split="train", train=True,
                                     global_batch_size=8, seed=0))
  loss, metrics, _ = model.loss_fn(params, {"feature_mean": np.zeros(16, np.float32)}, batch,
                                   jax.random.key(0))
  assert loss.dtype == np.float32 and metrics["cross_entropy"].dtype == np.float32
  assert jax.tree.structure(toy.nn.meta.unbox(params_abstract)) == jax.tree.structure(params)
