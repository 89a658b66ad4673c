"""BLIP numerics against Hugging Face `BlipForImageTextRetrieval` / `BlipForConditionalGeneration`
with converted weights (`vlp_jax.models.blip_hf`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from transformers import BlipConfig as HFBlipConfig
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

from vlp_jax.models import blip, blip_hf
from vlp_jax.objectives import language

CONFIG = blip.BlipConfig(
    image_size=32, patch_size=16, vision_width=16, vision_layers=2, vision_heads=2,
    vision_mlp_dim=32, vocab_size=30, text_width=16, text_layers=2, text_heads=2,
    text_mlp_dim=32, max_text_length=20, embed_dim=8)


def _hf_model(cls, seed: int) -> torch.nn.Module:
  config = HFBlipConfig(
      text_config=dict(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=20, bos_token_id=6,
                       sep_token_id=3, pad_token_id=0, eos_token_id=3),
      vision_config=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, image_size=32, patch_size=16),
      projection_dim=8, image_text_hidden_size=8)
  torch.manual_seed(seed)
  model = cls(config).eval()
  with torch.no_grad():
    for tensor in model.parameters():
      tensor.copy_(0.3 * torch.randn_like(tensor))
  return model


@pytest.fixture(scope="module")
def converted():
  retrieval, captioning = (_hf_model(BlipForImageTextRetrieval, 0),
                           _hf_model(BlipForConditionalGeneration, 1))
  to_numpy = lambda model: {k: v.numpy() for k, v in model.state_dict().items()}
  params = blip_hf.blip_params_from_hf(CONFIG, to_numpy(retrieval), to_numpy(captioning))
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  ids = np.array([[2, 9, 12, 15, 3, 0], [2, 20, 8, 3, 0, 0]])
  return retrieval, captioning, params, images, ids


def test_converted_tree_matches_ours(converted):
  _, _, params, _, _ = converted
  model = blip.build_blip(CONFIG)
  ours = nn.meta.unbox(blip.init_params(model, jax.random.key(0), image_size=32))
  assert jax.tree.structure(ours) == jax.tree.structure(params)
  jax.tree.map(lambda a, b: np.testing.assert_equal(np.shape(a), np.shape(b)), ours, params)


def test_itm_and_contrastive_features_match_hf_retrieval(converted):
  retrieval, _, params, images, ids = converted
  model = blip.build_blip(CONFIG)
  pixel_values = torch.tensor(images).permute(0, 3, 1, 2)
  with torch.no_grad():
    itm = retrieval(input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != 0),
                    pixel_values=pixel_values, use_itm_head=True).itm_score
    cosine = retrieval(input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != 0),
                       pixel_values=pixel_values, use_itm_head=False).itm_score
  variables = {"params": params}
  image_embeds = model.apply(variables, jnp.asarray(images), method=blip.Blip.encode_image)
  mask = jnp.asarray(ids != 0)
  np.testing.assert_allclose(model.apply(variables, jnp.asarray(ids), mask, image_embeds,
                                         method=blip.Blip.itm_logits), itm.numpy(), atol=1e-4)
  image_features = model.apply(variables, image_embeds, method=blip.Blip.image_features)
  text_features = model.apply(variables, model.apply(
      variables, jnp.asarray(ids), mask, method=blip.Blip.encode_text),
      method=blip.Blip.text_features)
  np.testing.assert_allclose(image_features @ text_features.T, cosine.numpy(), atol=1e-5)


def test_lm_logits_and_loss_match_hf_captioning(converted):
  _, captioning, params, images, ids = converted
  model = blip.build_blip(CONFIG)
  ids = ids.copy()
  ids[:, 0] = 6  # [DEC] / bos
  labels = np.where(ids == 0, -100, ids)
  with torch.no_grad():
    out = captioning(pixel_values=torch.tensor(images).permute(0, 3, 1, 2),
                     input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != 0),
                     labels=torch.tensor(labels))
  # Our causal decoder uses the captioning model's self-attention and the retrieval model's
  # shared parts; evaluate HF's decoder with the captioning model's weights everywhere.
  captioning_only = blip_hf.blip_params_from_hf(
      CONFIG, captioning_state={k: v.numpy() for k, v in captioning.state_dict().items()})
  captioning_only = {**params, **{k: captioning_only[k] for k in ("vision", "text", "lm_head")}}
  variables = {"params": captioning_only}
  image_embeds = model.apply(variables, jnp.asarray(images), method=blip.Blip.encode_image)
  logits = model.apply(variables, jnp.asarray(ids), jnp.asarray(ids != 0), image_embeds,
                       method=blip.Blip.lm_logits)
  real = ids != 0
  np.testing.assert_allclose(np.asarray(logits)[real], out.logits.numpy()[real], atol=2e-4)
  # HF's default text config has label_smoothing 0.0 (BLIP's own uses 0.1).
  smoothing = captioning.config.text_config.label_smoothing
  loss, _ = language.causal_lm_loss(logits, jnp.asarray(ids), jnp.asarray(real), smoothing)
  np.testing.assert_allclose(float(loss), out.loss.item(), rtol=1e-5)


_VIT_L16 = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
               intermediate_size=4096)


@pytest.mark.parametrize("variant,hf_vision", [("base", {}), ("large", _VIT_L16)])
def test_config_has_hf_blip_parameter_count(variant, hf_vision):
  """ViT-B/16 (base) or ViT-L/16 (large) + BERT-base MED: every HF retrieval parameter, plus
  the decoder's causal self-attention and LM head from the captioning model, plus the
  temperature."""
  from vlp_jax.models import blip_family
  hf_config = HFBlipConfig(vision_config=dict(image_size=224, **hf_vision))
  assert hf_config.text_config.encoder_hidden_size == hf_config.vision_config.hidden_size
  with torch.device("meta"):
    retrieval = BlipForImageTextRetrieval(hf_config)
    captioning = BlipForConditionalGeneration(hf_config)
  count = lambda named: sum(t.numel() for _, t in named)
  decoder_only = count((n, t) for n, t in captioning.named_parameters()
                       if ".attention." in n or n.startswith("text_decoder.cls.")
                       and "decoder.weight" not in n and not n.endswith("decoder.bias"))
  expected = count(retrieval.named_parameters()) + decoder_only + 1
  config = blip_family.blip_config_from(blip_family.default_config(variant))
  model = blip.build_blip(config)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(blip.init_params(model, jax.random.key(0))))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == expected
