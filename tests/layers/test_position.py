"""Sine position encodings (1-D, DETR 2-D) and ViT position-embedding resampling."""
import math

import numpy as np
import pytest

from vlp_jax.layers import (grid_size_for, resample_position_embedding, sine_encoding,
                            sine_position_encoding_1d, sine_position_encoding_2d)


def test_1d_sine_encoding_matches_the_transformer_formula():
  encoding = np.asarray(sine_position_encoding_1d(10, 8))
  positions = np.arange(10)[:, None]
  frequencies = 10000.0 ** (-np.arange(0, 8, 2) / 8)
  np.testing.assert_allclose(encoding[:, 0::2], np.sin(positions * frequencies), atol=1e-5)
  np.testing.assert_allclose(encoding[:, 1::2], np.cos(positions * frequencies), atol=1e-5)
  split = np.asarray(sine_encoding(np.arange(10), 8, interleave=False))
  np.testing.assert_allclose(split[:, :4], encoding[:, 0::2], atol=1e-6)
  np.testing.assert_allclose(split[:, 4:], encoding[:, 1::2], atol=1e-6)


def test_2d_sine_encoding_shape_range_and_distinct_rows():
  height, width, dim = 5, 7, 16
  encoding = np.asarray(sine_position_encoding_2d(height, width, dim))
  assert encoding.shape == (height * width, dim)
  assert np.all(np.abs(encoding) <= 1.0)
  assert len(np.unique(encoding.round(5), axis=0)) == height * width
  grid = encoding.reshape(height, width, dim)
  # First half encodes y only, second half x only (DETR channel order).
  y_half, x_half = grid[..., :dim // 2], grid[..., dim // 2:]
  np.testing.assert_array_equal(y_half, np.broadcast_to(y_half[:, :1], y_half.shape))
  np.testing.assert_array_equal(x_half, np.broadcast_to(x_half[:1], x_half.shape))
  # Normalised positions: the last row/column sits at 2*pi.
  np.testing.assert_allclose(grid[-1, 0, :2], [math.sin(2 * math.pi), math.cos(2 * math.pi)],
                             atol=1e-4)


def test_2d_sine_encoding_with_a_padding_mask_normalises_over_real_pixels():
  height, width, dim = 4, 6, 8
  mask = np.zeros((2, height, width), bool)
  mask[0] = True
  mask[1, :2, :3] = True  # image 1 is 2x3, padded to 4x6
  encoding = np.asarray(sine_position_encoding_2d(height, width, dim, padding_mask=mask))
  assert encoding.shape == (2, height, width, dim)
  small = np.asarray(sine_position_encoding_2d(2, 3, dim)).reshape(2, 3, dim)
  np.testing.assert_allclose(encoding[1, :2, :3], small, atol=1e-5)
  full = np.asarray(sine_position_encoding_2d(height, width, dim)).reshape(height, width, dim)
  np.testing.assert_allclose(encoding[0], full, atol=1e-6)
  with pytest.raises(ValueError, match="multiple of 4"):
    sine_position_encoding_2d(2, 2, 6)


def _posemb(grid: int, dim: int = 6) -> np.ndarray:
  return np.random.default_rng(0).normal(size=(1, 1 + grid * grid, dim)).astype(np.float32)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_resampling_keeps_class_token_and_is_identity_at_the_same_size(method: str):
  posemb = _posemb(4)
  same = np.asarray(resample_position_embedding(posemb, (4, 4), method=method))
  np.testing.assert_allclose(same, posemb, atol=1e-6)
  larger = np.asarray(resample_position_embedding(posemb, (6, 8), method=method))
  assert larger.shape == (1, 1 + 6 * 8, 6)
  np.testing.assert_array_equal(larger[:, 0], posemb[:, 0])
  table = np.asarray(resample_position_embedding(posemb[0], (2, 2), method=method))
  assert table.shape == (1 + 4, 6)


def test_resampling_a_smooth_grid_interpolates_it():
  side = 4
  ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
  posemb = np.concatenate([np.zeros((1, 2)), np.stack([ys, xs], -1).reshape(-1, 2)])
  posemb = posemb.astype(np.float32)[None]
  resized = np.asarray(resample_position_embedding(posemb, (8, 8), method="bilinear"))
  grid = resized[0, 1:].reshape(8, 8, 2)
  assert np.all(np.diff(grid[:, 0, 0]) >= 0) and np.all(np.diff(grid[0, :, 1]) >= 0)
  assert np.all(grid[:, :, 0] == grid[:, :1, 0])  # y does not vary along x
  assert grid_size_for(384, 16) == (24, 24) and grid_size_for((224, 160), 16) == (14, 10)
