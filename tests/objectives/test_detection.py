"""DETR set criterion vs transformers' ImageLoss + HungarianMatcher, gradients, sharding."""
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers.loss import loss_for_object_detection as hf

from subprocess_testing import EIGHT_CPU_DEVICES, run_python
from vlp_jax.objectives import detection

NUM_CLASSES = 7
_loss = jax.jit(detection.detr_loss)


def random_batch(seed: int, layers: int = 1, batch: int = 4, queries: int = 12,
                 targets: int = 5) -> dict[str, np.ndarray]:
  """Random predictions [L, B, Q, ...] and padded targets with 0..T valid boxes each."""
  rng = np.random.default_rng(seed)
  def boxes(*shape):
    center = rng.uniform(0.2, 0.8, (*shape, 2))
    size = rng.uniform(0.05, 0.4, (*shape, 2))
    return np.concatenate([center, size], -1).astype(np.float32)
  counts = rng.integers(0, targets + 1, batch)
  counts[0] = targets
  return {
      "logits": rng.normal(0, 2, (layers, batch, queries, NUM_CLASSES + 1)).astype(np.float32),
      "boxes": boxes(layers, batch, queries),
      "labels": rng.integers(0, NUM_CLASSES, (batch, targets)).astype(np.int32),
      "target_boxes": boxes(batch, targets),
      "valid": np.arange(targets)[None, :] < counts[:, None],
  }


def reference_losses(data: dict[str, np.ndarray]) -> dict[str, float]:
  """transformers' DETR criterion; aux layers reported as <name>_<layer>."""
  matcher = hf.HungarianMatcher(class_cost=1.0, bbox_cost=5.0, giou_cost=2.0)
  criterion = hf.ImageLoss(matcher, NUM_CLASSES, eos_coef=0.1, losses=["labels", "boxes"])
  targets = [{"class_labels": torch.from_numpy(labels[valid]).long(),
              "boxes": torch.from_numpy(boxes[valid])}
             for labels, boxes, valid in zip(data["labels"], data["target_boxes"], data["valid"])]
  layer = lambda i: {"logits": torch.from_numpy(data["logits"][i]),
                     "pred_boxes": torch.from_numpy(data["boxes"][i])}
  outputs = layer(-1)
  if data["logits"].shape[0] > 1:
    outputs["auxiliary_outputs"] = [layer(i) for i in range(data["logits"].shape[0] - 1)]
  with torch.no_grad():
    return {k: float(v) for k, v in criterion(outputs, targets).items()}


def test_single_layer_matches_transformers():
  for seed in range(6):
    data = random_batch(seed)
    ours = _loss(data["logits"][0], data["boxes"][0], data["labels"],
                                        data["target_boxes"], data["valid"])
    reference = reference_losses(data)
    for name in detection.LOSS_NAMES:
      np.testing.assert_allclose(ours[name], reference[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_aux_layers_match_transformers():
  data = random_batch(10, layers=3)

  @jax.jit
  def all_losses(*args):
    with_aux = detection.detr_loss_with_aux(*args)
    return detection.detr_loss_per_layer(*args), with_aux, detection.weighted_detr_loss(with_aux)

  per_layer, with_aux, total = all_losses(
      data["logits"], data["boxes"], data["labels"], data["target_boxes"], data["valid"])
  reference = reference_losses(data)
  for name in detection.LOSS_NAMES:
    expected = [reference[f"{name}_{i}"] for i in range(2)] + [reference[name]]
    np.testing.assert_allclose(per_layer[name], expected, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(with_aux[name], per_layer[name][-1], rtol=1e-6)
    np.testing.assert_allclose(with_aux[f"{name}_aux"], per_layer[name][:-1].sum(), rtol=1e-6)
  expected_total = sum(w * per_layer[n].sum() for n, w in zip(detection.LOSS_NAMES, (1, 5, 2)))
  np.testing.assert_allclose(total, expected_total, rtol=1e-5)


def test_no_targets_and_explicit_normaliser():
  data = random_batch(3)
  args = (data["logits"][0], data["boxes"][0], data["labels"], data["target_boxes"])
  empty = _loss(*args, np.zeros_like(data["valid"]))
  assert float(empty["loss_bbox"]) == 0.0 and float(empty["loss_giou"]) == 0.0
  # Every query targets "no object": plain mean of its negative log-probability.
  log_probs = jax.nn.log_softmax(data["logits"][0], axis=-1)
  np.testing.assert_allclose(empty["loss_ce"], -log_probs[..., -1].mean(), rtol=1e-6)
  default = _loss(*args, data["valid"])
  doubled = _loss(*args, data["valid"], num_boxes=2 * data["valid"].sum())
  np.testing.assert_allclose(doubled["loss_bbox"], default["loss_bbox"] / 2, rtol=1e-6)
  np.testing.assert_allclose(doubled["loss_ce"], default["loss_ce"], rtol=1e-6)


def test_gradients_flow_to_matched_queries_only():
  data = random_batch(4)
  targets = (data["labels"], data["target_boxes"], data["valid"])

  @jax.jit
  def grads_and_match(logits: jax.Array, boxes: jax.Array):
    def weighted(logits: jax.Array, boxes: jax.Array) -> jax.Array:
      losses = detection.detr_loss(logits, boxes, *targets)
      return losses["loss_ce"] + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"]
    return jax.grad(weighted, argnums=(0, 1))(logits, boxes), detection.detr_match(
        logits, boxes, *targets)

  (logit_grads, grads), match = grads_and_match(data["logits"][0], data["boxes"][0])
  logit_grads, grads, match = map(np.asarray, (logit_grads, grads, match))
  assert np.all(np.isfinite(grads)) and np.all(np.isfinite(logit_grads))
  matched = np.zeros(grads.shape[:2], bool)
  for b, row in enumerate(match):
    matched[b, row[row >= 0]] = True
  assert matched.sum() == data["valid"].sum() > 0
  assert np.all(np.abs(grads[matched]).sum(-1) > 0)
  np.testing.assert_array_equal(grads[~matched], 0.0)
  assert np.all(np.abs(logit_grads).sum(-1) > 0)  # every query has a class target


def test_sharded_jit_uses_global_box_count():
  script = textwrap.dedent("""
      import jax, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from vlp_jax.objectives import detection
      mesh = Mesh(np.array(jax.devices()), ("data",))
      rng = np.random.default_rng(0)
      B, Q, T, C = 16, 10, 4, 5
      logits = rng.normal(size=(B, Q, C + 1)).astype(np.float32)
      box = lambda n: np.concatenate([rng.uniform(.2, .8, (B, n, 2)),
                                      rng.uniform(.05, .3, (B, n, 2))], -1)
      boxes, target_boxes = box(Q), box(T)
      labels = rng.integers(0, C, (B, T))
      valid = rng.random((B, T)) < 0.6
      args = [logits, boxes.astype(np.float32), labels, target_boxes.astype(np.float32), valid]
      expected = jax.jit(detection.detr_loss)(*args)
      sharded = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in args]
      got = jax.jit(detection.detr_loss)(*sharded)
      for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6)
      print("ok")
  """)
  result = run_python(script, env=EIGHT_CPU_DEVICES)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().endswith("ok")
