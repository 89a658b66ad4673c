"""COCO-style AP: hand-computed cases and parity with pycocotools COCOeval."""
import contextlib
import io

import numpy as np
import pytest

from vlp_jax.evaluators import detection_metrics as dm


def _image(boxes, labels, scores=None, is_crowd=None):
  out = {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "labels": np.asarray(labels)}
  if scores is not None:
    out["scores"] = np.asarray(scores, np.float64)
  if is_crowd is not None:
    out["is_crowd"] = np.asarray(is_crowd, bool)
  return out


def test_hand_computed_ap_with_a_false_positive():
  gt = _image([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])
  pred = _image([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [1, 1, 1], [0.9, 0.8, 0.7])
  # Precision 1 up to recall 0.5 (51 recall points), then 2/3 (50 points), at every IoU.
  expected = (51 * 1.0 + 50 * 2 / 3) / 101
  metrics = dm.detection_metrics([pred], [gt])
  assert metrics["detection/ap"] == pytest.approx(expected)
  assert metrics["detection/ap50"] == pytest.approx(expected)


def test_iou_threshold_sweep_and_normalised_boxes():
  # IoU of the single detection is 0.72: a hit for thresholds 0.50..0.70 (5 of 10).
  gt = _image([[0, 0, 10, 10]], [3])
  pred = _image([[0, 0, 10, 7.2]], [3], [0.5])
  metrics = dm.detection_metrics([pred], [gt])
  assert metrics == {"detection/ap": pytest.approx(0.5), "detection/ap50": pytest.approx(1.0)}
  scaled = dm.detection_metrics([_image(pred["boxes"] / [20, 40, 20, 40], [3], [0.5])],
                                [_image(gt["boxes"] / [20, 40, 20, 40], [3])])
  assert scaled == metrics


def test_duplicates_count_as_false_positives_but_crowd_hits_are_ignored():
  gt = _image([[0, 0, 10, 10], [40, 40, 80, 80]], [1, 1], is_crowd=[False, True])
  duplicate = _image([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 1], [0.9, 0.8])
  assert dm.detection_metrics([duplicate], [gt])["detection/ap"] == pytest.approx(1.0)
  # A duplicate scored below the hit comes after full recall and costs nothing; a false
  # positive scored above it halves the precision at every recall point.
  early_fp = _image([[0, 0, 10, 10], [100, 100, 110, 110]], [1, 1], [0.8, 0.9])
  assert dm.detection_metrics([early_fp], [gt])["detection/ap"] == pytest.approx(0.5)
  inside_crowd = _image([[0, 0, 10, 10], [45, 45, 55, 55], [50, 50, 60, 60]], [1, 1, 1],
                        [0.5, 0.9, 0.8])
  assert dm.detection_metrics([inside_crowd], [gt])["detection/ap"] == pytest.approx(1.0)


def test_only_top_scored_detections_per_image_and_category_count():
  gt = _image([[0, 0, 10, 10]], [1])
  pred = _image([[50, 50, 60, 60]] * 3 + [[0, 0, 10, 10]], [1, 1, 1, 1], [0.9, 0.8, 0.7, 0.6])
  assert dm.detection_metrics([pred], [gt])["detection/ap"] == pytest.approx(0.25)
  assert dm.detection_metrics([pred], [gt], max_detections=3)["detection/ap"] == 0.0


def test_categories_without_ground_truth_are_skipped():
  gt = _image([[0, 0, 10, 10]], [1])
  pred = _image([[0, 0, 10, 10], [0, 0, 5, 5]], [1, 2], [0.9, 0.9])
  assert dm.detection_metrics([pred], [gt])["detection/ap"] == pytest.approx(1.0)
  assert dm.detection_metrics([pred], [_image(np.zeros((0, 4)), [])])["detection/ap"] == -1.0


def _random_scene(rng, num_images=8, num_categories=4):
  """Ground truths plus predictions with jitter, misses, duplicates, false positives."""
  predictions, ground_truths = [], []
  for image in range(num_images):
    num_gt = rng.integers(0, 7)
    xy = rng.uniform(0, 400, size=(num_gt, 2))
    wh = rng.uniform(8, 200, size=(num_gt, 2))
    gt_boxes = np.concatenate([xy, xy + wh], axis=1)
    gt_labels = rng.integers(0, num_categories, size=num_gt)
    crowd = rng.uniform(size=num_gt) < 0.1
    boxes, labels, scores = [], [], []
    for box, label in zip(gt_boxes, gt_labels):
      if rng.uniform() < 0.2:
        continue   # missed
      for _ in range(rng.choice([1, 1, 2, 3])):   # duplicates
        boxes.append(box + rng.normal(scale=rng.choice([2.0, 10.0, 30.0]), size=4))
        wrong = rng.uniform() < 0.1
        labels.append(rng.integers(0, num_categories + 1) if wrong else label)
        scores.append(rng.uniform(0.3, 1.0))
    num_fp = 110 if image == 0 else rng.integers(0, 5)
    xy = rng.uniform(0, 400, size=(num_fp, 2))
    boxes.extend(np.concatenate([xy, xy + rng.uniform(8, 150, size=(num_fp, 2))], axis=1))
    # Image 0 floods category 0 past maxDets (100 per image and category).
    labels.extend([0] * num_fp if image == 0 else rng.integers(0, num_categories + 1, size=num_fp))
    scores.extend(rng.uniform(0.0, 0.6, size=num_fp))
    scores = np.round(scores, 2)   # rounding makes score ties
    boxes = np.asarray(boxes).reshape(-1, 4)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    predictions.append(_image(boxes, labels, scores))
    ground_truths.append(_image(gt_boxes, gt_labels, is_crowd=crowd))
  return predictions, ground_truths


def _pycocotools_ap(predictions, ground_truths, num_categories):
  coco_module = pytest.importorskip("pycocotools.coco")
  cocoeval_module = pytest.importorskip("pycocotools.cocoeval")
  xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]
  annotations = []
  for image, gt in enumerate(ground_truths):
    for box, label, crowd in zip(gt["boxes"], gt["labels"], gt["is_crowd"]):
      bbox = xywh(box)
      annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": int(label),
                          "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": int(crowd)})
  coco_gt = coco_module.COCO()
  coco_gt.dataset = {"images": [{"id": i} for i in range(len(ground_truths))],
                     "categories": [{"id": c} for c in range(num_categories + 1)],
                     "annotations": annotations}
  results = [{"image_id": image, "category_id": int(label), "bbox": xywh(box), "score": float(s)}
             for image, pred in enumerate(predictions)
             for box, label, s in zip(pred["boxes"], pred["labels"], pred["scores"])]
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt.createIndex()
    evaluator = cocoeval_module.COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats[0], evaluator.stats[1]


@pytest.mark.parametrize("seed", range(5))
def test_parity_with_pycocotools(seed):
  rng = np.random.default_rng(seed)
  predictions, ground_truths = _random_scene(rng)
  # Our boxes in the xyxy that pycocotools' xywh round-trips to, so IoUs agree bit for bit.
  for item in predictions + ground_truths:
    item["boxes"][:, 2:] = item["boxes"][:, :2] + (item["boxes"][:, 2:] - item["boxes"][:, :2])
  ap, ap50 = _pycocotools_ap(predictions, ground_truths, num_categories=4)
  metrics = dm.detection_metrics(predictions, ground_truths)
  assert 0.05 < ap < 0.95
  assert metrics["detection/ap"] == pytest.approx(ap, abs=1e-6)
  assert metrics["detection/ap50"] == pytest.approx(ap50, abs=1e-6)
