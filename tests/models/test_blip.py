"""BLIP: shapes, encoder/decoder parameter sharing, the combined loss, training, cached decoding."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from vlp_jax.models import blip

CONFIG = blip.BlipConfig(
    image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
    vision_mlp_dim=32, vocab_size=40, text_width=16, text_layers=2, text_heads=2,
    text_mlp_dim=32, max_text_length=16, embed_dim=8, queue_size=16)
BATCH, LENGTH = 4, 8


def _batch(seed: int = 0) -> dict[str, jnp.ndarray]:
  """[CLS] words [SEP] pad... captions of varying length, random images."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(8, CONFIG.vocab_size, size=(BATCH, LENGTH)).astype(np.int32)
  for row, length in enumerate([8, 6, 5, 7]):
    ids[row, 0], ids[row, length - 1], ids[row, length:] = CONFIG.cls_id, CONFIG.sep_id, 0
  return {"image": jnp.asarray(rng.normal(size=(BATCH, 16, 16, 3)), jnp.float32),
          "text_ids": jnp.asarray(ids), "text_mask": jnp.asarray(ids != 0, jnp.int32),
          "image_id": jnp.arange(BATCH)}


@pytest.fixture(scope="module")
def model_and_params() -> tuple[blip.Blip, dict]:
  model = blip.build_blip(CONFIG)
  return model, nn.meta.unbox(blip.init_params(model, jax.random.key(0)))


def test_forward_shapes(model_and_params):
  model, params = model_and_params
  batch = _batch()
  out = model.apply({"params": params}, batch["image"], batch["text_ids"],
                    batch["text_mask"].astype(bool))
  assert out["image_features"].shape == out["text_features"].shape == (BATCH, 8)
  np.testing.assert_allclose(np.linalg.norm(out["image_features"], axis=-1), 1, rtol=1e-5)
  assert out["itm_logits"].shape == (BATCH, 2)
  assert out["lm_logits"].shape == (BATCH, LENGTH, CONFIG.vocab_size)
  assert out["lm_logits"].dtype == jnp.float32
  assert float(out["temperature"]) == pytest.approx(0.07)


def test_decoder_shares_everything_but_self_attention(model_and_params):
  model, params = model_and_params
  layer = params["text"]["encoder"]["layers_0"]
  assert set(layer) == {"self_attention", "causal_self_attention", "cross_attention",
                        "feed_forward"}
  assert set(params) == {"vision", "text", "vision_proj", "text_proj", "itm_head", "lm_head",
                         "temperature"}
  assert set(params["lm_head"]) == {"dense", "layer_norm", "bias"}  # output tied to embeddings
  batch = _batch()
  mask = batch["text_mask"].astype(bool)
  image_embeds = model.apply({"params": params}, batch["image"], method=blip.Blip.encode_image)

  def decoder_loss(p):
    return jnp.sum(model.apply({"params": p}, batch["text_ids"], mask, image_embeds,
                               method=blip.Blip.lm_logits) ** 2)

  def encoder_loss(p):
    return jnp.sum(model.apply({"params": p}, batch["text_ids"], mask, image_embeds,
                               method=blip.Blip.itm_logits) ** 2)

  def touched(grads, *path):
    sub = functools.reduce(lambda tree, key: tree[key], path, grads)
    return any(np.abs(leaf).sum() > 0 for leaf in jax.tree.leaves(sub))

  for grads, own, other in ((jax.grad(decoder_loss)(params), "causal_self_attention",
                             "self_attention"),
                            (jax.grad(encoder_loss)(params), "self_attention",
                             "causal_self_attention")):
    for i in range(CONFIG.text_layers):
      layer = ("text", "encoder", f"layers_{i}")
      assert touched(grads, *layer, own) and not touched(grads, *layer, other)
      assert touched(grads, *layer, "cross_attention")
      assert touched(grads, *layer, "feed_forward")
    assert touched(grads, "text", "embeddings")


@pytest.fixture(scope="module")
def train_step(model_and_params):
  model, _ = model_and_params
  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, extra_state, batch, rng):
    (loss, (metrics, new_extra)), grads = jax.value_and_grad(
        lambda p: (lambda out: (out[0], (out[1], out[2])))(
            blip.blip_loss(model, p, extra_state, batch, rng)), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, new_extra, loss, metrics

  return optimizer, step


def test_loss_terms_finite_and_state_advances(model_and_params, train_step):
  model, params = model_and_params
  optimizer, step = train_step
  extra = blip.init_extra_state(params, jax.random.key(1), CONFIG)
  _, _, new_extra, loss, metrics = step(params, optimizer.init(params), extra, _batch(),
                                        jax.random.key(2))
  assert set(metrics) >= {"loss", "itc_loss", "itm_loss", "itm_accuracy", "lm_loss",
                          "lm_accuracy", "temperature", "alpha"}
  assert all(np.isfinite(v) for v in jax.tree.leaves(metrics))
  np.testing.assert_allclose(loss, metrics["itc_loss"] + metrics["itm_loss"]
                             + metrics["lm_loss"], rtol=1e-5)
  assert int(new_extra["step"]) == 1 and int(new_extra["queue"].pointer) == BATCH
  # The momentum text encoder is unimodal: no copies of decoder / cross-attention params.
  assert set(new_extra["momentum"]["text"]["encoder"]["layers_0"]) == {"self_attention",
                                                                       "feed_forward"}
  # EMA of identical trees is the identity; the queue's first rows now hold the batch.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               new_extra["momentum"], blip.momentum_subtree(params))
  features = model.apply({"params": params}, model.apply(
      {"params": params}, _batch()["image"], method=blip.Blip.encode_image),
      method=blip.Blip.image_features)
  np.testing.assert_allclose(new_extra["queue"].image_features[:BATCH], features, atol=1e-5)


def test_loss_decreases_on_a_fixed_batch(model_and_params, train_step):
  _, params = model_and_params
  optimizer, step = train_step
  opt_state = optimizer.init(params)
  extra = blip.init_extra_state(params, jax.random.key(1), CONFIG)
  batch = _batch(3)
  history = []
  for i in range(12):
    params, opt_state, extra, _, metrics = step(params, opt_state, extra, batch,
                                                jax.random.key(i))
    history.append({name: float(value) for name, value in metrics.items()})
  first, last = history[0], history[-1]
  # The queue fills with copies of this batch (false negatives), so ITC plateaus; the
  # total, ITM and LM losses go down.
  assert last["loss"] < 0.9 * first["loss"], history
  assert last["lm_loss"] < 0.9 * first["lm_loss"] and last["itm_loss"] < first["itm_loss"]
  # Momentum params trail the trained params: different from both init and current params.
  assert not np.allclose(extra["momentum"]["text_proj"]["kernel"], params["text_proj"]["kernel"])


def test_cached_decoding_matches_full_forward(model_and_params):
  model, params = model_and_params
  batch = _batch(4)
  tokens = blip.with_token(batch["text_ids"], CONFIG.dec_id)[:, :6]
  image_embeds = model.apply({"params": params}, batch["image"], method=blip.Blip.encode_image)
  full = model.apply({"params": params}, tokens, jnp.ones_like(tokens, bool), image_embeds,
                     method=blip.Blip.lm_logits)
  cache = blip.init_decode_cache(model, params, image_embeds, max_length=6)
  step = jax.jit(blip.decode_step_fn(model, params, CONFIG.vision_width))
  for position in range(6):
    logits, cache = step(tokens[:, position:position + 1], cache, jnp.asarray(position))
    np.testing.assert_allclose(logits, full[:, position], atol=1e-4, rtol=1e-4)


def test_caption_greedy_follows_argmax_of_full_forward(model_and_params):
  model, params = model_and_params
  images = _batch(5)["image"]
  out = jax.jit(lambda p, x: blip.caption(model, p, x, max_length=5, method="greedy"))(
      params, images)
  sequences = np.asarray(out.sequences)
  assert sequences.shape == (BATCH, 5) and (sequences[:, 0] == CONFIG.dec_id).all()
  image_embeds = model.apply({"params": params}, images, method=blip.Blip.encode_image)
  full = model.apply({"params": params}, jnp.asarray(sequences), jnp.ones(sequences.shape, bool),
                     image_embeds, method=blip.Blip.lm_logits)
  for row in range(BATCH):
    for t in range(1, 5):
      if sequences[row, t - 1] in (CONFIG.sep_id, CONFIG.pad_id) and t > 1:
        break
      assert sequences[row, t] == int(np.argmax(full[row, t - 1]))


def _stack_layers(stack_params: dict, num_layers: int) -> dict:
  """TransformerStack params layers_0..layers_{L-1} -> the scanned `layers` tree [L, ...]."""
  layers = [stack_params[f"layers_{i}"] for i in range(num_layers)]
  return {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def test_scanned_model_decodes_like_unscanned(model_and_params):
  model, params = model_and_params
  scanned_model = blip.build_blip(CONFIG, scan_layers=True)
  scanned = dict(params, text=dict(params["text"], encoder=_stack_layers(
      params["text"]["encoder"], CONFIG.text_layers)), vision=dict(
          params["vision"], encoder=_stack_layers(params["vision"]["encoder"],
                                                  CONFIG.vision_layers)))
  reference = nn.meta.unbox(blip.init_params(scanned_model, jax.random.key(0)))
  assert jax.tree.structure(reference) == jax.tree.structure(scanned)
  images = _batch(6)["image"]
  beam = lambda m: jax.jit(lambda p, x: blip.caption(m, p, x, max_length=6, num_beams=2))
  expected, got = beam(model)(params, images), beam(scanned_model)(scanned, images)
  np.testing.assert_array_equal(got.sequences, expected.sequences)
  np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
