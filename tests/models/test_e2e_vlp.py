"""E2E-VLP: output shapes, logical names, the combined loss and grads, overfitting detection,
cached captioning vs the full causal forward, `detect`, and the family's configs."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlp_jax.evaluators import model_eval
from vlp_jax.models import e2e_vlp, e2e_vlp_family
from vlp_jax.models.registry import get_family

CONFIG = e2e_vlp.E2EVLPConfig(
    image_size=32, resnet_depth=0, resnet_stage_blocks=(1, 1, 1), resnet_stage_widths=(8, 16, 32),
    resnet_stage_strides=(1, 2, 2), resnet_stem_width=8, resnet_norm="group", width=32, heads=2,
    mlp_dim=64, encoder_layers=1, decoder_layers=2, dropout_rate=0.0, vocab_size=40,
    max_text_length=16, num_queries=6, num_classes=5, num_attributes=6)
BATCH, LENGTH, OBJECTS, GRID = 4, 8, 3, 4  # 32 px at stride 8: a 4x4 grid


def _batch(seed: int = 0) -> dict[str, jnp.ndarray]:
  rng = np.random.default_rng(seed)
  ids = rng.integers(8, CONFIG.vocab_size, size=(BATCH, LENGTH)).astype(np.int32)
  for row, length in enumerate([8, 6, 5, 7]):
    ids[row, 0], ids[row, length - 1], ids[row, length:] = CONFIG.cls_id, CONFIG.sep_id, 0
  centres = rng.uniform(0.25, 0.75, size=(BATCH, OBJECTS, 2))
  sizes = rng.uniform(0.1, 0.4, size=(BATCH, OBJECTS, 2))
  return {"image": jnp.asarray(rng.normal(size=(BATCH, 32, 32, 3)), jnp.float32),
          "text_ids": jnp.asarray(ids), "text_mask": jnp.asarray(ids != 0, jnp.int32),
          "boxes": jnp.asarray(np.concatenate([centres, sizes], -1), jnp.float32),
          "labels": jnp.asarray(rng.integers(0, 5, size=(BATCH, OBJECTS)), jnp.int32),
          "box_valid": jnp.asarray(np.arange(OBJECTS)[None] < np.array([[3], [1], [2], [3]])),
          "colours": jnp.asarray(rng.integers(-1, 6, size=(BATCH, OBJECTS)), jnp.int32)}


@pytest.fixture(scope="module")
def model_and_params():
  model = e2e_vlp.build_e2e_vlp(CONFIG)
  boxed = jax.jit(functools.partial(e2e_vlp.init_params, model))(jax.random.PRNGKey(0))
  return model, boxed


def test_output_shapes(model_and_params):
  model, boxed = model_and_params
  batch = _batch()
  out = jax.eval_shape(model.apply, {"params": nn.unbox(boxed)}, batch["image"],
                       batch["text_ids"], batch["text_mask"].astype(bool))
  layers, queries, v = CONFIG.decoder_layers, CONFIG.num_queries, CONFIG.vocab_size
  assert out["mlm_logits"].shape == (BATCH, LENGTH, v)
  assert out["itm_logits"].shape == (BATCH, 2)
  assert out["logits"].shape == (layers, BATCH, queries, CONFIG.num_classes + 1)
  assert out["boxes"].shape == (layers, BATCH, queries, 4)
  assert out["attributes"].shape == (layers, BATCH, queries, CONFIG.num_attributes)
  assert out["caption_logits"].shape == (BATCH, LENGTH, v)
  tokens, pos = jax.eval_shape(functools.partial(model.apply, method=e2e_vlp.E2EVLP.encode_image),
                               {"params": nn.unbox(boxed)}, batch["image"])
  assert tokens.shape == (BATCH, GRID * GRID, CONFIG.width) and pos.shape == (GRID * GRID,
                                                                               CONFIG.width)


def test_every_param_has_logical_names(model_and_params):
  _, boxed = model_and_params
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    assert isinstance(leaf, nn.Partitioned), name
    assert len(leaf.names) == leaf.value.ndim, name
  top = set(boxed)
  assert {"grid_encoder", "encoder", "decoder", "object_queries", "class_head", "box_head",
          "attribute_head", "mlm_head", "itm_head", "lm_head", "caption_embeddings"} <= top


@pytest.fixture(scope="module")
def overfit_run(model_and_params):
  """20 Adam steps of the full loss on one fixed batch (one compile shared by two tests):
  every step's metrics, and whether the first step's grads were finite and reached the
  queries and the grid projection."""
  model, boxed = model_and_params
  params = nn.unbox(boxed)
  optimizer = optax.adam(1e-3)
  batch = _batch(1)

  @jax.jit
  def step(params, opt_state, rng):
    (_, metrics), grads = jax.value_and_grad(
        lambda p: e2e_vlp.e2e_vlp_loss(model, p, {}, batch, rng)[:2], has_aux=True)(params)
    checks = {"finite": jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g))
                                             for g in jax.tree.leaves(grads)])),
              "queries": jnp.any(grads["object_queries"] != 0),
              "grid": jnp.any(grads["grid_encoder"]["projection"]["kernel"] != 0)}
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics, checks

  opt_state = optimizer.init(params)
  history, first_checks = [], None
  for i in range(20):
    params, opt_state, metrics, checks = step(params, opt_state, jax.random.PRNGKey(i))
    history.append(jax.device_get(metrics))
    first_checks = first_checks or jax.device_get(checks)
  return history, first_checks


def test_loss_terms_and_grads_are_finite(overfit_run):
  history, checks = overfit_run
  metrics = history[0]
  for name in ("loss", "mlm_loss", "itm_loss", "itm_accuracy", "detection_loss", "loss_ce",
               "loss_bbox", "loss_giou", "loss_ce_aux", "loss_bbox_aux", "loss_giou_aux",
               "attribute_loss", "lm_loss", "lm_accuracy"):
    assert name in metrics and np.isfinite(metrics[name]), name
  assert metrics["attribute_loss"] > 0 and metrics["loss_ce_aux"] > 0
  expected = (metrics["mlm_loss"] + metrics["itm_loss"] + metrics["detection_loss"]
              + metrics["attribute_loss"] + metrics["lm_loss"])
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
  assert checks["finite"] and checks["queries"] and checks["grid"]


def test_detection_loss_decreases_when_overfitting_a_batch(overfit_run):
  losses = [float(metrics["detection_loss"]) for metrics, in zip(overfit_run[0])]
  assert losses[-1] < 0.7 * losses[0], losses


def test_itm_reads_unmasked_texts_whatever_the_mlm_masking(model_and_params):
  _, boxed = model_and_params
  params = nn.unbox(boxed)
  batch = _batch(4)

  def metrics_at(mask_prob: float) -> dict:
    m = e2e_vlp.build_e2e_vlp(dataclasses.replace(CONFIG, mask_prob=mask_prob))
    return jax.jit(lambda p: e2e_vlp.e2e_vlp_loss(m, p, {}, batch, jax.random.PRNGKey(5),
                                                  deterministic=True)[1])(params)

  light, heavy = metrics_at(0.15), metrics_at(0.9)
  np.testing.assert_allclose(heavy["itm_loss"], light["itm_loss"], rtol=1e-6)
  assert abs(float(heavy["mlm_loss"]) - float(light["mlm_loss"])) > 1e-3


def test_mlm_stride_reads_every_kth_example(model_and_params):
  _, boxed = model_and_params
  params = nn.unbox(boxed)
  batch = _batch(6)
  every_other = jax.tree.map(lambda x: x[::2], batch)

  def metrics(stride: int, inputs: dict) -> dict:
    m = e2e_vlp.build_e2e_vlp(dataclasses.replace(CONFIG, mlm_stride=stride, mask_prob=0.5))
    return jax.jit(lambda p: e2e_vlp.e2e_vlp_loss(m, p, {}, inputs, jax.random.PRNGKey(2),
                                                  deterministic=True)[1])(params)

  strided, halved, full = metrics(2, batch), metrics(1, every_other), metrics(1, batch)
  np.testing.assert_allclose(strided["mlm_loss"], halved["mlm_loss"], rtol=1e-5)
  np.testing.assert_allclose(strided["itm_loss"], full["itm_loss"], rtol=1e-6)
  assert abs(float(strided["mlm_loss"]) - float(full["mlm_loss"])) > 1e-3
  with pytest.raises(ValueError, match="mlm_stride=0"):
    dataclasses.replace(CONFIG, mlm_stride=0)


def test_cached_caption_decode_equals_full_causal_forward(model_and_params):
  model, boxed = model_and_params
  params = nn.unbox(boxed)
  images = _batch()["image"]
  max_length = 7
  out = jax.jit(lambda p, x: e2e_vlp.caption(model, p, x, max_length=max_length))(params, images)
  sequences = np.asarray(out.sequences)
  assert sequences.shape == (BATCH, max_length) and np.all(sequences[:, 0] == CONFIG.dec_id)

  def full_logits(p, x, ids):
    variables = {"params": p}
    tokens, pos = model.apply(variables, x, method=e2e_vlp.E2EVLP.encode_image)
    memory = model.apply(variables, tokens, pos, method=e2e_vlp.E2EVLP.image_memory)
    return model.apply(variables, ids, memory, pos, method=e2e_vlp.E2EVLP.caption_logits)

  logits = np.asarray(jax.jit(full_logits)(params, images, jnp.asarray(sequences)))
  log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  for row in range(BATCH):
    ended = np.flatnonzero(sequences[row, 1:] == CONFIG.sep_id)
    last = (ended[0] + 1) if len(ended) else max_length - 1   # last generated position
    generated = sequences[row, 1:last + 1]
    np.testing.assert_array_equal(np.argmax(logits[row, :last], axis=-1), generated)
    np.testing.assert_allclose(out.scores[row],
                               log_probs[row, np.arange(last), generated].sum(), rtol=1e-4)


def test_detect_returns_pixel_boxes_sorted_by_score(model_and_params):
  model, boxed = model_and_params
  results = e2e_vlp.detect(model, nn.unbox(boxed), _batch()["image"])
  assert len(results) == BATCH
  for boxes, labels, scores in results:
    assert boxes.shape == (CONFIG.num_queries, 4) and labels.shape == scores.shape
    assert np.all((boxes >= 0) & (boxes <= 32)) and np.all(boxes[:, 2:] >= boxes[:, :2])
    assert np.all((labels >= 0) & (labels < CONFIG.num_classes))
    assert np.all(np.diff(scores) <= 0)
  threshold = float(np.median(results[0][2]))
  kept = e2e_vlp.detect(model, nn.unbox(boxed), _batch()["image"], score_threshold=threshold)
  assert np.all(kept[0][2] > threshold) and len(kept[0][2]) < CONFIG.num_queries


def test_attribute_loss_counts_matched_known_targets_only():
  logits = jnp.log(jnp.asarray([[[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]]]))
  match = jnp.asarray([[1, 0, -1]])
  attributes = jnp.asarray([[1, -1, 0]])
  loss = e2e_vlp.attribute_loss(logits, match, attributes, jnp.asarray([[True, True, False]]))
  np.testing.assert_allclose(loss, -np.log(0.8), rtol=1e-6)


@pytest.mark.parametrize("variant,grid,queries", [("tiny", 3, 9), ("base", 14, 100)])
def test_family_configs(variant, grid, queries):
  config = get_family("e2e_vlp").default_config(variant)
  model_config = e2e_vlp.E2EVLPConfig(**{
      name: tuple(value) if isinstance(value, list) else value
      for name, value in config.model.items()
      if name in e2e_vlp.E2EVLPConfig.__dataclass_fields__})
  assert config.model.image_size // model_config.resnet().stride == grid
  assert model_config.num_queries == queries
  assert "pad_objects" in config.data.preprocess and "cxcywh" in config.data.preprocess_eval
  assert e2e_vlp_family.FAMILY.name == "e2e_vlp"


def _scanned_params(params: dict) -> dict:
  """Unrolled `layers_i` of the encoder and decoder stacks -> the scanned `layers` [L, ...]."""
  def stack(stack_params: dict, num_layers: int) -> dict:
    layers = [stack_params[f"layers_{i}"] for i in range(num_layers)]
    return {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
  return dict(params, encoder=stack(params["encoder"], CONFIG.encoder_layers),
              decoder=stack(params["decoder"], CONFIG.decoder_layers))


def test_scanned_layers_give_the_unrolled_loss_outputs_and_captions(model_and_params):
  model, boxed = model_and_params
  params = nn.unbox(boxed)
  scanned_model = e2e_vlp.build_e2e_vlp(CONFIG, scan_layers=True)
  scanned = _scanned_params(params)
  reference = nn.unbox(jax.eval_shape(functools.partial(e2e_vlp.init_params, scanned_model),
                                      jax.random.PRNGKey(0)))
  assert jax.tree.structure(reference) == jax.tree.structure(scanned)
  assert jax.tree.map(jnp.shape, reference) == jax.tree.map(jnp.shape, scanned)
  batch = _batch(2)

  def everything(m, p):
    loss, metrics, _ = e2e_vlp.e2e_vlp_loss(m, p, {}, batch, jax.random.PRNGKey(3),
                                            deterministic=True)
    outputs = m.apply({"params": p}, batch["image"], batch["text_ids"],
                      batch["text_mask"].astype(bool))
    captions = e2e_vlp.caption(m, p, batch["image"], max_length=6, method="beam", num_beams=2)
    return loss, metrics, outputs, captions

  expected = jax.jit(functools.partial(everything, model))(params)
  got = jax.jit(functools.partial(everything, scanned_model))(scanned)
  jax.tree.map(lambda e, g: np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5),
               expected[:3], got[:3])
  np.testing.assert_array_equal(got[3].sequences, expected[3].sequences)
  np.testing.assert_allclose(got[3].scores, expected[3].scores, atol=1e-4)


class _WordTokenizer:
  """Ids are indices into WORDS; decode stops at [SEP] (id 1) and skips [PAD]/[DEC] (0, 2)."""
  WORDS = ["[PAD]", "[SEP]", "[DEC]", "a", "red", "circle", "blue", "square", "and"]

  def decode(self, ids) -> str:
    words = []
    for i in np.asarray(ids).tolist():
      if i == 1:
        break
      if i > 2:
        words.append(self.WORDS[i])
    return " ".join(words)


def test_caption_evaluator_reports_object_recall_of_the_valid_objects():
  # Image 0: red circle + blue square (both named); image 1: red circle (named as blue);
  # image 2 is padding (mask False). Colour ids: red 0, blue 4; labels: circle 0, square 1.
  captions = np.asarray([[2, 3, 4, 5, 8, 3, 6, 7, 1], [2, 3, 6, 5, 1, 0, 0, 0, 0],
                         [2, 3, 4, 5, 1, 0, 0, 0, 0]])
  batch = {"image": np.zeros((3, 4, 4, 3), np.float32), "mask": np.asarray([True, True, False]),
           "text_ids": captions, "labels": np.asarray([[0, 1], [0, 0], [0, 0]]),
           "colours": np.asarray([[0, 4], [0, -1], [0, -1]]),
           "box_valid": np.asarray([[True, True], [True, False], [True, False]])}
  evaluator = model_eval.captioning_evaluator(lambda params, images: captions, _WordTokenizer())
  metrics = evaluator.run(None, {}, [batch])
  np.testing.assert_allclose(metrics["object_recall"], 0.5)  # mean of 1.0 and 0.0
  assert metrics["bleu4"] > 0.5 and "cider" in metrics   # captions equal their references
