"""Toy family: an MLP on synthetic features (tests, and a template for new families).

  python -m vlp_jax.train --config=configs/toy.py:tiny --workdir=runs/toy
  python -m vlp_jax.evaluate --config=configs/toy.py:tiny --workdir=runs/toy
Variants: tiny (~9k params), small (~2.2M params).
"""
import ml_collections

from vlp_jax.train.config import run_config


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
  config = run_config("toy", variant or "tiny")
  config.total_steps = 200
  config.global_batch_size = 32
  config.log_every_steps = 20
  config.checkpoint_every_steps = 100
  config.eval_every_steps = 100
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 10
  config.optimizer.weight_decay = 1e-4
  return config
