"""Shared types, initialisers and the LayerNorm factory used by every layer module."""
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Array = Any  # jax.Array; kept loose so numpy inputs type-check too.
Dtype = Any
Initializer = Callable[..., Any]

default_kernel_init: Initializer = nn.initializers.xavier_uniform()
default_bias_init: Initializer = nn.initializers.zeros_init()
default_embedding_init: Initializer = nn.initializers.normal(stddev=0.02)

# Logical names of key activations (no-ops without a mesh and rules).
BATCH_LENGTH_EMBED = ("activation_batch", "activation_length", "activation_embed")
BATCH_LENGTH_MLP = ("activation_batch", "activation_length", "activation_mlp")
BATCH_LENGTH_HEADS_KV = ("activation_batch", "activation_length", "activation_heads",
                         "activation_kv")


def layer_norm(epsilon: float, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.LayerNorm:
  """LayerNorm over the last axis with `embed`-named scale/bias.

  Statistics and normalisation run in float32 whatever `dtype` is; the output is cast to
  `dtype`.
  """
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, force_float32_reductions=True,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
      name=name)
