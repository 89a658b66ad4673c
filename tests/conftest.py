"""Shared pytest setup: quiet TensorFlow, keep it off accelerators, fixed random streams."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")
jax.config.update("jax_threefry_partitionable", True)
