"""The `blip` family: config defaults, build, init, the trainer-protocol loss, the evaluator."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from vlp_jax.models import blip, blip_family
from vlp_jax.train.config import base_config, load_config_file

SMALL = dict(image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
             vision_mlp_dim=32, vocab_size=40, text_width=16, text_layers=1, text_heads=2,
             text_mlp_dim=32, max_text_length=8, embed_dim=8, queue_size=8)


def _config(**model_overrides):
  config = base_config()
  defaults = blip_family.default_config("tiny")
  config.model, config.data = defaults.model, defaults.data
  config.model.update(dict(SMALL, **model_overrides))
  return config


def _batch(seed: int, size: int = 4) -> dict[str, jnp.ndarray]:
  rng = np.random.default_rng(seed)
  ids = rng.integers(8, 40, size=(size, 8)).astype(np.int32)
  ids[:, 0], ids[:, 5], ids[:, 6:] = 2, 3, 0
  return {"image": jnp.asarray(rng.normal(size=(size, 16, 16, 3)), jnp.float32),
          "text_ids": jnp.asarray(ids), "text_mask": jnp.asarray(ids != 0, jnp.int32),
          "image_id": jnp.arange(size), "mask": jnp.asarray([True] * (size - 1) + [False])}


def test_default_configs_hold_every_model_field():
  for variant in ("tiny", "base", "large"):
    config = blip_family.default_config(variant)
    assert config.model.family == "blip"
    blip_family.blip_config_from(config)  # every field is a BlipConfig field
  assert blip_family.default_config("base").model.queue_size == 57600
  with pytest.raises(ValueError, match="unknown blip variant"):
    blip_family.default_config("huge")


def test_config_file_registers_the_family():
  path = str(pathlib.Path(__file__).parents[2] / "configs" / "blip.py")
  for variant in ("tiny", "base", "large"):
    config = load_config_file(f"{path}:{variant}")
    assert config.model.queue_size % config.global_batch_size == 0


def test_build_init_loss_and_retrieval_evaluator():
  model = blip_family.build(_config(eval_rerank_k=2, eval_itm_batch_size=4))
  params, extra_state = jax.jit(model.init)(jax.random.key(0))
  params, extra_state = nn.meta.unbox(params), nn.meta.unbox(extra_state)
  assert set(extra_state) == {"momentum", "queue", "step"}
  loss, metrics, new_state = jax.jit(model.loss_fn)(params, extra_state, _batch(0),
                                                    jax.random.key(1))
  assert np.isfinite(loss) and metrics["loss"] == loss
  assert jax.tree.structure(new_state) == jax.tree.structure(extra_state)
  results = model.evaluators["retrieval"].run(params, extra_state, [_batch(1), _batch(2)])
  assert set(results) >= {"img2txt_r1", "txt2img_r1", "r_mean"}
  # 6 real pairs (the masked ones dropped): every ground truth ranks within the top 10.
  assert results["img2txt_r10"] == 1.0 and results["txt2img_r10"] == 1.0


class _WordTokenizer:
  """Test tokenizer over ids: word i <-> "w{i}"; ids below 8 are special (dropped)."""

  def encode(self, text: str) -> list[int]:
    return [int(word[1:]) for word in text.split()]

  def decode(self, ids) -> str:
    return " ".join(f"w{int(i)}" for i in ids if int(i) >= 8)


def test_captioning_evaluator_strips_prompt_and_scores():
  config = _config(eval_caption_prompt="w9 w10", eval_caption_max_length=6,
                   eval_caption_min_length=0, eval_caption_num_beams=2)
  model = blip_family.build(config)
  params, _ = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0)))
  blip_model = blip.build_blip(blip_family.blip_config_from(config))
  evaluator = blip_family._captioning_evaluator(blip_model, _WordTokenizer(), config.model)
  batches = [_batch(1), _batch(2)]
  results = evaluator.run(params, None, batches)
  assert set(results) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
  assert all(np.isfinite(value) for value in results.values())
  sequences = jax.jit(lambda p, x: blip.caption(
      blip_model, p, x, max_length=6, num_beams=2, prompt_ids=jnp.asarray([9, 10])))(
          params, batches[0]["image"]).sequences
  np.testing.assert_array_equal(sequences[:, :3], [[6, 9, 10]] * 4)
