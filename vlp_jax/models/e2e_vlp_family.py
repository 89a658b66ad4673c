"""The `e2e_vlp` model family for the trainer: config defaults per variant, `build`, evaluators.

Variants:
- `tiny`: synthetic `shapes` resized to 72 px; a basic-block ResNet (stem /2, stages /2 /2 /3:
  stride 24, a 3x3 grid, one image token per cell of the shapes scene grid, as BLIP's tiny
  21 px patches; "centred" padding puts each token on its cell's centre, not its corner),
  width 128, 3 encoder + 3 decoder layers, 9 object queries (scenes hold
  <= 4 of 5 shape classes, one per cell), 48-token text and captions, no dropout, GroupNorm.
  CPU-friendly. The 8x8 grid this replaced (64 px, stride 8) reached detection AP50 0.09 in
  800 steps: shape classes stayed at chance for ~400 steps.
- `base`: the paper's model: ResNet-50 (frozen BatchNorm), width 256, 6 + 6 layers, 100 queries,
  448 px, dropout 0.1.
The `model` section holds every `E2EVLPConfig` field plus eval settings. With `data.tokenizer`
set, the vocabulary size and special ids ([PAD], [CLS], [SEP], [MASK], [DEC]) come from it.
`extra_state` is empty (no batch statistics: GroupNorm or frozen BN).

Batches need `pad_objects(N, 'cxcywh')` (boxes, labels, box_valid) and a tokenized caption
(text_ids, text_mask); `attributes` [B, N] (colour ids, -1 unknown) are used when present.
Evaluators (all on `data.eval_split`):
- `detection`: COCO AP / AP50 of the final decoder layer's queries (`detection/ap`, `.../ap50`);
- `itm`: accuracy of the ITM head over every real pair and its rolled mismatch (`itm/accuracy`);
- `caption` (with a tokenizer): BLEU / CIDEr-D of greedy KV-cache captions, and their
  `object_recall` (`vlp_jax.data.builders.object_recall`) when the batches carry the objects'
  colours (`pad_objects` on shapes).
"""
import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlp_jax.evaluators import model_eval
from vlp_jax.models import e2e_vlp
from vlp_jax.models.registry import Evaluator, ModelFamily, TrainableModel

_TINY = dict(
    image_size=72, resnet_depth=0, resnet_stage_blocks=(1, 1, 1),
    resnet_stage_widths=(64, 128, 128), resnet_stage_strides=(2, 2, 3), resnet_stem_width=32,
    resnet_padding="centred", resnet_norm="group", width=128, heads=4, mlp_dim=512,
    encoder_layers=3, decoder_layers=3, dropout_rate=0.0, vocab_size=1000, max_text_length=48,
    num_queries=9, num_classes=5, num_attributes=6)
_BASE = dict(image_size=448, resnet_depth=50, resnet_norm="frozen_batch", width=256, heads=8,
             mlp_dim=2048, encoder_layers=6, decoder_layers=6, dropout_rate=0.1,
             vocab_size=30522, max_text_length=64, num_queries=100, num_classes=1600,
             num_attributes=400)
_VARIANTS = {"tiny": _TINY, "base": _BASE}
_EVAL_FIELDS = dict(eval_caption_max_length=20, eval_caption_min_length=3,
                    eval_caption_num_beams=1)
# Tiny: text and captions long enough to name the objects of 4-object shapes scenes (BPE-300:
# first sentence median 34 tokens, p90 45).
_TINY_EVAL_FIELDS = dict(_EVAL_FIELDS, eval_caption_max_length=48)


def default_config(variant: str) -> ml_collections.ConfigDict:
  """`model` (E2EVLPConfig fields + eval settings) and `data` sections for `variant`."""
  if variant not in _VARIANTS:
    raise ValueError(f"unknown e2e_vlp variant {variant!r}; known: {sorted(_VARIANTS)}")
  fields = dataclasses.asdict(dataclasses.replace(e2e_vlp.E2EVLPConfig(), **_VARIANTS[variant]))
  eval_fields = _TINY_EVAL_FIELDS if variant == "tiny" else _EVAL_FIELDS
  model = ml_collections.ConfigDict(dict(family="e2e_vlp", variant=variant, **fields,
                                         **eval_fields))
  size = fields["image_size"]
  max_objects = 4 if variant == "tiny" else 100
  objects = f"pad_objects({max_objects}, 'cxcywh')"
  data = ml_collections.ConfigDict(dict(
      name="shapes/64px" if variant == "tiny" else "coco_captions",
      data_dir=None, tokenizer="", tokenizer_lower_case=True,
      max_text_length=fields["max_text_length"] if variant == "tiny" else 40,
      preprocess=(f"decode|resize({size})|flip_lr|normalize('imagenet')|{objects}|"
                  "pick_caption|tokenize"),
      preprocess_eval=(f"decode|resize({size})|normalize('imagenet')|{objects}|"
                       "pick_caption|tokenize"),
      shuffle_buffer=10_000, cache=False, require_captions=True,
      train_split="train", eval_split="validation"))
  return ml_collections.ConfigDict(dict(model=model, data=data))


def e2e_vlp_config_from(config: ml_collections.ConfigDict) -> e2e_vlp.E2EVLPConfig:
  """E2EVLPConfig from `config.model`, vocabulary and special ids from `data.tokenizer`."""
  names = {field.name for field in dataclasses.fields(e2e_vlp.E2EVLPConfig)}
  fields = {name: config.model[name] for name in names if name in config.model}
  fields = {name: tuple(value) if isinstance(value, list) else value
            for name, value in fields.items()}
  tokenizer = model_eval.load_tokenizer(config)
  if tokenizer is not None:
    fields.update(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                  cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, mask_id=tokenizer.mask_id,
                  dec_id=tokenizer.dec_id)
  return e2e_vlp.E2EVLPConfig(**fields)


def itm_evaluator(model: e2e_vlp.E2EVLP) -> Evaluator:
  """ITM accuracy over each real pair (label 1) and the pair with the next real caption (0)."""

  @jax.jit
  def match_logits(params: Any, images: jax.Array, token_ids: jax.Array,
                   text_mask: jax.Array) -> jax.Array:
    variables = {"params": params}
    tokens, pos = model.apply(variables, images, method=e2e_vlp.E2EVLP.encode_image)
    hidden = model.apply(variables, token_ids, text_mask, tokens, pos,
                         method=e2e_vlp.E2EVLP.encode)
    return model.apply(variables, hidden, method=e2e_vlp.E2EVLP.itm_logits)

  def run(params: Any, extra_state: Any, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
    del extra_state
    correct, total = 0, 0
    for batch in batches:
      real = np.flatnonzero(np.asarray(batch["mask"], bool))
      if len(real) < 2:
        continue
      ids, mask = np.asarray(batch["text_ids"]), np.asarray(batch["text_mask"]).astype(bool)
      rolled = np.arange(len(ids))
      rolled[real] = np.roll(real, 1)
      for text_rows, label in ((np.arange(len(ids)), 1), (rolled, 0)):
        logits = match_logits(params, batch["image"], ids[text_rows], mask[text_rows])
        predicted = np.argmax(np.asarray(jax.device_get(logits)), axis=-1)[real]
        correct += int(np.sum(predicted == label))
        total += len(real)
    return {"accuracy": correct / max(total, 1)}

  return Evaluator(run=run)


def build(config: ml_collections.ConfigDict) -> TrainableModel:
  """The E2E-VLP `TrainableModel` for a full run config."""
  model_config = e2e_vlp_config_from(config)
  model = e2e_vlp.build_e2e_vlp(model_config, dtype=jnp.dtype(config.dtype),
                                remat_policy=config.remat_policy,
                                scan_layers=config.scan_layers)

  def init(rng: jax.Array) -> tuple[Any, Any]:
    return e2e_vlp.init_params(model, rng), {}

  evaluators = {
      "detection": model_eval.detection_evaluator(e2e_vlp.jitted_predict_objects(model)),
      "itm": itm_evaluator(model)}
  tokenizer = model_eval.load_tokenizer(config)
  if tokenizer is not None:
    num_beams = config.model.get("eval_caption_num_beams", 1)

    @jax.jit
    def generate(params: Any, images: jax.Array) -> jax.Array:
      return e2e_vlp.caption(
          model, params, images, max_length=config.model.get("eval_caption_max_length", 20),
          min_length=config.model.get("eval_caption_min_length", 3),
          method="beam" if num_beams > 1 else "greedy", num_beams=num_beams).sequences

    evaluators["caption"] = model_eval.captioning_evaluator(generate, tokenizer)
  return TrainableModel(init=init, loss_fn=e2e_vlp.loss_fn_for(model), evaluators=evaluators)


FAMILY = ModelFamily(name="e2e_vlp", default_config=default_config, build=build)
