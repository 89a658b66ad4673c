"""Bounding-box operations: format conversion, area, IoU and generalised IoU.

Boxes are [..., 4] arrays, either `cxcywh` (centre x, centre y, width, height) or
`xyxy` (x0, y0, x1, y1). Elementwise functions broadcast their leading dims
(`[..., 4] x [..., 4] -> [...]`); the `pairwise_` functions compare every box of one
set with every box of another (`[N, 4] x [M, 4] -> [N, M]`).

Degenerate boxes are safe: widths and heights below zero count as zero, and a ratio
with a zero denominator (zero union, zero enclosing box) is defined as 0, with finite
gradients (the denominator is replaced before dividing, not after).
"""
import jax
import jax.numpy as jnp


def box_cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  """[..., 4] (cx, cy, w, h) -> [..., 4] (x0, y0, x1, y1)."""
  center, size = boxes[..., :2], boxes[..., 2:]
  return jnp.concatenate([center - 0.5 * size, center + 0.5 * size], axis=-1)


def box_xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
  """[..., 4] (x0, y0, x1, y1) -> [..., 4] (cx, cy, w, h)."""
  top_left, bottom_right = boxes[..., :2], boxes[..., 2:]
  return jnp.concatenate([0.5 * (top_left + bottom_right), bottom_right - top_left], axis=-1)


def _clipped_area(top_left: jax.Array, bottom_right: jax.Array) -> jax.Array:
  """[..., 2] corners -> [...] area, with negative extents counted as zero."""
  size = jnp.maximum(bottom_right - top_left, 0.0)
  return size[..., 0] * size[..., 1]


def _safe_ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """numerator / denominator, 0 where denominator <= 0 (finite gradients too)."""
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def box_area(boxes: jax.Array) -> jax.Array:
  """[..., 4] xyxy -> [...] area (0 for inverted boxes)."""
  return _clipped_area(boxes[..., :2], boxes[..., 2:])


def _iou_and_union(boxes1: jax.Array, boxes2: jax.Array) -> tuple[jax.Array, jax.Array]:
  intersection = _clipped_area(jnp.maximum(boxes1[..., :2], boxes2[..., :2]),
                               jnp.minimum(boxes1[..., 2:], boxes2[..., 2:]))
  union = box_area(boxes1) + box_area(boxes2) - intersection
  return _safe_ratio(intersection, union), union


def box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
  """Intersection over union of xyxy boxes, [..., 4] x [..., 4] -> [...] (broadcast)."""
  return _iou_and_union(boxes1, boxes2)[0]


def generalized_box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
  """Generalised IoU (Rezatofighi et al. 2019) of xyxy boxes, [..., 4] x [..., 4] -> [...].

  GIoU = IoU - (enclosing area - union) / enclosing area, in [-1, 1].
  """
  iou, union = _iou_and_union(boxes1, boxes2)
  enclosing = _clipped_area(jnp.minimum(boxes1[..., :2], boxes2[..., :2]),
                            jnp.maximum(boxes1[..., 2:], boxes2[..., 2:]))
  return iou - _safe_ratio(enclosing - union, enclosing)


def pairwise_box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
  """IoU of every pair of xyxy boxes, [N, 4] x [M, 4] -> [N, M]."""
  return box_iou(boxes1[:, None, :], boxes2[None, :, :])


def pairwise_generalized_box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
  """GIoU of every pair of xyxy boxes, [N, 4] x [M, 4] -> [N, M]."""
  return generalized_box_iou(boxes1[:, None, :], boxes2[None, :, :])
