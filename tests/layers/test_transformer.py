"""Transformer blocks and stacks: padding, KV-cache decoding, variants, scan/remat, DETR."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax.layers import (AttentionSublayer, FeedForwardSublayer, TransformerBlock,
                            TransformerStack, create_decode_cache)

B, T, S, D, DM, H, MLP_DIM = 2, 6, 5, 16, 24, 4, 32
VARIANTS = ("self_attention", "causal_self_attention")


def _normal(seed: int, *shape: int) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _inputs() -> tuple[np.ndarray, np.ndarray]:
  return _normal(0, B, T, D), _normal(1, B, S, DM)


def _apply(module: nn.Module, variables, *args, **kwargs):
  """Jitted `module.apply`, with Python bool/str keyword arguments kept static."""
  static = {k: v for k, v in kwargs.items() if isinstance(v, (bool, str, list))}
  arrays = {k: v for k, v in kwargs.items() if k not in static}
  return jax.jit(functools.partial(module.apply, **static))(variables, *args, **arrays)


def _init(module: nn.Module, *args, **kwargs):
  static = {k: v for k, v in kwargs.items() if isinstance(v, (bool, str))}
  arrays = {k: v for k, v in kwargs.items() if k not in static}
  return jax.jit(functools.partial(module.init, **static))(jax.random.key(0), *args, **arrays)


def _decoder_block(norm_position: str = "post") -> TransformerBlock:
  return TransformerBlock(num_heads=H, mlp_dim=MLP_DIM, norm_position=norm_position,
                          cross_attention=True, self_attention_variants=VARIANTS,
                          layer_norm_epsilon=1e-12)


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_block_padding_does_not_change_real_positions(norm_position: str):
  block = _decoder_block(norm_position)
  x, memory = _inputs()
  variables = _init(block, x, memory)
  expected = _apply(block, variables, x, memory)
  pad = 3
  padded_x = np.concatenate([x, 100 * _normal(2, B, pad, D)], axis=1)
  padded_memory = np.concatenate([memory, 100 * _normal(3, B, pad, DM)], axis=1)
  padding_mask = np.broadcast_to(np.arange(T + pad) < T, (B, T + pad))
  memory_padding_mask = np.broadcast_to(np.arange(S + pad) < S, (B, S + pad))
  out = _apply(block, variables, padded_x, padded_memory, padding_mask=padding_mask,
               memory_padding_mask=memory_padding_mask)
  np.testing.assert_allclose(out[:, :T], expected, atol=1e-5)


def test_variants_share_everything_but_self_attention():
  """BLIP: the decoder is the encoder with a causal self-attention of its own."""
  block = _decoder_block()
  x, memory = _inputs()
  params = nn.unbox(_init(block, x, memory)["params"])
  assert set(params) == {"self_attention", "causal_self_attention", "cross_attention",
                         "feed_forward"}
  encode = jax.jit(lambda p: block.apply({"params": p}, x, memory))
  decode = jax.jit(lambda p: block.apply({"params": p}, x, memory, causal=True,
                                         self_attention_variant="causal_self_attention"))
  encoded, decoded = encode(params), decode(params)
  assert not np.allclose(encoded, decoded)

  def perturb(name: str) -> dict:
    return {**params, name: jax.tree_util.tree_map(lambda a: a + 0.5, params[name])}

  np.testing.assert_allclose(decode(perturb("self_attention")), decoded, atol=1e-6)
  np.testing.assert_allclose(encode(perturb("causal_self_attention")), encoded, atol=1e-6)
  for shared in ("cross_attention", "feed_forward"):
    assert not np.allclose(decode(perturb(shared)), decoded)
    assert not np.allclose(encode(perturb(shared)), encoded)


def test_cross_attention_is_skipped_without_memory_and_misuse_raises():
  block = _decoder_block()
  x, memory = _inputs()
  variables = _init(block, x, memory)
  text_only = _apply(block, variables, x)  # BLIP's unimodal text encoder
  assert text_only.shape == (B, T, D)
  assert not np.allclose(text_only, _apply(block, variables, x, memory))
  plain = TransformerBlock(num_heads=H, mlp_dim=MLP_DIM)
  with pytest.raises(ValueError, match="cross_attention=False"):
    plain.init(jax.random.key(0), x, memory)
  with pytest.raises(ValueError, match="unknown self-attention variant"):
    _apply(block, variables, x, self_attention_variant="missing")


def test_block_causal_self_attention_never_looks_ahead():
  block = _decoder_block()
  x, memory = _inputs()
  variables = _init(block, x, memory)
  t = 2
  grads = jax.jit(jax.grad(lambda x: block.apply(variables, x, memory, causal=True)[:, t].sum()))(x)
  assert np.all(grads[:, t + 1:] == 0.0) and np.any(grads[:, :t + 1] != 0.0)


def _decode_step_by_step(module, variables, x, memory, memory_padding_mask, **kwargs):
  """Prefill 2 tokens, then one token per step; returns [B, T, D]."""
  params = {"params": variables["params"]}
  cache = jax.jit(functools.partial(create_decode_cache, module, **kwargs))(
      params, np.zeros_like(x), memory, memory_padding_mask=memory_padding_mask)
  step = jax.jit(functools.partial(module.apply, decode=True, mutable=["cache"], **kwargs))
  outputs = []
  for start, stop in [(0, 2)] + [(t, t + 1) for t in range(2, x.shape[1])]:
    out, state = step({**params, "cache": cache}, x[:, start:stop], memory,
                      memory_padding_mask=memory_padding_mask)
    cache = state["cache"]
    outputs.append(out)
  return np.concatenate(outputs, axis=1)


def test_kv_cache_decoding_matches_full_causal_forward_for_a_decoder_block():
  block = TransformerBlock(num_heads=H, mlp_dim=MLP_DIM, cross_attention=True,
                           layer_norm_epsilon=1e-12)
  x, memory = _inputs()
  memory_padding_mask = np.array([[True] * S, [True] * (S - 2) + [False] * 2])
  variables = _init(block, x, memory)
  full = _apply(block, variables, x, memory, memory_padding_mask=memory_padding_mask,
                causal=True)
  stepped = _decode_step_by_step(block, variables, x, memory, memory_padding_mask)
  np.testing.assert_allclose(stepped, full, atol=1e-5)


def test_kv_cache_decoding_through_a_scanned_remat_stack_with_the_causal_variant():
  stack = TransformerStack(num_heads=H, mlp_dim=MLP_DIM, cross_attention=True,
                           self_attention_variants=VARIANTS, num_layers=2, scan_layers=True,
                           remat_policy="full", layer_norm_epsilon=1e-12)
  x, memory = _inputs()
  memory_padding_mask = np.array([[True] * S, [True] * (S - 1) + [False]])
  variables = _init(stack, x, memory)
  options = dict(causal=True, self_attention_variant="causal_self_attention")
  full = _apply(stack, variables, x, memory, memory_padding_mask=memory_padding_mask,
                **options)
  stepped = _decode_step_by_step(stack, variables, x, memory, memory_padding_mask, **options)
  np.testing.assert_allclose(stepped, full, atol=1e-5)


def _stack_params_of_layers(unrolled: dict, num_layers: int) -> dict:
  """{layers_i: tree} -> {layers: tree with a leading [L] axis}."""
  layers = [unrolled[f"layers_{i}"] for i in range(num_layers)]
  return {"layers": jax.tree_util.tree_map(lambda *a: jnp.stack(a), *layers)}


_STACK_SETTINGS = dict(num_heads=H, mlp_dim=MLP_DIM, cross_attention=True, num_layers=2,
                       norm_position="pre", return_all_layers=True)
_PADDING_MASK = np.array([[True] * T, [True] * (T - 2) + [False] * 2])


def _loss_and_grads(module: TransformerStack):
  def loss(params, x, memory):
    final, all_layers = module.apply({"params": params}, x, memory, padding_mask=_PADDING_MASK)
    return (final ** 2).sum() + all_layers.sum(), (final, all_layers)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


@functools.lru_cache(maxsize=None)
def _unrolled_stack_results():
  """Params, outputs and gradients of the plain unrolled stack, computed once."""
  reference = TransformerStack(**_STACK_SETTINGS)
  x, memory = _inputs()
  params = nn.unbox(_init(reference, x, memory)["params"])
  (_, outputs), grads = _loss_and_grads(reference)(params, x, memory)
  return params, outputs, grads


@pytest.mark.parametrize("scan_layers,remat_policy", [(False, "full"), (True, "none"),
                                                      (True, "dots")])
def test_scan_and_remat_match_the_unrolled_stack(scan_layers: bool, remat_policy: str):
  num_layers = _STACK_SETTINGS["num_layers"]
  variant = TransformerStack(**_STACK_SETTINGS, scan_layers=scan_layers,
                             remat_policy=remat_policy)
  x, memory = _inputs()
  params, (final, all_layers), (grad_p, grad_x) = _unrolled_stack_results()
  variant_params = _stack_params_of_layers(params, num_layers) if scan_layers else params
  if scan_layers:  # the scanned init has the structure of the converted tree
    init_shapes = jax.eval_shape(functools.partial(variant.init, jax.random.key(0)), x, memory)
    assert (jax.tree_util.tree_map(jnp.shape, nn.unbox(init_shapes["params"]))
            == jax.tree_util.tree_map(jnp.shape, variant_params))
  (_, (final_v, all_layers_v)), (grad_pv, grad_xv) = _loss_and_grads(variant)(
      variant_params, x, memory)
  assert all_layers.shape == (num_layers, B, T, D)
  np.testing.assert_allclose(all_layers[-1], final, atol=1e-6)
  np.testing.assert_allclose(final_v, final, atol=1e-5)
  np.testing.assert_allclose(all_layers_v, all_layers, atol=1e-5)
  np.testing.assert_allclose(grad_xv, grad_x, atol=1e-4)
  expected_grad_p = _stack_params_of_layers(grad_p, num_layers) if scan_layers else grad_p
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
                         grad_pv, expected_grad_p)


def test_detr_positions_enter_queries_and_keys_at_every_layer():
  stack = TransformerStack(num_heads=H, mlp_dim=MLP_DIM, cross_attention=True, num_layers=2,
                           activation="relu", layer_norm_epsilon=1e-5)
  x, memory = _inputs()
  query_pos, memory_pos = _normal(4, 1, T, D), _normal(5, 1, S, DM)
  variables = _init(stack, x, memory, query_pos=query_pos, memory_pos=memory_pos)
  with_pos = _apply(stack, variables, x, memory, query_pos=query_pos, memory_pos=memory_pos)
  without = _apply(stack, variables, x, memory)
  assert with_pos.shape == (B, T, D)
  assert not np.allclose(with_pos, without)
  # Positions are not added to the residual stream: adding them to x changes the output.
  assert not np.allclose(_apply(stack, variables, x + query_pos, memory + memory_pos), with_pos)


def test_dropout_runs_only_when_not_deterministic():
  block = TransformerBlock(num_heads=H, mlp_dim=MLP_DIM, dropout_rate=0.3,
                           attention_dropout_rate=0.3, activation_dropout_rate=0.3)
  x, _ = _inputs()
  variables = _init(block, x)
  plain = TransformerBlock(num_heads=H, mlp_dim=MLP_DIM)
  np.testing.assert_allclose(_apply(block, variables, x), _apply(plain, variables, x),
                             atol=1e-6)
  train = _apply(block, variables, x, deterministic=False,
                 rngs={"dropout": jax.random.key(1)})
  assert np.isfinite(train).all() and not np.allclose(train, _apply(plain, variables, x))


class _CoAttentionLayer(nn.Module):
  """LXMERT-style cross-modality layer composed from sublayers: one cross-attention shared by
  both directions, then self-attention and an MLP per stream."""

  @nn.compact
  def __call__(self, text, image, text_mask, image_mask):
    cross = AttentionSublayer(num_heads=H, name="cross_attention")
    text, image = (cross(text, image, key_padding_mask=image_mask),
                   cross(image, text, key_padding_mask=text_mask))
    text = AttentionSublayer(num_heads=H, name="text_self_attention")(
        text, key_padding_mask=text_mask)
    image = AttentionSublayer(num_heads=H, name="image_self_attention")(
        image, key_padding_mask=image_mask)
    text = FeedForwardSublayer(mlp_dim=MLP_DIM, name="text_feed_forward")(text)
    image = FeedForwardSublayer(mlp_dim=MLP_DIM, name="image_feed_forward")(image)
    return text, image


def test_sublayers_compose_into_a_co_attention_layer():
  layer = _CoAttentionLayer()
  text, _ = _inputs()
  image = _normal(6, B, S, D)
  text_mask, image_mask = np.ones((B, T), bool), np.ones((B, S), bool)
  variables = jax.jit(layer.init)(jax.random.key(0), text, image, text_mask, image_mask)
  assert set(variables["params"]) == {"cross_attention", "text_self_attention",
                                      "image_self_attention", "text_feed_forward",
                                      "image_feed_forward"}
  apply = jax.jit(layer.apply)
  text_out, image_out = apply(variables, text, image, text_mask, image_mask)
  assert text_out.shape == (B, T, D) and image_out.shape == (B, S, D)
  # Padding the image with garbage regions leaves every real output unchanged.
  padded_image = np.concatenate([image, 100 * _normal(7, B, 2, D)], axis=1)
  padded_mask = np.concatenate([image_mask, np.zeros((B, 2), bool)], axis=1)
  text_padded, image_padded = apply(variables, text, padded_image, text_mask, padded_mask)
  np.testing.assert_allclose(text_padded, text_out, atol=1e-5)
  np.testing.assert_allclose(image_padded[:, :S], image_out, atol=1e-5)


def test_bfloat16_block_keeps_float32_params_and_tracks_float32():
  block = _decoder_block()
  x, memory = _inputs()
  variables = _init(block, x, memory)
  out32 = _apply(block, variables, x, memory)
  out16 = _apply(block.clone(dtype=jnp.bfloat16), variables, x, memory)
  assert out16.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(nn.unbox(variables)))
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=0.15)


def test_erf_gelu_matches_the_exact_gelu_and_its_gradient():
  from vlp_jax.layers.mlp import erf_gelu
  x = jnp.linspace(-12.0, 12.0, 4001)
  np.testing.assert_allclose(erf_gelu(x), jax.nn.gelu(x, approximate=False), atol=2e-6)
  grad = jax.vmap(jax.grad(erf_gelu))(x)
  np.testing.assert_allclose(grad, jax.vmap(jax.grad(functools.partial(
      jax.nn.gelu, approximate=False)))(x), atol=2e-6)
  assert erf_gelu(jnp.asarray(1.0, jnp.bfloat16)).dtype == jnp.bfloat16
