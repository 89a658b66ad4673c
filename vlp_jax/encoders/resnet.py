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

Padding (`padding`):
- "symmetric": kernel // 2 on every side, as torchvision (whose weights then load unchanged).
  Each strided conv centres its outputs half an input step early, and these shifts add up:
  a stride-24 stack centres token i on pixel 24i, the corner of its 24-pixel block. Default.
- "centred": each strided conv (and pool, and 1x1 shortcut) picks its low pad, or crop, so that
  the shift accumulated so far cancels (`centred_padding`): tokens lie within 1.5 px of their
  block centres in `e2e_vlp.py:tiny`, where each token should see one scene cell.

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
PADDINGS = ("symmetric", "centred")
Padding = tuple[tuple[int, int], tuple[int, int]]  # (low, high) for height and width


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
  """Stage layout: `block` "basic" or "bottleneck", blocks/widths/strides per stage."""
  block: str
  stage_blocks: tuple[int, ...]
  stage_widths: tuple[int, ...]
  stage_strides: tuple[int, ...]
  stem_width: int
  imagenet_stem: bool  # 7x7/2 conv + 3x3/2 max pool (stride 4); else a 3x3/2 conv (stride 2)
  padding: str = "symmetric"  # one of PADDINGS, see `centred_padding`

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
                stage_strides: tuple[int, ...] = (1, 2, 2), stem_width: int = 32,
                padding: str = "symmetric") -> ResNetSpec:
  """ResNet-50/101/152 for depth in {50, 101, 152}; depth 0: a basic-block ResNet from the
  keyword arguments (default stride 2 * 1 * 2 * 2 = 8). `padding`: see `centred_padding`."""
  if padding not in PADDINGS:
    raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
  if depth in _DEPTHS:
    return ResNetSpec("bottleneck", _DEPTHS[depth], (64, 128, 256, 512), (1, 2, 2, 2), 64, True,
                      padding)
  if depth != 0:
    raise ValueError(f"depth must be 0 (basic blocks) or one of {sorted(_DEPTHS)}, got {depth}")
  if not len(stage_blocks) == len(stage_widths) == len(stage_strides):
    raise ValueError("stage_blocks, stage_widths and stage_strides must have equal lengths")
  return ResNetSpec("basic", tuple(stage_blocks), tuple(stage_widths), tuple(stage_strides),
                    stem_width, False, padding)


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


def centred_padding(kernel: int, stride: int, size: int, scale: int,
                    offset: float) -> tuple[tuple[int, int], float]:
  """(low, high) padding of one spatial axis for a strided conv or pool that centres its
  output windows on the input blocks they summarise, and the output's offset ("centred" in
  the module docstring). `size`: input positions; `scale`: image pixels per input position;
  `offset`: pixels by which input position 0's centre lies past the centre of its `scale`
  pixels. A negative pad crops.
  """
  out = -(-size // stride)
  total = (out - 1) * stride + kernel - size

  def shift(low: int) -> float:
    centre = scale * ((kernel - 1) / 2 - low) + (scale - 1) / 2 + offset
    return centre - (scale * stride - 1) / 2

  low = min(range(1 - stride, kernel), key=lambda p: (abs(shift(p)), abs(p - kernel // 2)))
  return (low, total - low), shift(low)


def _conv(features: int, kernel: int, stride: int, dtype: Dtype, param_dtype: Dtype,
          name: str, axes: tuple[str, ...] = CONV_AXES, use_bias: bool = False,
          padding: Padding | None = None) -> nn.Conv:
  """A square conv; `padding` None: kernel // 2 on every side."""
  pad = kernel // 2
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      padding=padding or ((pad, pad), (pad, pad)),
      use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.variance_scaling(2.0, "fan_out", "normal"), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)))


class ResidualBlock(nn.Module):
  """Basic (3x3, 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 x4) residual block.

  [B, H, W, Cin] -> [B, H / stride, W / stride, width * expansion]. `padding` / `skip_padding`:
  of the strided 3x3 conv / the strided 1x1 shortcut conv (None: kernel // 2 on every side).
  """
  width: int
  stride: int = 1
  bottleneck: bool = True
  norm: str = "group"
  padding: Padding | None = None
  skip_padding: Padding | None = None
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
      padding = self.padding if stride > 1 else None
      h = conv(features, kernel, stride, name=f"conv{i + 1}", padding=padding)(h)
      last = i == len(layers) - 1
      h = norm(features, f"norm{i + 1}", last)(h)
      if not last:
        h = nn.relu(h)
    if x.shape[-1] != out_channels or self.stride != 1:
      x = conv(out_channels, 1, self.stride, name="downsample_conv", padding=self.skip_padding)(x)
      x = norm(out_channels, "downsample_norm")(x)
    return nn.relu(h + x)


def _centred(kernel: int, stride: int, x: Array, scale: int,
             offsets: tuple[float, float]) -> tuple[Padding, tuple[float, float]]:
  """`centred_padding` for both spatial axes of x [B, H, W, C]."""
  pairs, shifts = zip(*(centred_padding(kernel, stride, size, scale, offset)
                        for size, offset in zip(x.shape[1:3], offsets)))
  return tuple(pairs), tuple(shifts)


class ResNet(nn.Module):
  """ResNet trunk: images [B, H, W, 3] -> last-stage map [B, H / s, W / s, C] (s = spec.stride)."""
  spec: ResNetSpec
  norm: str = "group"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    s = self.spec
    centred = s.padding == "centred"
    scale, offsets = 1, (0.0, 0.0)  # image pixels per position; see `centred_padding`
    x = images.astype(self.dtype)
    stem_kernel = 7 if s.imagenet_stem else 3
    stem_padding = None
    if centred:
      stem_padding, offsets = _centred(stem_kernel, 2, x, scale, offsets)
    x = _conv(s.stem_width, stem_kernel, 2, self.dtype, self.param_dtype, "stem_conv",
              padding=stem_padding)(x)
    x = nn.relu(_norm(self.norm, s.stem_width, self.dtype, self.param_dtype, "stem_norm")(x))
    scale = 2
    if s.imagenet_stem:
      pool_padding = ((1, 1), (1, 1))
      if centred:
        pool_padding, offsets = _centred(3, 2, x, scale, offsets)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pool_padding)
      scale = 4
    for stage, (blocks, width, stage_stride) in enumerate(zip(s.stage_blocks, s.stage_widths,
                                                              s.stage_strides)):
      for block in range(blocks):
        stride = stage_stride if block == 0 else 1
        padding = skip_padding = None
        if centred and stride > 1:
          skip_padding, _ = _centred(1, stride, x, scale, offsets)
          padding, offsets = _centred(3, stride, x, scale, offsets)
        x = ResidualBlock(width, stride, s.block == "bottleneck", self.norm, padding,
                          skip_padding, self.dtype, self.param_dtype,
                          name=f"stage{stage + 1}_block{block + 1}")(x)
        scale *= stride
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
