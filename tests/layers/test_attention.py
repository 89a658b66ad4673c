"""MultiHeadAttention: masks, padding invariance, causality, DETR positions, KV cache, dtypes."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax.layers import MultiHeadAttention, create_decode_cache, dot_product_attention

B, T, S, D, DM, H = 2, 6, 5, 16, 24, 4


def _normal(seed: int, *shape: int) -> np.ndarray:
  """Test data from numpy: no per-op compilation, unlike eager jax.random."""
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  return _normal(seed, B, T, D), _normal(seed + 100, B, S, DM)


@functools.lru_cache(maxsize=None)
def _attention_and_params(cross: bool) -> tuple[MultiHeadAttention, dict]:
  module = MultiHeadAttention(num_heads=H)
  x, memory = _inputs()
  params = jax.jit(module.init)(jax.random.key(1), x, memory if cross else None)["params"]
  return module, params


def _apply(cross: bool, x, memory=None, **kwargs) -> jax.Array:
  module, params = _attention_and_params(cross)
  static = {k: v for k, v in kwargs.items() if isinstance(v, bool)}
  arrays = {k: v for k, v in kwargs.items() if not isinstance(v, bool)}
  apply = jax.jit(functools.partial(module.apply, **static))
  return apply({"params": params}, x, memory, **arrays)


def test_param_shapes_convert_from_torch_linear_by_transpose_and_reshape():
  _, params = _attention_and_params(cross=True)
  shapes = jax.tree_util.tree_map(jnp.shape, nn.unbox(params))
  assert shapes["query"] == {"kernel": (D, H, D // H), "bias": (H, D // H)}
  assert shapes["key"] == {"kernel": (DM, H, D // H), "bias": (H, D // H)}
  assert shapes["value"] == {"kernel": (DM, H, D // H), "bias": (H, D // H)}
  assert shapes["out"] == {"kernel": (H, D // H, D), "bias": (D,)}


def test_self_attention_matches_reference_formula():
  module, params = _attention_and_params(cross=False)
  x, _ = _inputs()
  p = jax.tree_util.tree_map(np.asarray, nn.unbox(params))
  q = np.einsum("btd,dhk->bthk", x, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("btd,dhk->bthk", x, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("btd,dhk->bthk", x, p["value"]["kernel"]) + p["value"]["bias"]
  logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(D // H)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  context = np.einsum("bhqs,bshk->bqhk", weights, v)
  expected = np.einsum("bqhk,hkd->bqd", context, p["out"]["kernel"]) + p["out"]["bias"]
  np.testing.assert_allclose(_apply(False, x), expected, atol=1e-5)


@pytest.mark.parametrize("cross", [False, True])
def test_padding_does_not_change_real_positions(cross: bool):
  x, memory = _inputs()
  pad = 3
  garbage = 100.0 * _normal(7, B, pad, D)
  if cross:
    expected = _apply(True, x, memory)
    memory_garbage = 100.0 * _normal(8, B, pad, DM)
    padded_memory = jnp.concatenate([memory, memory_garbage], axis=1)
    mask = jnp.arange(S + pad)[None, :] < S
    out = _apply(True, x, padded_memory, key_padding_mask=jnp.broadcast_to(mask, (B, S + pad)))
  else:
    expected = _apply(False, x)
    padded = jnp.concatenate([x, garbage], axis=1)
    mask = jnp.broadcast_to(jnp.arange(T + pad)[None, :] < T, (B, T + pad))
    out = _apply(False, padded, key_padding_mask=mask)[:, :T]
  np.testing.assert_allclose(out[:, :T], expected, atol=1e-5)


def test_per_example_padding_and_full_mask_combine():
  x, _ = _inputs()
  lengths = jnp.array([4, 6])
  key_padding_mask = jnp.arange(T)[None, :] < lengths[:, None]
  out = _apply(False, x, key_padding_mask=key_padding_mask)
  full_mask = key_padding_mask[:, None, None, :]  # the same, as a [B, 1, 1, T] mask
  np.testing.assert_allclose(_apply(False, x, mask=full_mask), out, atol=1e-6)
  # Example 0 on its own, truncated to its length, gives the same real outputs.
  alone = _apply(False, x[:1, :4])
  np.testing.assert_allclose(out[0, :4], alone[0], atol=1e-5)


def test_fully_masked_rows_stay_finite_with_and_without_dropout():
  module, params = _attention_and_params(cross=False)
  x, _ = _inputs()
  mask = np.zeros((B, 1, T, T), bool)
  mask[:, :, :2, :3] = True  # rows 2.. see nothing
  out = _apply(False, x, mask=mask)
  dropped = jax.jit(functools.partial(
      MultiHeadAttention(num_heads=H, dropout_rate=0.5).apply, deterministic=False))(
          {"params": params}, x, mask=mask, rngs={"dropout": jax.random.key(3)})
  grads = jax.jit(jax.grad(lambda x: module.apply({"params": params}, x, mask=mask).sum()))(x)
  assert np.isfinite(out).all() and np.isfinite(dropped).all() and np.isfinite(grads).all()


def test_causal_attention_never_looks_ahead():
  module, params = _attention_and_params(cross=False)
  x, _ = _inputs()
  t = 3
  out = _apply(False, x, causal=True)
  perturbed = x.copy()
  perturbed[:, t + 1:] += 50.0
  out_perturbed = _apply(False, perturbed, causal=True)
  np.testing.assert_allclose(out_perturbed[:, :t + 1], out[:, :t + 1], atol=1e-6)
  assert not np.allclose(out_perturbed[:, t + 1:], out[:, t + 1:])
  grads = jax.jit(jax.grad(
      lambda x: module.apply({"params": params}, x, causal=True)[:, t].sum()))(x)
  assert np.all(grads[:, t + 1:] == 0.0)
  assert np.any(grads[:, :t + 1] != 0.0)


def test_attention_core_matches_jax_attention_values_and_gradients():
  q, k, v = _normal(4, B, T, H, 8), _normal(5, B, S, H, 8), _normal(6, B, S, H, 8)
  mask = np.random.default_rng(7).random((B, 1, T, S)) < 0.7
  mask[..., 0] = True
  weights = _normal(8, B, T, H, 8)
  for causal in (False, True):
    reference = functools.partial(jax.nn.dot_product_attention, mask=mask, is_causal=causal)
    ours = functools.partial(dot_product_attention, mask=mask, causal=causal)
    np.testing.assert_allclose(jax.jit(ours)(q, k, v), jax.jit(reference)(q, k, v), atol=1e-5)
    for got, expected in zip(
        jax.grad(lambda *qkv: jnp.sum(ours(*qkv) * weights), argnums=(0, 1, 2))(q, k, v),
        jax.grad(lambda *qkv: jnp.sum(reference(*qkv) * weights), argnums=(0, 1, 2))(q, k, v)):
      np.testing.assert_allclose(got, expected, atol=1e-5)


def test_attention_dropout_is_active_only_when_not_deterministic():
  module = MultiHeadAttention(num_heads=H, dropout_rate=0.5)
  x, _ = _inputs()
  _, params = _attention_and_params(cross=False)
  eval_out = jax.jit(module.apply)({"params": params}, x)
  np.testing.assert_allclose(eval_out, _apply(False, x), atol=1e-6)
  train = jax.jit(functools.partial(module.apply, deterministic=False))
  train_a = train({"params": params}, x, rngs={"dropout": jax.random.key(1)})
  train_b = train({"params": params}, x, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(train_a, eval_out) and not np.allclose(train_a, train_b)


def test_detr_positions_go_to_queries_and_keys_not_values():
  module, params = _attention_and_params(cross=True)
  x, memory = _inputs()
  query_pos, key_pos = _normal(9, 1, T, D), _normal(10, 1, S, DM)
  out = _apply(True, x, memory, query_pos=query_pos, key_pos=key_pos)
  p = jax.tree_util.tree_map(np.asarray, nn.unbox(params))
  q = np.einsum("btd,dhk->bthk", x + query_pos, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("bsd,dhk->bshk", memory + key_pos, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("bsd,dhk->bshk", memory, p["value"]["kernel"]) + p["value"]["bias"]
  logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(D // H)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  context = np.einsum("bhqs,bshk->bqhk", weights, v)
  expected = np.einsum("bqhk,hkd->bqd", context, p["out"]["kernel"]) + p["out"]["bias"]
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_self_attention_decoding_with_cache_matches_causal_forward():
  module, params = _attention_and_params(cross=False)
  x, _ = _inputs()
  full = _apply(False, x, causal=True)
  cache = jax.jit(functools.partial(create_decode_cache, module))({"params": params},
                                                                  np.zeros_like(x))
  assert cache["cached_key"].shape == (B, T, H, D // H)
  step = jax.jit(lambda cache, x_t: module.apply({"params": params, "cache": cache}, x_t,
                                                 decode=True, mutable=["cache"]))
  # A 2-token prefill, then one token at a time.
  outputs = []
  for start, stop in [(0, 2)] + [(t, t + 1) for t in range(2, T)]:
    out, state = step(cache, x[:, start:stop])
    cache = state["cache"]
    outputs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), full, atol=1e-5)
  assert int(cache["cache_index"]) == T


def test_cross_attention_cache_holds_projected_memory():
  module, params = _attention_and_params(cross=True)
  x, memory = _inputs()
  expected = _apply(True, x, memory)
  cache = jax.jit(functools.partial(create_decode_cache, module))({"params": params},
                                                                  x[:, :1], memory)
  p = jax.tree_util.tree_map(np.asarray, nn.unbox(params))
  np.testing.assert_allclose(
      cache["cached_key"], np.einsum("bsd,dhk->bshk", memory, p["key"]["kernel"])
      + p["key"]["bias"], atol=1e-5)
  # Later steps read the cache: the memory passed in is not projected again.
  other_memory = np.zeros_like(memory)
  out, _ = jax.jit(functools.partial(module.apply, decode=True, mutable=["cache"]))(
      {"params": params, "cache": cache}, x, other_memory)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_is_close_to_float32():
  x, memory = _inputs()
  _, params = _attention_and_params(cross=True)
  out32 = _apply(True, x, memory)
  out16 = jax.jit(MultiHeadAttention(num_heads=H, dtype=jnp.bfloat16).apply)(
      {"params": params}, x, memory)
  assert out16.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(nn.unbox(params)))
  np.testing.assert_allclose(out16.astype(jnp.float32), out32, atol=0.1, rtol=0.05)


def test_separate_head_dim_and_output_width():
  module = MultiHeadAttention(num_heads=2, head_dim=3, out_features=5)
  x, memory = _inputs()
  variables = jax.jit(module.init)(jax.random.key(0), x, memory)
  assert jax.jit(module.apply)(variables, x, memory).shape == (B, T, 5)
  assert nn.unbox(variables)["params"]["key"]["kernel"].shape == (DM, 2, 3)
  with pytest.raises(ValueError, match="not divisible"):
    MultiHeadAttention(num_heads=3).init(jax.random.key(0), x)
