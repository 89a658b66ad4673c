"""Fixed sine position encodings (1-D, DETR 2-D) and ViT position-embedding resampling."""
import math

import jax
import jax.numpy as jnp

from vlp_jax.layers.common import Array


def sine_encoding(positions: Array, dim: int, *, temperature: float = 10000.0,
                  interleave: bool = True) -> Array:
  """Sinusoids of float positions: [...] -> [..., dim].

  Channel pair i uses frequency temperature ** (-2i / dim). With `interleave` the channels
  are sin, cos, sin, cos, ... (Transformer, DETR); otherwise all sines then all cosines.
  """
  if dim % 2:
    raise ValueError(f"dim must be even, got {dim}")
  positions = jnp.asarray(positions, jnp.float32)
  inverse_frequency = temperature ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles = positions[..., None] * inverse_frequency  # [..., dim / 2]
  if interleave:
    encoding = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  else:
    encoding = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-2)
  return encoding.reshape(*positions.shape, dim)


def sine_position_encoding_1d(length: int, dim: int, *,
                              temperature: float = 10000.0) -> Array:
  """Transformer sine encoding of positions 0..length-1: [length, dim]."""
  return sine_encoding(jnp.arange(length), dim, temperature=temperature)


def sine_position_encoding_2d(height: int, width: int, dim: int, *,
                              padding_mask: Array | None = None,
                              temperature: float = 10000.0, normalize: bool = True,
                              scale: float = 2 * math.pi) -> Array:
  """DETR's fixed 2-D sine encoding of an image feature grid.

  Positions are cumulative counts of real pixels along y and x (1-based), normalised by the
  row/column total and multiplied by `scale` when `normalize`. The first dim/2 channels
  encode y, the last dim/2 encode x, each as interleaved sin/cos.

  Args:
    height, width: grid size H, W.
    dim: D, a multiple of 4.
    padding_mask: [B, H, W] bool, True at real pixels (padding at the bottom/right).
  Returns:
    [H * W, D] (row-major) without a padding mask, [B, H, W, D] with one.
  """
  if dim % 4:
    raise ValueError(f"dim must be a multiple of 4, got {dim}")
  real = (jnp.ones((1, height, width), bool) if padding_mask is None
          else jnp.asarray(padding_mask, bool))
  real = real.astype(jnp.float32)
  y = jnp.cumsum(real, axis=1)
  x = jnp.cumsum(real, axis=2)
  if normalize:
    eps = 1e-6
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
  half = dim // 2
  encoding = jnp.concatenate([sine_encoding(y, half, temperature=temperature),
                              sine_encoding(x, half, temperature=temperature)], axis=-1)
  if padding_mask is None:
    return encoding.reshape(height * width, dim)
  return encoding


def resample_position_embedding(posemb: Array, grid_size: tuple[int, int], *,
                                num_prefix_tokens: int = 1,
                                method: str = "bicubic") -> Array:
  """Resizes a ViT's learned position embedding to a new patch grid.

  Args:
    posemb: [1, P + gh * gw, D] or [P + gh * gw, D], the first P = `num_prefix_tokens`
      rows (the class token) kept as they are, the rest a square row-major grid.
    grid_size: the new grid (gh', gw').
    method: "bilinear" or "bicubic" (`jax.image.resize`, antialiased when shrinking).
  Returns:
    [1, P + gh' * gw', D] or [P + gh' * gw', D], matching the input rank; same dtype.
  """
  if method not in ("bilinear", "bicubic"):
    raise ValueError(f"method must be 'bilinear' or 'bicubic', got {method!r}")
  squeeze = posemb.ndim == 2
  table = posemb if squeeze else posemb[0]
  prefix, grid = table[:num_prefix_tokens], table[num_prefix_tokens:]
  old_side = int(round(math.sqrt(grid.shape[0])))
  if old_side * old_side != grid.shape[0]:
    raise ValueError(f"{grid.shape[0]} grid tokens do not form a square grid")
  new_h, new_w = grid_size
  dim = grid.shape[-1]
  grid = jnp.asarray(grid, jnp.float32).reshape(old_side, old_side, dim)
  grid = jax.image.resize(grid, (new_h, new_w, dim), method=method)
  grid = grid.reshape(new_h * new_w, dim).astype(table.dtype)
  table = jnp.concatenate([jnp.asarray(prefix), jnp.asarray(grid)], axis=0)
  return table if squeeze else table[None]


def grid_size_for(image_size: int | tuple[int, int], patch_size: int) -> tuple[int, int]:
  """Patch grid (gh, gw) of an image of `image_size` pixels."""
  height, width = ((image_size, image_size) if isinstance(image_size, int)
                   else image_size)
  return height // patch_size, width // patch_size
