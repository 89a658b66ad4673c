"""ResNet grid encoder (E2E-VLP / DETR backbone): images -> C5 feature map -> d-wide grid tokens.

`ResNetGridEncoder`: images [B, H, W, 3] -> (tokens [B, h*w, D], sine positions [h*w, D]),
tokens row-major over the last stage's map, after a 1x1 conv from its channels to D.

Architectures (`resnet_spec`): ResNet-50/101/152 (bottleneck blocks, expansion 4, stages of
(3,4,6,3) / (3,4,23,3) / (3,8,36,3) blocks, widths 64..512, a 7x7/2 stem and a 3x3/2 max pool,
stride 32, C5 = 2048 channels), or any basic-block ResNet given its stage depths, widths
and strides (the tiny configs: a 3x3/2 stem without pool; `e2e_vlp.py:tiny`: stride 24).

Normalisation (`norm`):
- "group": GroupNorm (32 groups or fewer), trainable, batch-independent: no batch statistics
  to carry in the trainer's `extra_state`, same result under any sharding. Default.
- "frozen_batch": DETR's FrozenBatchNorm2d, `y = (x - mean) / sqrt(var + eps) * scale + bias`
  with all four per-channel vectors stored as params (to load torchvision weights) and read
  through `stop_gradient`, so gradients never change them (and as 1-D params the optimiser
  never decays them: AdamW leaves them exactly fixed).
Training BatchNorm (batch statistics) is not offered: its running stats would have to live in
`extra_state` and be all-reduced across devices, and DETR / E2E-VLP freeze them anyway.

Params (logical names): conv kernels [kh, kw, Cin, Cout] (`conv_height`, `conv_width`,
`conv_in`, `conv_out`); norm vectors [C] (`conv_out`); `projection` 1x1 conv to D with
`conv_out` -> the kernel's last axis named `embed`.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.layers.common import BATCH_LENGTH_EMBED, Array, Dtype
from vlp_jax.layers.position import sine_position_encoding_2d

CONV_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")
NORMS = ("group", "frozen_batch")


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
  """Stage layout: `block` "basic" or "bottleneck", blocks/widths/strides per stage."""
  block: str
  stage_blocks: tuple[int, ...]
  stage_widths: tuple[int, ...]
  stage_strides: tuple[int, ...]
  stem_width: int
  imagenet_stem: bool  # 7x7/2 conv + 3x3/2 max pool (stride 4); else a 3x3/2 conv (stride 2)

  @property
  def expansion(self) -> int:
    return 4 if self.block == "bottleneck" else 1

  @property
  def output_channels(self) -> int:
    return self.stage_widths[-1] * self.expansion

  @property
  def stride(self) -> int:
    total = 4 if self.imagenet_stem else 2
    for stride in self.stage_strides:
      total *= stride
    return total


_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def resnet_spec(depth: int = 50, *, stage_blocks: tuple[int, ...] = (1, 1, 1),
                stage_widths: tuple[int, ...] = (32, 64, 128),
                stage_strides: tuple[int, ...] = (1, 2, 2), stem_width: int = 32) -> ResNetSpec:
  """ResNet-50/101/152 for depth in {50, 101, 152}; depth 0: a basic-block ResNet from the
  keyword arguments (default stride 2 * 1 * 2 * 2 = 8)."""
  if depth in _DEPTHS:
    return ResNetSpec("bottleneck", _DEPTHS[depth], (64, 128, 256, 512), (1, 2, 2, 2), 64, True)
  if depth != 0:
    raise ValueError(f"depth must be 0 (basic blocks) or one of {sorted(_DEPTHS)}, got {depth}")
  if not len(stage_blocks) == len(stage_widths) == len(stage_strides):
    raise ValueError("stage_blocks, stage_widths and stage_strides must have equal lengths")
  return ResNetSpec("basic", tuple(stage_blocks), tuple(stage_widths), tuple(stage_strides),
                    stem_width, False)


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics and affine params (no gradients). [..., C] -> [..., C]."""
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]

    def vector(name: str, init: nn.initializers.Initializer) -> Array:
      value = self.param(name, nn.with_logical_partitioning(init, ("conv_out",)), (channels,),
                         self.param_dtype)
      return jax.lax.stop_gradient(value).astype(jnp.float32)

    scale, bias = vector("scale", nn.initializers.ones), vector("bias", nn.initializers.zeros)
    mean, var = vector("mean", nn.initializers.zeros), vector("var", nn.initializers.ones)
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    return (x.astype(jnp.float32) * multiplier + (bias - mean * multiplier)).astype(self.dtype)


def _norm(kind: str, channels: int, dtype: Dtype, param_dtype: Dtype, name: str,
          zero_init: bool = False) -> nn.Module:
  """A normalisation layer over the last axis; `zero_init` starts a residual branch at 0."""
  if kind == "frozen_batch":
    return FrozenBatchNorm(dtype=dtype, param_dtype=param_dtype, name=name)
  if kind != "group":
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
  scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
  return nn.GroupNorm(
      num_groups=min(32, channels // 4) or 1, dtype=dtype, param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(scale_init, ("conv_out",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), name=name)


def _conv(features: int, kernel: int, stride: int, dtype: Dtype, param_dtype: Dtype,
          name: str, axes: tuple[str, ...] = CONV_AXES, use_bias: bool = False) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
      use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.variance_scaling(2.0, "fan_out", "normal"), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)))


class ResidualBlock(nn.Module):
  """Basic (3x3, 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 x4) residual block.

  [B, H, W, Cin] -> [B, H / stride, W / stride, width * expansion].
  """
  width: int
  stride: int = 1
  bottleneck: bool = True
  norm: str = "group"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_channels = self.width * (4 if self.bottleneck else 1)
    conv = lambda *args, **kwargs: _conv(*args, dtype=self.dtype, param_dtype=self.param_dtype,
                                         **kwargs)
    norm = lambda channels, name, zero=False: _norm(self.norm, channels, self.dtype,
                                                    self.param_dtype, name, zero)
    if self.bottleneck:
      layers = [(self.width, 1, 1), (self.width, 3, self.stride), (out_channels, 1, 1)]
    else:
      layers = [(self.width, 3, self.stride), (out_channels, 3, 1)]
    h = x
    for i, (features, kernel, stride) in enumerate(layers):
      h = conv(features, kernel, stride, name=f"conv{i + 1}")(h)
      last = i == len(layers) - 1
      h = norm(features, f"norm{i + 1}", last)(h)
      if not last:
        h = nn.relu(h)
    if x.shape[-1] != out_channels or self.stride != 1:
      x = conv(out_channels, 1, self.stride, name="downsample_conv")(x)
      x = norm(out_channels, "downsample_norm")(x)
    return nn.relu(h + x)


class ResNet(nn.Module):
  """ResNet trunk: images [B, H, W, 3] -> last-stage map [B, H / s, W / s, C] (s = spec.stride)."""
  spec: ResNetSpec
  norm: str = "group"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    s = self.spec
    x = images.astype(self.dtype)
    x = _conv(s.stem_width, 7 if s.imagenet_stem else 3, 2, self.dtype, self.param_dtype,
              "stem_conv")(x)
    x = nn.relu(_norm(self.norm, s.stem_width, self.dtype, self.param_dtype, "stem_norm")(x))
    if s.imagenet_stem:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (blocks, width, stride) in enumerate(zip(s.stage_blocks, s.stage_widths,
                                                        s.stage_strides)):
      for block in range(blocks):
        x = ResidualBlock(width, stride if block == 0 else 1, s.block == "bottleneck",
                          self.norm, self.dtype, self.param_dtype,
                          name=f"stage{stage + 1}_block{block + 1}")(x)
    return x


class ResNetGridEncoder(nn.Module):
  """ResNet C5 map -> 1x1 conv to `width` -> grid tokens and DETR sine positions.

  images [B, H, W, 3] -> (tokens [B, h*w, D], positions [h*w, D] float32), h = H / stride.
  """
  spec: ResNetSpec
  width: int
  norm: str = "group"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> tuple[Array, Array]:
    features = ResNet(self.spec, self.norm, self.dtype, self.param_dtype, name="resnet")(images)
    x = _conv(self.width, 1, 1, self.dtype, self.param_dtype, "projection",
              axes=("conv_height", "conv_width", "conv_in", "embed"), use_bias=True)(features)
    batch, height, width, channels = x.shape
    tokens = nn.with_logical_constraint(x.reshape(batch, height * width, channels),
                                        BATCH_LENGTH_EMBED)
    return tokens, sine_position_encoding_2d(height, width, self.width)
