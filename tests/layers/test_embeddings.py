"""TextEmbeddings (BERT style, tied head) and PatchEmbedding."""
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from vlp_jax.layers import PatchEmbedding, TextEmbeddings

B, T, V, D, P = 2, 5, 13, 8, 16


def _layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


@functools.lru_cache(maxsize=None)
def _text_embeddings() -> tuple[TextEmbeddings, dict]:
  module = TextEmbeddings(vocab_size=V, hidden_size=D, max_length=P, type_vocab_size=2,
                          dropout_rate=0.1)
  variables = jax.jit(module.init)(jax.random.key(0), np.zeros((B, T), np.int32))
  params = jax.tree_util.tree_map(np.asarray, nn.unbox(variables["params"]))
  rng = np.random.default_rng(0)
  params["layer_norm"] = {"scale": rng.normal(size=D).astype(np.float32),
                          "bias": rng.normal(size=D).astype(np.float32)}
  return module, params


def test_text_embeddings_sum_tables_then_layer_norm():
  module, params = _text_embeddings()
  ids = np.random.default_rng(1).integers(0, V, (B, T)).astype(np.int32)
  types = np.random.default_rng(2).integers(0, 2, (B, T)).astype(np.int32)
  out = jax.jit(module.apply)({"params": params}, ids, token_type_ids=types)
  summed = (params["word_embeddings"]["embedding"][ids]
            + params["position_embeddings"]["embedding"][np.arange(T)][None]
            + params["token_type_embeddings"]["embedding"][types])
  expected = _layer_norm(summed, params["layer_norm"]["scale"], params["layer_norm"]["bias"],
                         1e-12)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_position_ids_offset_for_decoding():
  module, params = _text_embeddings()
  ids = np.random.default_rng(3).integers(0, V, (B, T)).astype(np.int32)
  apply = jax.jit(module.apply)
  full = apply({"params": params}, ids)
  last = apply({"params": params}, ids[:, -1:], position_ids=np.array([[T - 1]]))
  np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-6)


def test_tied_output_head_and_dropout():
  module, params = _text_embeddings()
  hidden = np.random.default_rng(4).normal(size=(B, T, D)).astype(np.float32)
  logits = jax.jit(functools.partial(module.apply, method=TextEmbeddings.attend))(
      {"params": params}, hidden)
  np.testing.assert_allclose(logits, hidden @ params["word_embeddings"]["embedding"].T,
                             atol=1e-5)
  ids = np.ones((B, T), np.int32)
  train = jax.jit(functools.partial(module.apply, deterministic=False))(
      {"params": params}, ids, rngs={"dropout": jax.random.key(0)})
  assert (np.asarray(train) == 0).any()
  with pytest.raises(ValueError, match="type_vocab_size=0"):
    TextEmbeddings(vocab_size=V, hidden_size=D, max_length=P).init(
        jax.random.key(0), ids, token_type_ids=ids)


def test_patch_embedding_is_a_linear_map_of_row_major_patches():
  module = PatchEmbedding(hidden_size=D, patch_size=4)
  images = np.random.default_rng(5).normal(size=(B, 8, 12, 3)).astype(np.float32)
  variables = jax.jit(module.init)(jax.random.key(0), images)
  params = jax.tree_util.tree_map(np.asarray, nn.unbox(variables["params"]["projection"]))
  out = jax.jit(module.apply)(variables, images)
  assert out.shape == (B, 2 * 3, D)
  patches = images.reshape(B, 2, 4, 3, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(B, 6, 48)
  expected = patches @ params["kernel"].reshape(48, D) + params["bias"]
  np.testing.assert_allclose(out, expected, atol=1e-5)
  with pytest.raises(ValueError, match="multiple of patch size"):
    module.init(jax.random.key(0), images[:, :7])
