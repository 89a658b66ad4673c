"""Evaluator helpers shared by model families: tokenizer loading, captioning and detection loops.

A family wraps its model's jitted forward (`generate(params, images) -> token ids [B, L]`,
`predict(params, images) -> {boxes [B, N, 4] normalised xyxy, labels [B, N], scores [B, N]}`)
in these and gets `vlp_jax.models.registry.Evaluator`s whose metric names drop the metric
module's prefix (the trainer prefixes the evaluator's name): `caption/bleu4`, `detection/ap`.
"""
from collections.abc import Callable, Iterable
from typing import Any

import jax
import ml_collections
import numpy as np

from vlp_jax.evaluators import caption_metrics as caption_lib
from vlp_jax.evaluators import detection_metrics as detection_lib
from vlp_jax.models.registry import Evaluator
from vlp_jax.ops.boxes import box_cxcywh_to_xyxy

Batch = dict[str, Any]


def load_tokenizer(config: ml_collections.ConfigDict) -> Any:
  """The run's tokenizer (`config.data.tokenizer`), or None when not set."""
  if not config.data.get("tokenizer"):
    return None
  from vlp_jax.data.tokenizer import load_tokenizer as load  # TensorFlow only when needed
  return load(config.data.tokenizer, config.data.get("tokenizer_lower_case", True))


def without_prefix(metrics: dict[str, float]) -> dict[str, float]:
  """`caption/bleu4` -> `bleu4`."""
  return {name.split("/", 1)[-1]: value for name, value in metrics.items()}


def reference_texts(batch: Batch, row: int, tokenizer: Any) -> list[str]:
  """Decoded reference captions of one example: text_ids [L] or [K, L] (+ text_valid [K])."""
  ids = np.asarray(batch["text_ids"])[row]
  if ids.ndim == 1:
    return [tokenizer.decode(ids)]
  valid = np.asarray(batch.get("text_valid", np.ones(ids.shape[:1], bool)))[row]
  return [tokenizer.decode(caption) for caption, ok in zip(ids, valid) if ok]


def object_pairs(batch: Batch, row: int) -> list[tuple[int, int]]:
  """(colour id, label) of one example's valid objects (`pad_objects` layout with colours)."""
  labels = np.asarray(batch["labels"])[row]
  valid = np.asarray(batch.get("box_valid", np.ones(np.shape(batch["labels"]), bool)), bool)[row]
  colours = np.asarray(batch["colours"])[row]
  return [(int(colour), int(label)) for colour, label in zip(colours[valid], labels[valid])]


def captioning_evaluator(generate: Callable[[Any, jax.Array], jax.Array], tokenizer: Any,
                         skip: int = 1) -> Evaluator:
  """BLEU-1..4 / CIDEr-D of `generate`d captions (the first `skip` tokens, BOS and prompt,
  dropped) against the batch's reference text(s), and `object_recall` of each caption on its
  valid (colour, label) objects when the batches carry them (`pad_objects` on shapes)."""
  # Imported here: the builders package registers the TFDS builders (TensorFlow) on import.
  from vlp_jax.data.builders.object_recall import batch_object_recall

  def run(params: Any, extra_state: Any, batches: Iterable[Batch]) -> dict[str, float]:
    del extra_state
    references, candidates, recalls = {}, {}, []
    for batch in batches:
      sequences = np.asarray(jax.device_get(generate(params, batch["image"])))
      rows = np.flatnonzero(np.asarray(batch["mask"], bool))
      texts = [tokenizer.decode(sequences[row, skip:]) for row in rows]
      for row, text in zip(rows, texts):
        references[len(candidates)] = reference_texts(batch, row, tokenizer)
        candidates[len(candidates)] = text
      if "colours" in batch and "labels" in batch:
        recalls.append(batch_object_recall(texts, [object_pairs(batch, row) for row in rows]))
    metrics = without_prefix(caption_lib.caption_metrics(references, candidates))
    if recalls:
      metrics["object_recall"] = float(np.concatenate(recalls).mean())
    return metrics

  return Evaluator(run=run)


def ground_truth_objects(batch: Batch, row: int, box_format: str = "cxcywh") -> dict[str, Any]:
  """{boxes [M, 4] normalised xyxy, labels [M]} of one example's valid padded objects."""
  valid = np.asarray(batch["box_valid"], bool)[row]
  boxes = np.asarray(batch["boxes"], np.float32)[row][valid]
  if box_format == "cxcywh":
    boxes = np.asarray(box_cxcywh_to_xyxy(boxes))
  return {"boxes": boxes, "labels": np.asarray(batch["labels"])[row][valid]}


def detection_evaluator(predict: Callable[[Any, jax.Array], dict[str, jax.Array]],
                        box_format: str = "cxcywh") -> Evaluator:
  """COCO AP / AP50 of `predict`ed objects against `pad_objects` targets (`box_format`)."""

  def run(params: Any, extra_state: Any, batches: Iterable[Batch]) -> dict[str, float]:
    del extra_state
    predictions, ground_truths = [], []
    for batch in batches:
      outputs = jax.device_get(predict(params, batch["image"]))
      for row in np.flatnonzero(np.asarray(batch["mask"], bool)):
        predictions.append({name: np.asarray(value)[row] for name, value in outputs.items()})
        ground_truths.append(ground_truth_objects(batch, row, box_format))
    return without_prefix(detection_lib.detection_metrics(predictions, ground_truths))

  return Evaluator(run=run)
