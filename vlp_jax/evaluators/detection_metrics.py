"""COCO-style detection AP (pycocotools `COCOeval`, iouType 'bbox', area 'all', maxDets 100).

Per image, predictions are `{"boxes": [N, 4], "scores": [N], "labels": [N]}` and ground
truths `{"boxes": [M, 4], "labels": [M]}` with an optional `"is_crowd": [M]` flag. Boxes are
xyxy, in pixels or normalised to [0, 1] -- either, as long as predictions and ground truths
of an image share the unit: IoU, and so AP over area 'all', does not change when the axes are
scaled.

The evaluation reproduces COCOeval: per (image, category) the top `max_detections`
detections by score are greedily matched, best score first, to the unmatched ground truth
of highest IoU (>= threshold, later box on equal IoU); crowd boxes are matched by
intersection over the detection's area, can absorb many detections, and neither they nor
the detections matched to them count. Precision is made monotone and read at 101 recall
points; AP is the mean over IoU thresholds 0.50:0.05:0.95, recall points and categories
that have at least one non-crowd ground truth (-1 when none has).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100
Detections = Mapping[str, np.ndarray]


def box_iou_coco(detections: np.ndarray, ground_truths: np.ndarray,
                 is_crowd: np.ndarray) -> np.ndarray:
  """IoU [D, G] of xyxy boxes; for crowd ground truths, intersection over detection area."""
  detections = np.asarray(detections, np.float64).reshape(-1, 4)
  ground_truths = np.asarray(ground_truths, np.float64).reshape(-1, 4)
  top_left = np.maximum(detections[:, None, :2], ground_truths[None, :, :2])
  bottom_right = np.minimum(detections[:, None, 2:], ground_truths[None, :, 2:])
  intersection = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=-1)
  det_area = np.prod(detections[:, 2:] - detections[:, :2], axis=-1)[:, None]
  gt_area = np.prod(ground_truths[:, 2:] - ground_truths[:, :2], axis=-1)[None, :]
  union = np.where(np.asarray(is_crowd, bool)[None, :], det_area, det_area + gt_area - intersection)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(union > 0, intersection / union, 0.0)


def _best_gt_per_threshold(iou_row: np.ndarray, allowed: np.ndarray,
                           thresholds: np.ndarray) -> np.ndarray:
  """Per threshold [T]: index of the allowed [T, G] ground truth of highest IoU >= threshold
  (the last one on equal IoU, as COCOeval's loop), or -1."""
  candidates = np.where(allowed & (iou_row[None, :] >= thresholds[:, None]), iou_row[None, :],
                        -np.inf)
  last_best = candidates.shape[1] - 1 - np.argmax(candidates[:, ::-1], axis=1)
  return np.where(np.isfinite(candidates.max(axis=1)), last_best, -1)


def match_image(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray,
                gt_crowd: np.ndarray, iou_thresholds: np.ndarray = IOU_THRESHOLDS,
                max_detections: int = MAX_DETECTIONS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """Greedy COCO matching for one image and category, all IoU thresholds at once.

  Returns scores [D'] (sorted, truncated to max_detections), matched [T, D'] and
  ignored [T, D'] flags, and the number of non-crowd ground truths.
  """
  order = np.argsort(-np.asarray(det_scores, np.float64), kind="mergesort")[:max_detections]
  det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)[order]
  gt_order = np.argsort(gt_crowd, kind="mergesort")   # non-crowd first, as COCOeval
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)[gt_order]
  gt_crowd = np.asarray(gt_crowd, bool)[gt_order]
  thresholds = np.minimum(np.asarray(iou_thresholds, np.float64), 1 - 1e-10)
  matched = np.zeros((len(thresholds), len(order)), bool)
  ignored = np.zeros_like(matched)
  if len(gt_boxes):
    ious = box_iou_coco(det_boxes, gt_boxes, gt_crowd)
    gt_taken = np.zeros((len(thresholds), len(gt_boxes)), bool)
    crowd_allowed = np.broadcast_to(gt_crowd, gt_taken.shape)
    for d in range(len(order)):
      # Free non-crowd ground truth first; crowd regions (reusable) only when none qualifies.
      m = _best_gt_per_threshold(ious[d], ~gt_crowd[None, :] & ~gt_taken, thresholds)
      m = np.where(m >= 0, m, _best_gt_per_threshold(ious[d], crowd_allowed, thresholds))
      hit = np.flatnonzero(m >= 0)
      matched[hit, d] = True
      ignored[hit, d] = gt_crowd[m[hit]]
      gt_taken[hit, m[hit]] = True
  return np.asarray(det_scores, np.float64)[order], matched, ignored, int((~gt_crowd).sum())


def _precision_at_recalls(matched: np.ndarray, ignored: np.ndarray, num_gt: int) -> np.ndarray:
  """Interpolated precision [T, R] from score-sorted matched / ignored flags [T, D]."""
  true_pos = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
  false_pos = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
  precision = np.zeros((matched.shape[0], len(RECALL_THRESHOLDS)))
  for t in range(matched.shape[0]):
    recall = true_pos[t] / num_gt
    pr = true_pos[t] / (true_pos[t] + false_pos[t] + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
    indices = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    valid = indices < len(pr)
    precision[t, valid] = pr[indices[valid]]
  return precision


def coco_precision(predictions: Sequence[Detections], ground_truths: Sequence[Detections], *,
                   max_detections: int = MAX_DETECTIONS,
                   iou_thresholds: np.ndarray = IOU_THRESHOLDS) -> dict[int, np.ndarray]:
  """Interpolated precision [T, 101] per category with non-crowd ground truth."""
  if len(predictions) != len(ground_truths):
    raise ValueError("need one prediction dict per ground-truth image")
  categories = {int(c) for gt in ground_truths for c in np.asarray(gt["labels"]).reshape(-1)}
  # Per category, in image order: (scores, matched, ignored) of each image; non-crowd GTs.
  per_category = {c: ([], [], []) for c in categories}
  num_gt = dict.fromkeys(categories, 0)
  for pred, gt in zip(predictions, ground_truths):
    gt_labels = np.asarray(gt["labels"]).reshape(-1)
    gt_boxes = np.asarray(gt["boxes"]).reshape(-1, 4)
    crowd = np.asarray(gt.get("is_crowd", np.zeros(len(gt_labels), bool)), bool).reshape(-1)
    det_labels = np.asarray(pred["labels"]).reshape(-1)
    det_boxes = np.asarray(pred["boxes"]).reshape(-1, 4)
    det_scores = np.asarray(pred["scores"]).reshape(-1)
    for category in categories & {int(c) for c in np.concatenate([gt_labels, det_labels])}:
      gt_mask, det_mask = gt_labels == category, det_labels == category
      *image_result, image_num_gt = match_image(
          det_boxes[det_mask], det_scores[det_mask], gt_boxes[gt_mask], crowd[gt_mask],
          iou_thresholds, max_detections)
      for collected, result in zip(per_category[category], image_result):
        collected.append(result)
      num_gt[category] += image_num_gt
  precision = {}
  for category in sorted(categories):
    if num_gt[category] == 0:
      continue
    scores, matched, ignored = per_category[category]
    order = np.argsort(-np.concatenate(scores), kind="mergesort")
    precision[category] = _precision_at_recalls(np.concatenate(matched, axis=1)[:, order],
                                                np.concatenate(ignored, axis=1)[:, order],
                                                num_gt[category])
  return precision


def detection_metrics(predictions: Sequence[Detections], ground_truths: Sequence[Detections], *,
                      max_detections: int = MAX_DETECTIONS) -> dict[str, float]:
  """`detection/ap` (IoU 0.50:0.95) and `detection/ap50`, COCO's AP in [0, 1] (-1 if no GT)."""
  precision = coco_precision(predictions, ground_truths, max_detections=max_detections)
  if not precision:
    return {"detection/ap": -1.0, "detection/ap50": -1.0}
  stacked = np.stack(list(precision.values()))          # [K, T, R]
  at_50 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.5)))
  return {"detection/ap": float(stacked.mean()), "detection/ap50": float(stacked[:, at_50].mean())}
