"""The `blip` model family for the trainer: config defaults per variant, `build`, evaluators.

Variants: `tiny` (a few-layer model on the synthetic `shapes` set at 64 px, CPU-friendly),
`base` (ViT-B/16 + BERT-base at 224 px, queue 57,600, as in the paper) and `large` (the same
with ViT-L/16: 24 layers, width 1,024, 16 heads, MLP 4,096). The `model` section
holds every `BlipConfig` field. When `data.tokenizer` is set, the vocabulary size and the
special token ids ([PAD], [CLS], [SEP], [ENC], [DEC]) are read from the tokenizer, so the
model always matches it; otherwise the `model` values are used as given.

`extra_state` = {"momentum", "queue", "step"} (see `vlp_jax.models.blip`). The queue must be
a multiple of the batch the loss sees: `global_batch_size / optimizer.accumulation_steps`.
Evaluators:
- `retrieval`: recall@1/5/10 both ways over the eval split (one caption per image), ranked by
  ITC similarity, and re-ranked by ITM + ITC over each query's top `eval_rerank_k` candidates
  when that is > 0 (BLIP's protocol; its COCO setting 256 for base, 32 of the 1,000 shapes
  test pairs for tiny: ITC alone ranks the right caption first for about half of them).
- `itm`: ITM accuracy on every eval image with its caption (match) and with the next image's
  caption (no match), and the accuracy of each kind.
- `caption` (only with `data.tokenizer`): BLEU-1..4 and CIDEr-D of captions decoded with
  BLIP's settings (prompt "a picture of ", beam 3, 5 to 20 tokens; the prompt is stripped)
  against the batch's reference text(s): `text_ids` [B, L], or [B, K, L] with `text_valid`;
  and `object_recall` (`vlp_jax.data.builders.object_recall`) when the batches carry the
  objects (`pad_objects`: labels, colours, box_valid), as the tiny variant's shapes eval does.
  Tiny captions greedily without a prompt (it pretrains without one), up to 32 tokens.
"""
import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlp_jax.evaluators import model_eval
from vlp_jax.evaluators import retrieval_metrics as retrieval_lib
from vlp_jax.models import blip
from vlp_jax.models.registry import Evaluator, ModelFamily, TrainableModel

# Tiny: shapes' 64 px images resized to 63 and cut into 21 px patches, one per cell of the
# scene's 3x3 grid, so each object is one image token; positions start as a 2-D sine grid
# (3x its amplitude) and 3 layers; width 128. Measured on the test split after 1,600 steps of
# 32 with 2 layers and the 1x start (retrieval R@1 img2txt / txt2img, ITM accuracy, caption
# object recall): this 0.62 / 0.63, 0.99, 0.32; width 64 0.52 / 0.53, 0.98, 0.19; 8 px
# patches (64 tokens) and learned positions from 0.02 noise at width 64: 0.32 / 0.32, 0.94,
# 0.17, its captions naming the right colours but neither shapes nor places. Three layers,
# more steps and the rest: configs/blip_tiny_experiments.md. Text: 32 tokens with a BPE-300
# tokenizer whose pieces span words ("▁in▁the▁bottom", `--multiword_pieces`): 27 tokens
# median, 37 p95 with [CLS] / [SEP]; the objects come first, so a truncated tail loses a
# relation. A word-level one needs 48 (44 median, 58 p95) and makes the step 1.44x slower.
_TINY = dict(
    image_size=63, patch_size=21, vision_position_init="sincos2d", vision_position_init_scale=3.0,
    vision_width=128, vision_layers=3, vision_heads=4, vision_mlp_dim=256,
    vision_layer_norm_epsilon=1e-6,
    vocab_size=1000, text_width=128, text_layers=3, text_heads=4, text_mlp_dim=256,
    max_text_length=32, embed_dim=32, queue_size=1024, alpha_ramp_steps=400)
_BASE = dict(image_size=224, text_dropout_rate=0.1, vocab_size=30524, queue_size=57600)
_LARGE = dict(_BASE, vision_width=1024, vision_layers=24, vision_heads=16, vision_mlp_dim=4096)
_VARIANTS = {"tiny": _TINY, "base": _BASE, "large": _LARGE}
_EVAL_FIELDS = dict(eval_rerank_k=256, eval_itm_batch_size=64, eval_caption_prompt="a picture of ",
                    eval_caption_max_length=20, eval_caption_min_length=5,
                    eval_caption_num_beams=3)
# Tiny pretrains without the prompt, so it captions without one, long enough for 4 objects.
_TINY_EVAL_FIELDS = dict(_EVAL_FIELDS, eval_rerank_k=32, eval_itm_batch_size=256,
                         eval_caption_prompt="", eval_caption_max_length=32,
                         eval_caption_num_beams=1)


def default_config(variant: str) -> ml_collections.ConfigDict:
  """`model` (BlipConfig fields + eval settings) and `data` sections for `variant`."""
  if variant not in _VARIANTS:
    raise ValueError(f"unknown blip variant {variant!r}; known: {sorted(_VARIANTS)}")
  fields = dataclasses.asdict(dataclasses.replace(blip.BlipConfig(), **_VARIANTS[variant]))
  tiny = variant == "tiny"
  model = ml_collections.ConfigDict(dict(family="blip", variant=variant, **fields,
                                         **(_TINY_EVAL_FIELDS if tiny else _EVAL_FIELDS)))
  size = fields["image_size"]
  # shapes: no crop (a caption names every object, a crop could cut one out); its eval
  # batches carry the objects for the captions' object recall.
  augment = "resize" if tiny else "random_resized_crop"
  data = ml_collections.ConfigDict(dict(
      name="shapes/64px" if tiny else "coco_captions",
      data_dir=ml_collections.config_dict.placeholder(str), tokenizer="",
      tokenizer_lower_case=True,
      max_text_length=fields["max_text_length"] if tiny else 35,
      preprocess=f"decode|{augment}({size})|flip_lr|normalize('clip')|pick_caption|tokenize",
      preprocess_eval=(f"decode|resize({size})|normalize('clip')|pick_caption|tokenize"
                       + ("|pad_objects(4)" if tiny else "")),
      shuffle_buffer=10_000, cache=False, require_captions=True,
      train_split="train", eval_split="validation"))
  return ml_collections.ConfigDict(dict(model=model, data=data))


def blip_config_from(config: ml_collections.ConfigDict) -> blip.BlipConfig:
  """BlipConfig from `config.model`, with vocabulary and special ids from `data.tokenizer`."""
  names = {field.name for field in dataclasses.fields(blip.BlipConfig)}
  fields = {name: config.model[name] for name in names if name in config.model}
  tokenizer = model_eval.load_tokenizer(config)
  if tokenizer is not None:
    fields.update(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                  cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, enc_id=tokenizer.enc_id,
                  dec_id=tokenizer.dec_id)
  return blip.BlipConfig(**fields)


def _pair_scorer(model: blip.Blip, params: Any, data: dict[str, np.ndarray],
                 itm_batch_size: int) -> Any:
  """score_pairs(image_index [n], text_index [n]) -> ITM logits [n, 2] (1 = match) for
  n <= itm_batch_size pairs of `data` (image_embeds, text_ids, text_mask)."""
  enc_id = model.config.enc_id

  @jax.jit
  def itm_logits(params: Any, token_ids: jax.Array, mask: jax.Array,
                 image_embeds: jax.Array) -> jax.Array:
    return model.apply({"params": params}, blip.with_token(token_ids, enc_id), mask,
                       image_embeds, method=blip.Blip.itm_logits)

  def score_pairs(image_index: np.ndarray, text_index: np.ndarray) -> np.ndarray:
    count = len(image_index)
    padded = lambda index: np.pad(index, (0, itm_batch_size - count))
    image_index, text_index = padded(image_index), padded(text_index)
    logits = itm_logits(params, data["text_ids"][text_index],
                        data["text_mask"][text_index].astype(bool),
                        data["image_embeds"][image_index])
    return np.asarray(logits)[:count]
  return score_pairs


def _retrieval_evaluator(model: blip.Blip, rerank_k: int, itm_batch_size: int) -> Evaluator:
  """ITC (and optionally ITM re-ranked) recall@k over the eval split."""
  config = model.config

  @jax.jit
  def embed(params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    variables = {"params": params}
    image_embeds = model.apply(variables, batch["image"], method=blip.Blip.encode_image)
    token_ids = batch["text_ids"].astype(jnp.int32)
    mask = batch["text_mask"].astype(bool)
    text_hidden = model.apply(variables, blip.with_token(token_ids, config.cls_id), mask,
                              method=blip.Blip.encode_text)
    return {"image_embeds": image_embeds,
            "image_features": model.apply(variables, image_embeds,
                                          method=blip.Blip.image_features),
            "text_features": model.apply(variables, text_hidden, method=blip.Blip.text_features)}

  def run(params: Any, extra_state: Any, batches: Iterable[dict[str, jax.Array]]
          ) -> dict[str, float]:
    del extra_state
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
      real = np.asarray(batch["mask"], bool)
      outputs = jax.device_get(embed(params, batch))
      outputs.update(text_ids=np.asarray(batch["text_ids"]),
                     text_mask=np.asarray(batch["text_mask"]))
      for name, value in outputs.items():
        if name != "image_embeds" or rerank_k > 0:
          parts.setdefault(name, []).append(np.asarray(value)[real])
    data = {name: np.concatenate(values) for name, values in parts.items()}
    itc = data["image_features"] @ data["text_features"].T
    text_to_image = np.arange(itc.shape[0])
    if rerank_k <= 0:
      return model_eval.without_prefix(retrieval_lib.retrieval_metrics(itc, text_to_image))
    score_pairs = _pair_scorer(model, params, data, itm_batch_size)
    img2txt, txt2img = retrieval_lib.rerank_with_itm(
        itc, lambda images, texts: score_pairs(images, texts)[:, 1], k=rerank_k,
        batch_size=itm_batch_size)  # BLIP: ITM match logit + ITC similarity
    return model_eval.without_prefix(
        retrieval_lib.retrieval_metrics(img2txt, text_to_image, txt2img))

  return Evaluator(run=run)


def _itm_evaluator(model: blip.Blip, itm_batch_size: int) -> Evaluator:
  """ITM accuracy over the eval split: every image with its own caption (match) and with the
  next image's caption (no match; skipped where the two token sequences are equal)."""

  @jax.jit
  def encode_image(params: Any, images: jax.Array) -> jax.Array:
    return model.apply({"params": params}, images, method=blip.Blip.encode_image)

  def run(params: Any, extra_state: Any, batches: Iterable[dict[str, jax.Array]]
          ) -> dict[str, float]:
    del extra_state
    parts: dict[str, list[np.ndarray]] = {"image_embeds": [], "text_ids": [], "text_mask": []}
    for batch in batches:
      real = np.asarray(batch["mask"], bool)
      parts["image_embeds"].append(np.asarray(jax.device_get(
          encode_image(params, batch["image"])))[real])
      parts["text_ids"].append(np.asarray(batch["text_ids"])[real])
      parts["text_mask"].append(np.asarray(batch["text_mask"])[real])
    data = {name: np.concatenate(values) for name, values in parts.items()}
    count = len(data["text_ids"])
    images = np.arange(count)
    shifted = np.roll(images, -1)
    distinct = np.any(data["text_ids"][shifted] != data["text_ids"], axis=1)
    image_index = np.concatenate([images, images[distinct]])
    text_index = np.concatenate([images, shifted[distinct]])
    labels = np.concatenate([np.ones(count, bool), np.zeros(int(distinct.sum()), bool)])
    score_pairs = _pair_scorer(model, params, data, itm_batch_size)
    logits = np.concatenate([score_pairs(image_index[start:start + itm_batch_size],
                                         text_index[start:start + itm_batch_size])
                             for start in range(0, len(labels), itm_batch_size)])
    correct = (logits[:, 1] > logits[:, 0]) == labels
    return {"accuracy": float(correct.mean()), "match_accuracy": float(correct[labels].mean()),
            "mismatch_accuracy": float(correct[~labels].mean())}

  return Evaluator(run=run)


def _captioning_evaluator(model: blip.Blip, tokenizer: Any,
                          model_config: ml_collections.ConfigDict) -> Evaluator:
  """`model_eval.captioning_evaluator` of BLIP's decoding with the eval settings (prompt,
  beams, lengths); the prompt is stripped from the captions."""
  prompt = model_config.get("eval_caption_prompt", "")
  prompt_ids = np.asarray(tokenizer.encode(prompt), np.int32) if prompt else None
  num_beams = model_config.get("eval_caption_num_beams", 3)

  @jax.jit
  def generate(params: Any, images: jax.Array) -> jax.Array:
    return blip.caption(
        model, params, images, max_length=model_config.get("eval_caption_max_length", 20),
        min_length=model_config.get("eval_caption_min_length", 5),
        method="beam" if num_beams > 1 else "greedy", num_beams=num_beams,
        prompt_ids=None if prompt_ids is None else jnp.asarray(prompt_ids)).sequences

  skip = 1 + (0 if prompt_ids is None else len(prompt_ids))  # [DEC] and the prompt
  return model_eval.captioning_evaluator(generate, tokenizer, skip)


def build(config: ml_collections.ConfigDict) -> TrainableModel:
  """The BLIP `TrainableModel` for a full run config."""
  blip_config = blip_config_from(config)
  model = blip.build_blip(blip_config, dtype=jnp.dtype(config.dtype),
                          remat_policy=config.remat_policy, scan_layers=config.scan_layers)

  def init(rng: jax.Array) -> tuple[Any, Any]:
    params_rng, queue_rng = jax.random.split(rng)
    params = blip.init_params(model, params_rng)
    return params, blip.init_extra_state(params, queue_rng, blip_config)

  itm_batch_size = config.model.get("eval_itm_batch_size", 64)
  evaluators = {"retrieval": _retrieval_evaluator(model, config.model.get("eval_rerank_k", 0),
                                                  itm_batch_size),
                "itm": _itm_evaluator(model, itm_batch_size)}
  tokenizer = model_eval.load_tokenizer(config)
  if tokenizer is not None:
    evaluators["caption"] = _captioning_evaluator(model, tokenizer, config.model)
  return TrainableModel(init=init, loss_fn=blip.loss_fn_for(model), evaluators=evaluators)


FAMILY = ModelFamily(name="blip", default_config=default_config, build=build)
