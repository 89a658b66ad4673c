"""ViT: shapes, position resampling, and parity with Hugging Face `BlipVisionModel` weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from transformers import BlipVisionConfig, BlipVisionModel

from vlp_jax.encoders import VisionTransformer
from vlp_jax.layers import sine_position_encoding_2d
from vlp_jax.models.blip_hf import vision_params_from_hf

TINY = dict(image_size=32, patch_size=8, width=16, num_layers=2, num_heads=2, mlp_dim=32)


def test_vit_shapes_and_resampled_positions():
  model = VisionTransformer(**TINY)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  params = nn.meta.unbox(variables["params"])
  assert params["position_embedding"].shape == (1, 17, 16)
  out = model.apply({"params": params}, jnp.ones((2, 32, 32, 3)))
  assert out.shape == (2, 17, 16)
  bigger = model.apply({"params": params}, jnp.ones((2, 48, 40, 3)))
  assert bigger.shape == (2, 1 + 6 * 5, 16) and np.isfinite(bigger).all()


def test_vit_sincos2d_position_init_is_the_scaled_sine_grid_and_learnable():
  model = VisionTransformer(**TINY, position_init="sincos2d")
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
  positions = params["position_embedding"]
  np.testing.assert_array_equal(positions[0, 0], 0.0)  # [CLS]
  np.testing.assert_allclose(positions[0, 1:], sine_position_encoding_2d(4, 4, 16), atol=1e-6)
  assert len({tuple(np.round(row, 5)) for row in np.asarray(positions[0, 1:])}) == 16
  first_channel = lambda p: model.apply({"params": p}, jnp.ones((1, 32, 32, 3)))[..., 0].sum()
  grads = jax.grad(first_channel)(params)
  assert np.abs(grads["position_embedding"]).max() > 0
  scaled = VisionTransformer(**TINY, position_init="sincos2d", position_init_scale=3.0)
  scaled_positions = scaled.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  np.testing.assert_allclose(nn.meta.unbox(scaled_positions)["position_embedding"],
                             3.0 * positions, rtol=1e-6)
  with pytest.raises(ValueError, match="position_init"):
    VisionTransformer(**TINY, position_init="rope").init(jax.random.key(0),
                                                         jnp.zeros((1, 32, 32, 3)))


def test_vit_matches_hf_blip_vision_model():
  torch.manual_seed(0)
  config = BlipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, image_size=32, patch_size=8)
  hf_model = BlipVisionModel(config).eval()
  with torch.no_grad():
    for name, tensor in hf_model.named_parameters():
      tensor.copy_(0.5 * torch.randn_like(tensor))
  state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  params = vision_params_from_hf(state, "", num_layers=2, heads=2)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    expected = hf_model(pixel_values=torch.tensor(images).permute(0, 3, 1, 2)).last_hidden_state
  model = VisionTransformer(**TINY)
  reference = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
  assert jax.tree.structure(reference) == jax.tree.structure(params)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), reference, params)
  out = model.apply({"params": params}, jnp.asarray(images))
  np.testing.assert_allclose(out, expected.numpy(), atol=2e-4, rtol=2e-4)
