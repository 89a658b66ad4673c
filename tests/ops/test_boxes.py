"""Box ops vs hand-computed values and the transformers (DETR) reference formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.loss import loss_for_object_detection as hf

from vlp_jax.ops import boxes


def random_cxcywh(rng: np.random.Generator, n: int) -> np.ndarray:
  center = rng.uniform(0.1, 0.9, (n, 2))
  size = rng.uniform(0.01, 0.5, (n, 2))
  return np.concatenate([center, size], axis=1).astype(np.float32)


def test_format_round_trip_and_hand_values():
  cxcywh = jnp.array([[0.5, 0.5, 0.2, 0.4], [0.1, 0.3, 0.0, 0.0]])
  xyxy = boxes.box_cxcywh_to_xyxy(cxcywh)
  np.testing.assert_allclose(xyxy, [[0.4, 0.3, 0.6, 0.7], [0.1, 0.3, 0.1, 0.3]], atol=1e-7)
  np.testing.assert_allclose(boxes.box_xyxy_to_cxcywh(xyxy), cxcywh, atol=1e-7)
  np.testing.assert_allclose(boxes.box_area(xyxy), [0.08, 0.0], atol=1e-7)


def test_iou_and_giou_hand_values():
  a = jnp.array([0.0, 0.0, 2.0, 2.0])
  cases = [  # other box, IoU, GIoU
      (jnp.array([0.0, 0.0, 2.0, 2.0]), 1.0, 1.0),
      (jnp.array([1.0, 1.0, 3.0, 3.0]), 1 / 7, 1 / 7 - 2 / 9),  # inter 1, union 7, hull 9
      (jnp.array([3.0, 0.0, 4.0, 2.0]), 0.0, -2 / 8),  # disjoint: union 6, hull 8
      (jnp.array([0.5, 0.5, 1.5, 1.5]), 0.25, 0.25),  # nested
  ]
  for other, iou, giou in cases:
    np.testing.assert_allclose(boxes.box_iou(a, other), iou, rtol=1e-6)
    np.testing.assert_allclose(boxes.generalized_box_iou(a, other), giou, rtol=1e-6)


def test_pairwise_matches_transformers_reference():
  rng = np.random.default_rng(0)
  cxcywh1, cxcywh2 = random_cxcywh(rng, 37), random_cxcywh(rng, 11)
  xyxy1, xyxy2 = boxes.box_cxcywh_to_xyxy(cxcywh1), boxes.box_cxcywh_to_xyxy(cxcywh2)
  ref1 = hf.center_to_corners_format(torch.from_numpy(cxcywh1))
  ref2 = hf.center_to_corners_format(torch.from_numpy(cxcywh2))
  np.testing.assert_allclose(xyxy1, ref1.numpy(), atol=1e-7)
  ref_iou, _ = hf.box_iou(ref1, ref2)
  np.testing.assert_allclose(boxes.pairwise_box_iou(xyxy1, xyxy2), ref_iou.numpy(),
                             rtol=1e-5, atol=1e-6)
  ref_giou = hf.generalized_box_iou(ref1, ref2).numpy()
  giou = boxes.pairwise_generalized_box_iou(xyxy1, xyxy2)
  assert giou.shape == (37, 11)
  np.testing.assert_allclose(giou, ref_giou, rtol=1e-5, atol=1e-6)
  # Elementwise with broadcasting over leading dims equals the pairwise diagonal.
  elementwise = boxes.generalized_box_iou(xyxy1[:11].reshape(11, 1, 4), xyxy2.reshape(11, 1, 4))
  np.testing.assert_allclose(elementwise[:, 0], np.diag(ref_giou[:11]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [boxes.box_iou, boxes.generalized_box_iou])
def test_degenerate_boxes_have_finite_values_and_gradients(fn):
  degenerate = jnp.array([
      [0.5, 0.5, 0.0, 0.0],  # point
      [0.5, 0.5, 0.0, 0.0],  # the same point: zero union and zero enclosing box
      [0.2, 0.3, 0.0, 0.4],  # vertical segment
      [0.2, 0.3, 0.3, 0.0],  # horizontal segment
      [0.6, 0.6, 0.2, 0.2],  # regular box
      [0.65, 0.7, 0.2, 0.2],  # overlaps the regular box
  ])
  pairs = jnp.stack(jnp.meshgrid(jnp.arange(6), jnp.arange(6), indexing="ij"), -1).reshape(-1, 2)

  def total(cxcywh: jax.Array) -> jax.Array:
    xyxy = boxes.box_cxcywh_to_xyxy(cxcywh)
    return jnp.sum(fn(xyxy[pairs[:, 0]], xyxy[pairs[:, 1]]))

  values, grads = jax.jit(jax.value_and_grad(total))(degenerate)
  values = fn(boxes.box_cxcywh_to_xyxy(degenerate)[pairs[:, 0]],
              boxes.box_cxcywh_to_xyxy(degenerate)[pairs[:, 1]])
  assert np.all(np.isfinite(values))
  np.testing.assert_allclose(values[0 * 6 + 1], 0.0)  # point vs same point
  np.testing.assert_allclose(values[4 * 6 + 4], 1.0)  # regular box vs itself
  assert np.all(np.isfinite(grads))
  assert np.all(np.any(grads[4:] != 0, axis=1))


def test_inverted_boxes_count_as_empty():
  inverted = jnp.array([0.6, 0.6, 0.4, 0.4])
  regular = jnp.array([0.0, 0.0, 1.0, 1.0])
  assert boxes.box_area(inverted) == 0.0
  assert boxes.box_iou(inverted, regular) == 0.0
  assert np.isfinite(jax.grad(lambda b: boxes.generalized_box_iou(b, regular))(inverted)).all()
