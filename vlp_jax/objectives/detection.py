"""DETR set-prediction loss (E2E-VLP's detection task), with per-layer auxiliary losses.

Shapes: B images, Q object queries, T padded targets, C classes (+1: index C is
"no object"), L decoder layers.

1. Matching (no gradient): cost[b, q, t] = class_cost * (-softmax(logits)[q, label_t])
   + bbox_cost * L1(box_q, box_t) + giou_cost * (-GIoU(box_q, box_t)), boxes in normalised
   cxcywh; each valid target gets a distinct query by `hungarian_match`.
2. Losses (unweighted, as DETR reports them):
   - `loss_ce`: cross-entropy over all B*Q queries; matched queries target their label,
     the others "no object"; class weights 1 except eos_coef for "no object"; weighted mean
     sum(w_i * ce_i) / sum(w_i).
   - `loss_bbox`: L1 distance of matched (pred, target) boxes summed over pairs and the 4
     coordinates, divided by num_boxes.
   - `loss_giou`: sum of (1 - GIoU) over matched pairs, divided by num_boxes.
   num_boxes = number of valid target boxes in the batch, at least 1. Under `jax.jit` with
   the batch sharded over devices the arrays are the global batch, so this count (a plain
   sum) is already global, as DETR's all-reduce makes it. Pass `num_boxes` explicitly when
   the loss sees only part of the batch (e.g. inside `shard_map` or a per-device `pmap`).

Logits are upcast to float32 before softmax and cross-entropy.
"""
import jax
import jax.numpy as jnp

from vlp_jax.matching import hungarian_match
from vlp_jax.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou")


def detr_matching_cost(pred_logits: jax.Array, pred_boxes: jax.Array, target_labels: jax.Array,
                       target_boxes: jax.Array, *, class_cost: float = 1.0,
                       bbox_cost: float = 5.0, giou_cost: float = 2.0) -> jax.Array:
  """Matching cost [B, Q, T].

  Args: pred_logits [B, Q, C+1], pred_boxes [B, Q, 4] and target_boxes [B, T, 4] in
  cxcywh, target_labels [B, T] (out-of-range labels of padded targets are clipped).
  """
  probs = jax.nn.softmax(pred_logits.astype(jnp.float32), axis=-1)
  num_queries = probs.shape[1]
  labels = jnp.clip(target_labels, 0, probs.shape[-1] - 1)
  label_index = jnp.broadcast_to(labels[:, None, :],
                                 (labels.shape[0], num_queries, labels.shape[1]))
  class_term = -jnp.take_along_axis(probs, label_index, axis=-1)
  pred = pred_boxes.astype(jnp.float32)[:, :, None, :]
  target = target_boxes.astype(jnp.float32)[:, None, :, :]
  l1_term = jnp.sum(jnp.abs(pred - target), axis=-1)
  giou_term = -generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
  return class_cost * class_term + bbox_cost * l1_term + giou_cost * giou_term


def detr_match(pred_logits: jax.Array, pred_boxes: jax.Array, target_labels: jax.Array,
               target_boxes: jax.Array, target_valid: jax.Array, *, class_cost: float = 1.0,
               bbox_cost: float = 5.0, giou_cost: float = 2.0) -> jax.Array:
  """Query matched to each target, [B, T] int32 (-1 for padded targets); no gradient."""
  cost = detr_matching_cost(
      jax.lax.stop_gradient(pred_logits), jax.lax.stop_gradient(pred_boxes), target_labels,
      target_boxes, class_cost=class_cost, bbox_cost=bbox_cost, giou_cost=giou_cost)
  return hungarian_match(cost, target_valid)


def count_target_boxes(target_valid: jax.Array) -> jax.Array:
  """Number of valid targets in the (global, under jit) batch, at least 1. [B, T] -> []."""
  return jnp.maximum(jnp.sum(target_valid.astype(jnp.float32)), 1.0)


def detr_loss(pred_logits: jax.Array, pred_boxes: jax.Array, target_labels: jax.Array,
              target_boxes: jax.Array, target_valid: jax.Array, *, eos_coef: float = 0.1,
              class_cost: float = 1.0, bbox_cost: float = 5.0, giou_cost: float = 2.0,
              num_boxes: jax.Array | float | None = None) -> dict[str, jax.Array]:
  """Unweighted DETR losses of one decoder layer.

  Args:
    pred_logits: [B, Q, C+1] class logits, index C = no object.
    pred_boxes: [B, Q, 4] normalised cxcywh.
    target_labels: [B, T] int in [0, C).
    target_boxes: [B, T, 4] normalised cxcywh.
    target_valid: [B, T] bool, False for padding.
    eos_coef: class weight of "no object" in the cross-entropy.
    class_cost, bbox_cost, giou_cost: matching cost weights.
    num_boxes: box-loss normaliser; default `count_target_boxes(target_valid)`.

  Returns:
    {"loss_ce", "loss_bbox", "loss_giou"}: float32 scalars.
  """
  if num_boxes is None:
    num_boxes = count_target_boxes(target_valid)
  batch, num_queries, num_logits = pred_logits.shape
  no_object = num_logits - 1
  target_valid = target_valid.astype(bool)
  match = detr_match(pred_logits, pred_boxes, target_labels, target_boxes, target_valid,
                     class_cost=class_cost, bbox_cost=bbox_cost, giou_cost=giou_cost)
  batch_ids = jnp.arange(batch)[:, None]

  # Classification over all queries; unmatched queries target "no object".
  query_classes = jnp.full((batch, num_queries), no_object, jnp.int32).at[
      batch_ids, jnp.where(target_valid, match, num_queries)].set(
          target_labels.astype(jnp.int32), mode="drop")
  log_probs = jax.nn.log_softmax(pred_logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, query_classes[..., None], axis=-1)[..., 0]
  weights = jnp.where(query_classes == no_object, eos_coef, 1.0)
  loss_ce = jnp.sum(weights * nll) / jnp.sum(weights)

  # Box regression over matched pairs.
  matched_boxes = jnp.take_along_axis(
      pred_boxes.astype(jnp.float32), jnp.maximum(match, 0)[..., None], axis=1)  # [B, T, 4]
  target_boxes = target_boxes.astype(jnp.float32)
  l1 = jnp.sum(jnp.abs(matched_boxes - target_boxes), axis=-1)
  giou = generalized_box_iou(box_cxcywh_to_xyxy(matched_boxes), box_cxcywh_to_xyxy(target_boxes))
  loss_bbox = jnp.sum(jnp.where(target_valid, l1, 0.0)) / num_boxes
  loss_giou = jnp.sum(jnp.where(target_valid, 1.0 - giou, 0.0)) / num_boxes
  return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}


def detr_loss_per_layer(layer_logits: jax.Array, layer_boxes: jax.Array,
                        target_labels: jax.Array, target_boxes: jax.Array,
                        target_valid: jax.Array, **kwargs) -> dict[str, jax.Array]:
  """DETR losses of every decoder layer, each with its own matching.

  Args:
    layer_logits: [L, B, Q, C+1]; layer_boxes: [L, B, Q, 4]; targets as in `detr_loss`.
    **kwargs: keyword arguments of `detr_loss`.

  Returns:
    {"loss_ce", "loss_bbox", "loss_giou"}: [L] float32 each.
  """
  if kwargs.get("num_boxes") is None:
    kwargs["num_boxes"] = count_target_boxes(target_valid)

  def one_layer(logits: jax.Array, boxes: jax.Array) -> dict[str, jax.Array]:
    return detr_loss(logits, boxes, target_labels, target_boxes, target_valid, **kwargs)

  return jax.vmap(one_layer)(layer_logits, layer_boxes)


def detr_loss_with_aux(layer_logits: jax.Array, layer_boxes: jax.Array,
                       target_labels: jax.Array, target_boxes: jax.Array,
                       target_valid: jax.Array, **kwargs) -> dict[str, jax.Array]:
  """Final-layer losses plus auxiliary losses summed over the earlier layers.

  Shapes as in `detr_loss_per_layer`. Returns scalars `loss_ce`, `loss_bbox`,
  `loss_giou` (last layer) and `loss_ce_aux`, `loss_bbox_aux`, `loss_giou_aux` (sum over
  layers 0..L-2; zero when L == 1).
  """
  per_layer = detr_loss_per_layer(layer_logits, layer_boxes, target_labels, target_boxes,
                                  target_valid, **kwargs)
  losses = {name: values[-1] for name, values in per_layer.items()}
  losses.update({f"{name}_aux": jnp.sum(values[:-1]) for name, values in per_layer.items()})
  return losses


def weighted_detr_loss(losses: dict[str, jax.Array], *, ce_weight: float = 1.0,
                       bbox_weight: float = 5.0, giou_weight: float = 2.0) -> jax.Array:
  """Total training loss: weighted sum of every DETR term in `losses` (aux included)."""
  weights = {"loss_ce": ce_weight, "loss_bbox": bbox_weight, "loss_giou": giou_weight}
  total = jnp.zeros((), jnp.float32)
  for name, weight in weights.items():
    for key in (name, f"{name}_aux"):
      if key in losses:
        total = total + weight * losses[key]
  return total
