"""ViT: shapes, position resampling, and parity with Hugging Face `BlipVisionModel` weights."""
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import linen as nn
from transformers import BlipVisionConfig, BlipVisionModel

from vlp_jax.encoders import VisionTransformer

TINY = dict(image_size=32, patch_size=8, width=16, num_layers=2, num_heads=2, mlp_dim=32)


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> dict:
  return {"kernel": weight.T.numpy(), "bias": bias.numpy()}


def _heads_in(weight: np.ndarray, bias: np.ndarray, heads: int) -> dict:
  """torch Linear [H*Dh, D] -> DenseGeneral kernel [D, H, Dh], bias [H, Dh]."""
  return {"kernel": weight.T.reshape(weight.shape[1], heads, -1), "bias": bias.reshape(heads, -1)}


def _norm(prefix: str, state: dict) -> dict:
  return {"scale": state[prefix + ".weight"].numpy(), "bias": state[prefix + ".bias"].numpy()}


def convert_blip_vision(state: dict, num_layers: int, heads: int) -> dict:
  """HF BlipVisionModel state_dict -> VisionTransformer params (the docstring's mapping)."""
  params = {
      "patch_embedding": {"projection": {
          "kernel": state["embeddings.patch_embedding.weight"].numpy().transpose(2, 3, 1, 0),
          "bias": state["embeddings.patch_embedding.bias"].numpy()}},
      "class_embedding": state["embeddings.class_embedding"].numpy(),
      "position_embedding": state["embeddings.position_embedding"].numpy(),
      "post_layernorm": _norm("post_layernorm", state), "encoder": {}}
  for i in range(num_layers):
    p = f"encoder.layers.{i}."
    width = state[p + "self_attn.projection.weight"].shape[0]
    qkv_w = state[p + "self_attn.qkv.weight"].numpy().reshape(3, width, width)
    qkv_b = state[p + "self_attn.qkv.bias"].numpy().reshape(3, width)
    attention = {name: _heads_in(qkv_w[k], qkv_b[k], heads)
                 for k, name in enumerate(("query", "key", "value"))}
    attention["out"] = {"kernel": state[p + "self_attn.projection.weight"].numpy().T.reshape(
        heads, -1, width), "bias": state[p + "self_attn.projection.bias"].numpy()}
    params["encoder"][f"layers_{i}"] = {
        "self_attention": {"attention": attention, "layer_norm": _norm(p + "layer_norm1", state)},
        "feed_forward": {"layer_norm": _norm(p + "layer_norm2", state), "mlp": {
            "fc1": _linear(state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"]),
            "fc2": _linear(state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])}}}
  return params


def test_vit_shapes_and_resampled_positions():
  model = VisionTransformer(**TINY)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  params = nn.meta.unbox(variables["params"])
  assert params["position_embedding"].shape == (1, 17, 16)
  out = model.apply({"params": params}, jnp.ones((2, 32, 32, 3)))
  assert out.shape == (2, 17, 16)
  bigger = model.apply({"params": params}, jnp.ones((2, 48, 40, 3)))
  assert bigger.shape == (2, 1 + 6 * 5, 16) and np.isfinite(bigger).all()


def test_vit_matches_hf_blip_vision_model():
  torch.manual_seed(0)
  config = BlipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, image_size=32, patch_size=8)
  hf_model = BlipVisionModel(config).eval()
  with torch.no_grad():
    for name, tensor in hf_model.named_parameters():
      tensor.copy_(0.5 * torch.randn_like(tensor))
  params = convert_blip_vision(hf_model.state_dict(), num_layers=2, heads=2)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    expected = hf_model(pixel_values=torch.tensor(images).permute(0, 3, 1, 2)).last_hidden_state
  model = VisionTransformer(**TINY)
  reference = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
  assert jax.tree.structure(reference) == jax.tree.structure(params)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), reference, params)
  out = model.apply({"params": params}, jnp.asarray(images))
  np.testing.assert_allclose(out, expected.numpy(), atol=2e-4, rtol=2e-4)
