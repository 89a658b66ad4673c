"""Every parameter carries logical axis names; constraints resolve under a mesh with rules."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from vlp_jax.layers import (MLP, MultiHeadAttention, PatchEmbedding, TextEmbeddings,
                            TransformerBlock, TransformerStack)

B, T, S, D = 2, 4, 3, 8
KNOWN_NAMES = {"embed", "mlp", "heads", "kv", "vocab", "conv_in", "conv_out", "conv_height",
               "conv_width", "layers", None}
TEXT = np.zeros((B, T), np.int32)
X = np.ones((B, T, D), np.float32)
MEMORY = np.ones((B, S, 6), np.float32)

MODULES = {
    "attention": (MultiHeadAttention(num_heads=2), (X, MEMORY)),
    "mlp": (MLP(hidden_dim=16), (X,)),
    "block": (TransformerBlock(num_heads=2, mlp_dim=16, cross_attention=True,
                               self_attention_variants=("a", "b")), (X, MEMORY)),
    "stack": (TransformerStack(num_heads=2, mlp_dim=16, num_layers=2), (X,)),
    "scanned_stack": (TransformerStack(num_heads=2, mlp_dim=16, num_layers=2,
                                       scan_layers=True, remat_policy="full"), (X,)),
    "text_embeddings": (TextEmbeddings(vocab_size=11, hidden_size=D, max_length=T,
                                       type_vocab_size=2), (TEXT,)),
    "patch_embedding": (PatchEmbedding(hidden_size=D, patch_size=2),
                        (np.ones((B, 4, 4, 3), np.float32),)),
}


def _abstract_variables(module: nn.Module, args: tuple) -> dict:
  return jax.eval_shape(functools.partial(module.init, jax.random.key(0)), *args)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_param_has_logical_axis_names(name: str):
  module, args = MODULES[name]
  params = _abstract_variables(module, args)["params"]
  leaves = jax.tree_util.tree_leaves_with_path(
      params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves
  for path, leaf in leaves:
    where = jax.tree_util.keystr(path)
    assert isinstance(leaf, nn.Partitioned), f"{where} has no logical axis names"
    assert len(leaf.names) == leaf.value.ndim, where
    assert set(leaf.names) <= KNOWN_NAMES, where
    assert any(n is not None for n in leaf.names), where
  specs = nn.get_partition_spec(params)
  assert all(isinstance(spec, PartitionSpec)
             for spec in jax.tree_util.tree_leaves(
                 specs, is_leaf=lambda x: isinstance(x, PartitionSpec)))


def test_expected_names_on_key_params():
  params = _abstract_variables(*MODULES["scanned_stack"])["params"]
  specs = nn.get_partition_spec(params)["layers"]
  assert specs["self_attention"]["attention"]["query"]["kernel"] == PartitionSpec(
      "layers", "embed", "heads", "kv")
  assert specs["self_attention"]["attention"]["out"]["kernel"] == PartitionSpec(
      "layers", "heads", "kv", "embed")
  assert specs["feed_forward"]["mlp"]["fc1"]["kernel"] == PartitionSpec("layers", "embed", "mlp")
  assert specs["feed_forward"]["layer_norm"]["scale"] == PartitionSpec("layers", "embed")
  embeddings = nn.get_partition_spec(_abstract_variables(*MODULES["text_embeddings"])["params"])
  assert embeddings["word_embeddings"]["embedding"] == PartitionSpec("vocab", "embed")


def test_sharded_init_and_forward_under_a_mesh_with_rules():
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  rules = (("activation_batch", ("data", "fsdp")), ("activation_length", None),
           ("activation_embed", "tensor"), ("activation_heads", "tensor"),
           ("activation_kv", None), ("embed", "fsdp"), ("mlp", "tensor"),
           ("heads", "tensor"), ("kv", None), ("layers", None))
  module, args = MODULES["scanned_stack"]
  with mesh, nn.logical_axis_rules(rules):
    abstract = _abstract_variables(module, args)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
    variables = jax.jit(functools.partial(module.init, jax.random.key(0)),
                        out_shardings=shardings)(*args)
    out = jax.jit(module.apply)(variables, *args)
  assert out.shape == (B, T, D) and jnp.isfinite(out).all()
