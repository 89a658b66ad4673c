"""E2E-VLP (Xu et al. 2021): pixels -> ResNet grid -> cross-modal encoder -> shared decoder.

- Grid encoder (`vlp_jax.encoders.resnet`): ResNet C5 -> 1x1 conv to D -> HW image tokens and
  fixed 2-D sine positions.
- Cross-modal encoder (post-LN): `[CLS] w1..wm [SEP] o1..oHW`, text embedded as token +
  segment (0) + position with LayerNorm, image tokens with segment 1 and LayerNorm; the sine
  positions are added to the image tokens' queries and keys at every layer (DETR style; text
  positions get zeros there). Heads: MLM (BERT head tied to the word embeddings), ITM on [CLS].
- One decoder stack (post-LN, cross-attention to the encoder memory, the memory's keys get
  the same positions) shared by two tasks that differ in inputs and heads:
  - detection: N learned object queries, each both the decoder's input and its `query_pos`
    (added to queries and keys at every layer as DETR; DETR's inputs are zeros, which leaves
    the queries nearly identical until cross-attention localises: learned inputs made boxes
    converge faster on shapes), every layer's output through the shared final
    LayerNorm and the class (C + 1, index C = no object), box (3-layer MLP, sigmoid cxcywh)
    and attribute heads -> auxiliary outputs of every layer;
  - captioning: causal LM over its own caption embeddings ([DEC] as BOS), LM head tied to them;
    KV-cache decoding through `vlp_jax.decoding`.
Detection and captioning read the memory of an image-only encoder pass (`[CLS] [SEP] o1..oHW`),
as at inference; MLM reads a joint pass over (masked caption, image), ITM one over (caption or a
mismatched one, image), unmasked as at inference.

Params: grid_encoder/{resnet, projection}, image_type_embedding [D], image_layer_norm,
text_embeddings/{word,position,token_type}_embeddings, encoder/layers_i, mlm_head, itm_head,
object_queries [N, D], decoder/layers_i, decoder_norm, class_head, box_head/{fc1,fc2,fc3},
attribute_head, caption_embeddings, lm_head.

`e2e_vlp_loss` (trainer protocol): MLM + ITM + DETR set loss with aux + attribute CE + caption LM.
`detect(model, params, images)` -> per image (boxes xyxy pixels, labels, scores).
"""
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax import decoding
from vlp_jax.encoders.resnet import ResNetGridEncoder, ResNetSpec, resnet_spec
from vlp_jax.layers import TextEmbeddings, TransformerStack, create_decode_cache, layer_norm
from vlp_jax.layers.common import Array, Dtype
from vlp_jax.models.blip import LMPredictionHead, with_token
from vlp_jax.objectives import detection, language
from vlp_jax.ops.boxes import box_cxcywh_to_xyxy

PyTree = Any


@dataclasses.dataclass(frozen=True)
class E2EVLPConfig:
  """Architecture, special tokens and objective weights (defaults: the paper's base model)."""
  image_size: int = 448
  resnet_depth: int = 50               # 50/101/152, or 0 for a basic-block ResNet below
  resnet_stage_blocks: tuple[int, ...] = (1, 1, 1)
  resnet_stage_widths: tuple[int, ...] = (32, 64, 128)
  resnet_stage_strides: tuple[int, ...] = (1, 2, 2)
  resnet_stem_width: int = 32
  resnet_padding: str = "symmetric"    # or "centred" (see encoders.resnet.centred_padding)
  resnet_norm: str = "frozen_batch"
  width: int = 256
  heads: int = 8
  mlp_dim: int = 2048
  encoder_layers: int = 6
  decoder_layers: int = 6
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-5
  vocab_size: int = 30522
  max_text_length: int = 64
  num_queries: int = 100
  num_classes: int = 5
  num_attributes: int = 6
  pad_id: int = 0
  cls_id: int = 2
  sep_id: int = 3
  mask_id: int = 4
  dec_id: int = 6
  mlm_weight: float = 1.0
  itm_weight: float = 1.0
  detection_weight: float = 1.0
  attribute_weight: float = 1.0
  caption_weight: float = 1.0
  ce_weight: float = 1.0
  bbox_weight: float = 5.0
  giou_weight: float = 2.0
  eos_coef: float = 0.1
  mask_prob: float = 0.15
  mlm_stride: int = 1                  # MLM reads examples 0, k, 2k, ... of the batch
  label_smoothing: float = 0.1

  def __post_init__(self) -> None:
    if self.mlm_stride < 1:
      raise ValueError(f"model.mlm_stride={self.mlm_stride} must be >= 1")

  def resnet(self) -> ResNetSpec:
    """The grid encoder's stage layout."""
    return resnet_spec(self.resnet_depth, stage_blocks=self.resnet_stage_blocks,
                       stage_widths=self.resnet_stage_widths,
                       stage_strides=self.resnet_stage_strides, stem_width=self.resnet_stem_width,
                       padding=self.resnet_padding)


def _dense(features: int, axes: tuple[str | None, str | None], name: str, dtype: Dtype,
           param_dtype: Dtype, kernel_init: nn.initializers.Initializer = (
               nn.initializers.xavier_uniform())) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


class BoxHead(nn.Module):
  """DETR box MLP: Dense-ReLU-Dense-ReLU-Dense(4) -> sigmoid. [..., D] -> [..., 4] cxcywh.

  The last layer starts at zero (as Deformable DETR), so every box starts at the image
  centre with half its size and the matching cost starts from the class term."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    x = nn.relu(_dense(width, ("embed", "mlp"), "fc1", self.dtype, self.param_dtype)(x))
    x = nn.relu(_dense(width, ("mlp", "embed"), "fc2", self.dtype, self.param_dtype)(x))
    x = _dense(4, ("embed", None), "fc3", self.dtype, self.param_dtype,
               nn.initializers.zeros)(x)
    return jax.nn.sigmoid(x.astype(jnp.float32))


class E2EVLP(nn.Module):
  """The E2E-VLP model; methods are the forward passes (see the module docstring)."""
  config: E2EVLPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_policy: str = "none"
  scan_layers: bool = False

  def setup(self) -> None:
    c = self.config
    dense = functools.partial(_dense, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(layer_norm, c.layer_norm_epsilon, self.dtype, self.param_dtype)
    stack = functools.partial(
        TransformerStack, num_heads=c.heads, mlp_dim=c.mlp_dim, norm_position="post",
        activation="relu", dropout_rate=c.dropout_rate, layer_norm_epsilon=c.layer_norm_epsilon,
        dtype=self.dtype, param_dtype=self.param_dtype, remat_policy=self.remat_policy,
        scan_layers=self.scan_layers)
    self.grid_encoder = ResNetGridEncoder(c.resnet(), c.width, c.resnet_norm, self.dtype,
                                          self.param_dtype)
    self.image_type_embedding = self.param(
        "image_type_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                             ("embed",)), (c.width,))
    self.image_layer_norm = norm()
    self.text_embeddings = TextEmbeddings(
        vocab_size=c.vocab_size, hidden_size=c.width, max_length=c.max_text_length,
        type_vocab_size=2, layer_norm_epsilon=c.layer_norm_epsilon, dropout_rate=c.dropout_rate,
        dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = stack(num_layers=c.encoder_layers)
    self.mlm_head = LMPredictionHead(c.vocab_size, c.layer_norm_epsilon, self.dtype,
                                     self.param_dtype)
    self.itm_head = dense(2, ("embed", None), "itm_head")
    self.object_queries = self.param(
        "object_queries", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                       (None, "embed")), (c.num_queries, c.width))
    self.decoder = stack(num_layers=c.decoder_layers, cross_attention=True,
                         return_all_layers=True)
    self.decoder_norm = norm()
    self.class_head = dense(c.num_classes + 1, ("embed", None), "class_head")
    self.box_head = BoxHead(self.dtype, self.param_dtype)
    self.attribute_head = dense(c.num_attributes, ("embed", None), "attribute_head")
    self.caption_embeddings = TextEmbeddings(
        vocab_size=c.vocab_size, hidden_size=c.width, max_length=c.max_text_length,
        layer_norm_epsilon=c.layer_norm_epsilon, dropout_rate=c.dropout_rate, dtype=self.dtype,
        param_dtype=self.param_dtype)
    self.lm_head = LMPredictionHead(c.vocab_size, c.layer_norm_epsilon, self.dtype,
                                    self.param_dtype)

  def encode_image(self, images: Array) -> tuple[Array, Array]:
    """images [B, H, W, 3] -> (image tokens [B, S, D] with segment + LayerNorm, pos [S, D])."""
    tokens, pos = self.grid_encoder(images)
    return self.image_layer_norm(tokens + self.image_type_embedding.astype(tokens.dtype)), pos

  def encode(self, token_ids: Array, text_mask: Array, image_tokens: Array, image_pos: Array,
             *, deterministic: bool = True) -> Array:
    """Cross-modal encoder over [text; image]: token_ids/text_mask [B, T], image_tokens
    [B, S, D], image_pos [S, D] -> hidden [B, T + S, D]."""
    length = token_ids.shape[1]
    text = self.text_embeddings(token_ids, token_type_ids=jnp.zeros_like(token_ids),
                                deterministic=deterministic)
    x = jnp.concatenate([text, image_tokens.astype(text.dtype)], axis=1)
    mask = jnp.concatenate([text_mask.astype(bool),
                            jnp.ones(image_tokens.shape[:2], bool)], axis=1)
    return self.encoder(x, padding_mask=mask, query_pos=self.memory_pos(length, image_pos),
                        deterministic=deterministic)

  def memory_pos(self, text_length: int, image_pos: Array) -> Array:
    """[1, T + S, D] positions: zeros for text, the sine encoding for image tokens."""
    zeros = jnp.zeros((text_length, image_pos.shape[-1]), image_pos.dtype)
    return jnp.concatenate([zeros, image_pos], axis=0)[None].astype(self.dtype)

  def image_memory(self, image_tokens: Array, image_pos: Array, *,
                   deterministic: bool = True) -> Array:
    """Image-only encoder pass ([CLS] [SEP] o1..oHW): [B, S, D] -> memory [B, 2 + S, D]."""
    c = self.config
    ids = jnp.broadcast_to(jnp.asarray([c.cls_id, c.sep_id], jnp.int32),
                           (image_tokens.shape[0], 2))
    return self.encode(ids, jnp.ones_like(ids, bool), image_tokens, image_pos,
                       deterministic=deterministic)

  def mlm_logits(self, hidden: Array) -> Array:
    """Encoder hidden [B, T', D] -> vocabulary logits [B, T', V] float32."""
    return self.mlm_head(hidden, self.text_embeddings.attend).astype(jnp.float32)

  def itm_logits(self, hidden: Array) -> Array:
    """[CLS] of the encoder hidden [B, T', D] -> [B, 2] float32 (1 = match)."""
    return self.itm_head(hidden[:, 0]).astype(jnp.float32)

  def detect_objects(self, memory: Array, image_pos: Array, *,
                     deterministic: bool = True) -> dict[str, Array]:
    """Object queries over memory [B, 2 + S, D] -> every layer's {logits [L, B, N, C+1],
    boxes [L, B, N, 4] cxcywh in [0, 1], attributes [L, B, N, A]} (float32)."""
    c = self.config
    batch = memory.shape[0]
    queries = jnp.broadcast_to(self.object_queries.astype(self.dtype),
                               (batch, c.num_queries, c.width))
    _, layers = self.decoder(queries, memory, query_pos=self.object_queries[None].astype(
        self.dtype), memory_pos=self.memory_pos(2, image_pos), deterministic=deterministic)
    hidden = self.decoder_norm(layers)
    return {"logits": self.class_head(hidden).astype(jnp.float32),
            "boxes": self.box_head(hidden),
            "attributes": self.attribute_head(hidden).astype(jnp.float32)}

  def caption_logits(self, token_ids: Array, memory: Array, image_pos: Array | None, *,
                     position_ids: Array | None = None, deterministic: bool = True,
                     decode: bool = False) -> Array:
    """Causal decoder over caption tokens [B, T] ([DEC] first) and memory [B, M, D] -> [B, T, V].

    In decode steps the memory's keys/values come from the cache: pass a [B, 0, D] memory
    and image_pos None.
    """
    x = self.caption_embeddings(token_ids, position_ids=position_ids, deterministic=deterministic)
    memory_pos = None if image_pos is None else self.memory_pos(2, image_pos)
    hidden, _ = self.decoder(x, memory, memory_pos=memory_pos, causal=True,
                             deterministic=deterministic, decode=decode)
    return self.lm_head(self.decoder_norm(hidden),
                        self.caption_embeddings.attend).astype(jnp.float32)

  def __call__(self, images: Array, token_ids: Array, text_mask: Array, *,
               deterministic: bool = True) -> dict[str, Array]:
    """Every forward once (used by `init`): MLM logits [B, T, V], ITM [B, 2], detections
    (see `detect_objects`), caption logits [B, T, V] (token_ids used as the caption)."""
    image_tokens, image_pos = self.encode_image(images)
    hidden = self.encode(token_ids, text_mask, image_tokens, image_pos,
                         deterministic=deterministic)
    memory = self.image_memory(image_tokens, image_pos, deterministic=deterministic)
    return {"mlm_logits": self.mlm_logits(hidden[:, :token_ids.shape[1]]),
            "itm_logits": self.itm_logits(hidden),
            **self.detect_objects(memory, image_pos, deterministic=deterministic),
            "caption_logits": self.caption_logits(token_ids, memory, image_pos,
                                                  deterministic=deterministic)}


def build_e2e_vlp(config: E2EVLPConfig, *, dtype: Dtype = jnp.float32,
                  remat_policy: str = "none", scan_layers: bool = False) -> E2EVLP:
  """The `E2EVLP` module: params float32, matmuls in `dtype`."""
  return E2EVLP(config, dtype=dtype, remat_policy=remat_policy, scan_layers=scan_layers)


def init_params(model: E2EVLP, rng: jax.Array, *, text_length: int = 8) -> PyTree:
  """Boxed params from dummy inputs [1, S, S, 3] and [1, text_length]."""
  size = model.config.image_size
  ids = jnp.zeros((1, text_length), jnp.int32)
  return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), ids,
                    jnp.ones((1, text_length), bool))["params"]


def attribute_loss(attribute_logits: Array, match: Array, attributes: Array,
                   valid: Array) -> Array:
  """Mean CE of matched queries' attribute logits [B, N, A] against attributes [B, T] (targets
  with valid [B, T] and attribute >= 0; match [B, T] query index). 0 when none counts."""
  matched = jnp.take_along_axis(attribute_logits, jnp.maximum(match, 0)[..., None], axis=1)
  counted = valid & (attributes >= 0) & (match >= 0)
  nll = language.smoothed_cross_entropy(matched, jnp.maximum(attributes, 0))
  return jnp.sum(jnp.where(counted, nll, 0.0)) / jnp.maximum(jnp.sum(counted), 1)


def e2e_vlp_loss(model: E2EVLP, params: PyTree, extra_state: PyTree, batch: dict[str, Array],
                 rng: jax.Array, *, deterministic: bool = False
                 ) -> tuple[Array, dict[str, Array], PyTree]:
  """E2E-VLP pretraining objective.

  batch: image [B, H, W, 3]; text_ids, text_mask [B, T] ([CLS] w.. [SEP] pad); boxes
  [B, M, 4] normalised cxcywh, labels [B, M], box_valid [B, M]; optional colours [B, M]
  (attribute ids, -1 unknown; `pad_objects` emits them for sources with colours, as shapes).
  ITM reads the unmasked texts: half the pairs (a Bernoulli draw per example) get the caption of
  the next example in the batch (rolled) as negatives. MLM reads a second joint pass over real
  pairs with their captions masked (every `mlm_stride`-th example), so masking never hides what
  tells a negative apart.
  Returns (loss, metrics with every term, extra_state unchanged).
  """
  c = model.config
  mask_rng, itm_rng, dropout_rng = jax.random.split(rng, 3)
  token_ids = batch["text_ids"].astype(jnp.int32)
  text_mask = batch["text_mask"].astype(bool)
  run = functools.partial(model.apply, {"params": params}, rngs={"dropout": dropout_rng})
  image_tokens, image_pos = run(batch["image"], method=E2EVLP.encode_image)

  every = slice(None, None, c.mlm_stride)
  masked = language.mask_tokens(mask_rng, token_ids[every], vocab_size=c.vocab_size,
                                mask_id=c.mask_id, special_ids=(c.cls_id, c.sep_id),
                                pad_id=c.pad_id, mask_prob=c.mask_prob)
  hidden = run(masked.inputs, text_mask[every], image_tokens[every], image_pos,
               method=E2EVLP.encode, deterministic=deterministic)
  mlm_logits = run(hidden[:, :token_ids.shape[1]], method=E2EVLP.mlm_logits)
  mlm, mlm_metrics = language.masked_lm_loss(mlm_logits, masked.labels, masked.weights)

  matched = jax.random.bernoulli(itm_rng, 0.5, token_ids.shape[:1])
  pair_ids = jnp.where(matched[:, None], token_ids, jnp.roll(token_ids, 1, axis=0))
  pair_mask = jnp.where(matched[:, None], text_mask, jnp.roll(text_mask, 1, axis=0))
  hidden = run(pair_ids, pair_mask, image_tokens, image_pos, method=E2EVLP.encode,
               deterministic=deterministic)
  itm_logits = run(hidden, method=E2EVLP.itm_logits)
  itm_labels = matched.astype(jnp.int32)
  itm = jnp.mean(language.smoothed_cross_entropy(itm_logits, itm_labels))
  itm_accuracy = jnp.mean((jnp.argmax(itm_logits, -1) == itm_labels).astype(jnp.float32))

  memory = run(image_tokens, image_pos, method=E2EVLP.image_memory, deterministic=deterministic)
  outputs = run(memory, image_pos, method=E2EVLP.detect_objects, deterministic=deterministic)
  labels, boxes = batch["labels"].astype(jnp.int32), batch["boxes"].astype(jnp.float32)
  valid = batch["box_valid"].astype(bool)
  detr = detection.detr_loss_with_aux(outputs["logits"], outputs["boxes"], labels, boxes, valid,
                                      eos_coef=c.eos_coef, class_cost=c.ce_weight,
                                      bbox_cost=c.bbox_weight, giou_cost=c.giou_weight)
  detection_loss = detection.weighted_detr_loss(detr, ce_weight=c.ce_weight,
                                                bbox_weight=c.bbox_weight,
                                                giou_weight=c.giou_weight)
  if "colours" in batch:
    match = detection.detr_match(outputs["logits"][-1], outputs["boxes"][-1], labels, boxes,
                                 valid, class_cost=c.ce_weight, bbox_cost=c.bbox_weight,
                                 giou_cost=c.giou_weight)
    attr = attribute_loss(outputs["attributes"][-1], match,
                          batch["colours"].astype(jnp.int32), valid)
  else:
    attr = jnp.zeros((), jnp.float32)

  dec_ids = with_token(token_ids, c.dec_id)
  caption_logits = run(dec_ids, memory, image_pos, method=E2EVLP.caption_logits,
                       deterministic=deterministic)
  lm, lm_metrics = language.causal_lm_loss(caption_logits, dec_ids, text_mask,
                                           c.label_smoothing)
  loss = (c.mlm_weight * mlm + c.itm_weight * itm + c.detection_weight * detection_loss
          + c.attribute_weight * attr + c.caption_weight * lm)
  metrics = {"loss": loss, **mlm_metrics, "itm_loss": itm, "itm_accuracy": itm_accuracy,
             "detection_loss": detection_loss, **detr, "attribute_loss": attr, **lm_metrics}
  return loss, metrics, extra_state


def loss_fn_for(model: E2EVLP) -> Callable[..., tuple[Array, dict[str, Array], PyTree]]:
  """`loss_fn(params, extra_state, batch, rng)` in the trainer's protocol."""
  return functools.partial(e2e_vlp_loss, model)


# ------------------------------------------------------------------------------ detection
def predict_objects(model: E2EVLP, params: PyTree, images: Array) -> dict[str, Array]:
  """Final-layer detections: images [B, H, W, 3] -> {boxes [B, N, 4] normalised xyxy,
  labels [B, N] int32, scores [B, N]} (best real class per query and its probability)."""
  image_tokens, image_pos = model.apply({"params": params}, images, method=E2EVLP.encode_image)
  memory = model.apply({"params": params}, image_tokens, image_pos, method=E2EVLP.image_memory)
  outputs = model.apply({"params": params}, memory, image_pos, method=E2EVLP.detect_objects)
  probs = jax.nn.softmax(outputs["logits"][-1], axis=-1)[..., :-1]
  return {"boxes": jnp.clip(box_cxcywh_to_xyxy(outputs["boxes"][-1]), 0.0, 1.0),
          "labels": jnp.argmax(probs, axis=-1).astype(jnp.int32),
          "scores": jnp.max(probs, axis=-1)}


@functools.lru_cache(maxsize=8)
def jitted_predict_objects(model: E2EVLP) -> Callable[[PyTree, Array], dict[str, Array]]:
  """`predict_objects` of `model` under `jax.jit`, compiled once per model (and input shape)."""
  return jax.jit(functools.partial(predict_objects, model))


def detect(model: E2EVLP, params: PyTree, images: Array, *, score_threshold: float = 0.0
           ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Per image (boxes [K, 4] xyxy in pixels, labels [K], scores [K]) with score above the
  threshold, sorted by score. images [B, H, W, 3] preprocessed as in training."""
  outputs = jax.device_get(jitted_predict_objects(model)(params, images))
  height, width = images.shape[1:3]
  scale = np.asarray([width, height, width, height], np.float32)
  results = []
  for boxes, labels, scores in zip(outputs["boxes"], outputs["labels"], outputs["scores"]):
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] > score_threshold]
    results.append((boxes[order] * scale, labels[order], scores[order]))
  return results


# ------------------------------------------------------------------------------ captioning
def _cache_to_loop_layout(cache: PyTree, scanned: bool) -> PyTree:
  """Scanned layers' caches [L, B, ...] -> batch-major [B, L, ...], index [L] -> scalar."""
  if not scanned:
    return cache
  return jax.tree.map(lambda x: x[0] if x.ndim == 1 else jnp.swapaxes(x, 0, 1), cache)


def _cache_from_loop_layout(cache: PyTree, scanned: bool, num_layers: int) -> PyTree:
  if not scanned:
    return cache
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_layers,)) if x.ndim == 0
                      else jnp.swapaxes(x, 0, 1), cache)


def caption(model: E2EVLP, params: PyTree, images: Array, *, max_length: int = 20,
            method: decoding.Method = "greedy", num_beams: int = 1,
            prompt_ids: Array | None = None, rng: jax.Array | None = None,
            **decode_kwargs: Any) -> decoding.DecodeOutput:
  """Captions images [B, H, W, 3]: [DEC] (+ prompt) then the decoder with a KV cache until
  [SEP]. Call inside `jax.jit` (static keywords)."""
  c = model.config
  variables = {"params": params}
  image_tokens, image_pos = model.apply(variables, images, method=E2EVLP.encode_image)
  memory = model.apply(variables, image_tokens, image_pos, method=E2EVLP.image_memory)
  batch = images.shape[0]
  cache = create_decode_cache(model, variables, jnp.zeros((batch, max_length), jnp.int32),
                              memory, image_pos, method=E2EVLP.caption_logits)
  cache = _cache_to_loop_layout(cache, model.scan_layers)

  def step(tokens: Array, loop_cache: PyTree, position: Array) -> tuple[Array, PyTree]:
    no_memory = jnp.zeros((tokens.shape[0], 0, c.width), model.dtype)
    flax_cache = _cache_from_loop_layout(loop_cache, model.scan_layers, c.decoder_layers)
    logits, state = model.apply({"params": params, "cache": flax_cache}, tokens, no_memory, None,
                                position_ids=jnp.broadcast_to(position, tokens.shape),
                                decode=True, method=E2EVLP.caption_logits, mutable=["cache"])
    return logits[:, -1], _cache_to_loop_layout(state["cache"], model.scan_layers)

  bos = jnp.full((batch,), c.dec_id, jnp.int32)
  return decoding.decode(step, cache, bos, max_length=max_length, eos_id=c.sep_id,
                         pad_id=c.pad_id, method=method, num_beams=num_beams,
                         prompt_ids=prompt_ids, rng=rng, **decode_kwargs)
