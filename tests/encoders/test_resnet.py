"""ResNet grid encoder: grid/token shapes, ResNet-50 layout, logical names, frozen BatchNorm."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax.encoders import resnet
from vlp_jax.layers.position import sine_position_encoding_2d


def _logical_names(boxed_params) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


@pytest.mark.parametrize("strides,grid", [((1, 2, 2), 4), ((1, 2, 2, 2), 2)])
def test_basic_block_grid_tokens_and_positions(strides, grid):
  spec = resnet.resnet_spec(0, stage_blocks=(1,) * len(strides), stage_widths=(8,) * len(strides),
                            stage_strides=strides, stem_width=8)
  encoder = resnet.ResNetGridEncoder(spec, width=16)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  (tokens, pos), params = encoder.init_with_output(jax.random.PRNGKey(0), images)
  assert spec.stride == 32 // grid
  assert tokens.shape == (2, grid * grid, 16) and pos.shape == (grid * grid, 16)
  np.testing.assert_allclose(pos, sine_position_encoding_2d(grid, grid, 16))
  assert np.all(np.isfinite(tokens))
  for name, leaf in _logical_names(params["params"]).items():
    assert isinstance(leaf, nn.Partitioned), name
    assert len(leaf.names) == leaf.value.ndim, name
    if leaf.value.ndim == 4:
      assert leaf.names[:3] == ("conv_height", "conv_width", "conv_in"), name


def test_resnet50_layout_and_parameter_count():
  spec = resnet.resnet_spec(50)
  assert spec.output_channels == 2048 and spec.stride == 32
  trunk = resnet.ResNet(spec, norm="frozen_batch")
  shapes = jax.eval_shape(trunk.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  out = jax.eval_shape(lambda p: trunk.apply(p, jnp.zeros((1, 64, 64, 3))), shapes)
  assert out.shape == (1, 2, 2, 2048)
  leaves = _logical_names(shapes["params"])
  convs = sum(int(np.prod(leaf.value.shape)) for name, leaf in leaves.items()
              if name.endswith("['kernel']"))
  # torchvision resnet50 without fc: 23,454,912 conv weights.
  assert convs == 23_454_912
  assert sum(name.count("stage") > 0 and name.endswith("['conv1']['kernel']")
             for name in leaves) == 16


def test_frozen_batch_norm_applies_stats_and_gets_no_gradient():
  norm = resnet.FrozenBatchNorm(epsilon=0.0)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 3, 4)), jnp.float32)
  assert set(nn.unbox(norm.init(jax.random.PRNGKey(0), x))["params"]) == {
      "scale", "bias", "mean", "var"}
  params = {"params": {"scale": jnp.full(4, 2.0), "bias": jnp.full(4, 1.0),
                       "mean": jnp.full(4, 0.5), "var": jnp.full(4, 4.0)}}
  np.testing.assert_allclose(norm.apply(params, x), (x - 0.5) / 2.0 * 2.0 + 1.0, atol=1e-6)
  grads = jax.grad(lambda p: jnp.sum(norm.apply(p, x) ** 2))(params)
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads))


def test_unknown_depth_and_norm_are_rejected():
  with pytest.raises(ValueError):
    resnet.resnet_spec(34)
  spec = resnet.resnet_spec(0, stage_blocks=(1,), stage_widths=(8,), stage_strides=(2,),
                            stem_width=8)
  with pytest.raises(ValueError):
    resnet.ResNet(spec, norm="batch").init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))


def _ones_chain_centre(layers, paddings, size: int, row: int) -> float:
  """Image row on which output row `row` of a chain of 1-channel all-ones convs is centred."""
  convs = [resnet._conv(1, kernel, stride, jnp.float32, jnp.float32, "conv", padding=padding)
           for (kernel, stride), padding in zip(layers, paddings)]

  def output_row(image):
    for conv, (kernel, _) in zip(convs, layers):
      image = conv.apply({"params": {"kernel": jnp.ones((kernel, kernel, 1, 1))}}, image)
    return image[0, row].sum()

  weights = np.asarray(jax.grad(output_row)(jnp.zeros((1, size, size, 1)))).sum(axis=(0, 2, 3))
  return float((weights * np.arange(size)).sum() / weights.sum())


@pytest.mark.parametrize("padding", ["symmetric", "centred"])
def test_centred_padding_centres_the_tokens_of_a_stride_24_resnet_on_their_cells(padding):
  # The tiny E2E-VLP layout: 72 px, 3x3/2 stem, 3x3 stages with strides 2, 2, 3 -> 3x3 tokens.
  layers, size = [(3, 2), (3, 2), (3, 2), (3, 3)], 72
  paddings, offset, scale, length = [], 0.0, 1, size
  for kernel, stride in layers:
    pair, offset = resnet.centred_padding(kernel, stride, length, scale, offset)
    paddings.append((pair, pair))
    scale, length = scale * stride, length // stride
  centre = _ones_chain_centre(layers, paddings if padding == "centred" else [None] * 4, size,
                              row=1)
  # The middle cell spans pixels 24..47. Symmetric padding shifts its token by half a cell.
  expected = {"symmetric": 24.0, "centred": 35.5 + offset}[padding]
  assert centre == pytest.approx(expected)
  assert abs(offset) <= 1.5


def test_centred_padding_keeps_the_resnet_output_shape_and_rejects_unknown_paddings():
  spec = resnet.resnet_spec(0, stage_blocks=(1, 1, 1), stage_widths=(8, 8, 8),
                            stage_strides=(2, 2, 3), stem_width=8, padding="centred")
  images = jnp.asarray(np.random.default_rng(3).normal(size=(1, 72, 72, 3)), jnp.float32)
  out, _ = resnet.ResNet(spec).init_with_output(jax.random.PRNGKey(0), images)
  assert out.shape == (1, 3, 3, 8) and np.all(np.isfinite(out))
  resnet50 = resnet.ResNet(resnet.resnet_spec(50, padding="centred"), norm="frozen_batch")
  shapes = jax.eval_shape(resnet50.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  out = jax.eval_shape(lambda p: resnet50.apply(p, jnp.zeros((1, 64, 64, 3))), shapes)
  assert out.shape == (1, 2, 2, 2048)
  with pytest.raises(ValueError, match="padding"):
    resnet.resnet_spec(0, padding="same")
