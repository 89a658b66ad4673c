"""BLIP: a ViT and a multimodal mixture of encoder-decoder (MED) text transformer (Li et al. 2022).

One BERT-style (post-LN) text transformer `MedTextTransformer` runs in three modes:
- "text": unimodal encoder ([CLS] first, bidirectional, no cross-attention), for ITC;
- "multimodal": image-grounded encoder ([ENC] first, cross-attention to the image tokens
  between self-attention and FFN in every block), for ITM;
- "decoder": image-grounded causal decoder ([DEC] as BOS), for LM / captioning.
Every block has two self-attention sublayers, `self_attention` (encoder modes) and
`causal_self_attention` (decoder); all else (embeddings, cross-attention, FFN) is shared,
as BLIP ties its encoder and decoder except the self-attention layers.

Params of `Blip` (vision tree: see `vlp_jax.encoders.vit`), and where Hugging Face weights
come from. Torch `Linear` W [out, in] converts as W.T, reshaped for attention:
q/k/v kernel [Din, H, Dh] = W.T.reshape(Din, H, Dh), bias [H, Dh]; out kernel
[H, Dh, D] = W.T.reshape(H, Dh, D). `T.` = `text_encoder.` of `BlipForImageTextRetrieval`;
`C.` = `text_decoder.bert.` of `BlipForConditionalGeneration`; `layer.i` = `encoder.layer.i`:
  vision/...                                        <- vision_model.* (either model)
  text/embeddings/word_embeddings/embedding [V, D]  <- T.embeddings.word_embeddings.weight
  text/embeddings/position_embeddings/embedding     <- T.embeddings.position_embeddings.weight
  text/embeddings/layer_norm                        <- T.embeddings.LayerNorm
  text/encoder/layers_i/self_attention/attention/{query,key,value,out}
                                                    <- T.layer.i.attention.self.{query,key,value}, .output.dense
  text/encoder/layers_i/self_attention/layer_norm   <- T.layer.i.attention.output.LayerNorm
  text/encoder/layers_i/causal_self_attention/...   <- C.layer.i.attention.* (same layout)
  text/encoder/layers_i/cross_attention/attention/{query,key,value,out}, layer_norm
                                                    <- T.layer.i.crossattention.* (k/v kernels [Dv, H, Dh])
  text/encoder/layers_i/feed_forward/mlp/fc1, fc2   <- T.layer.i.intermediate.dense, output.dense
  text/encoder/layers_i/feed_forward/layer_norm     <- T.layer.i.output.LayerNorm
  lm_head/dense, lm_head/layer_norm                 <- text_decoder.cls.predictions.transform.dense, .LayerNorm
  lm_head/bias [V]                                  <- text_decoder.cls.predictions.bias (decoder.weight is
                                                       tied to the word embeddings; `lm_head/decoder` if untied)
  vision_proj, text_proj [D, E], itm_head [D, 2]    <- vision_proj, text_proj, itm_head
  temperature []                                    <- salesforce BLIP `temp` (HF has none)
HF ships retrieval and captioning as separate finetunes: the shared parts come from either
(`T.` or `C.`), and the other model's copy is dropped. With `scan_layers`, `layers_i` is one
`layers` tree stacked on a leading [L] axis. The ITM head reads the multimodal [ENC] output;
HF's text models have no pooler here (`add_pooling_layer=False`).

Training (`blip_loss`): one image forward and three text forwards per pair plus the momentum
encoders, ITC + ITM + LM with configurable weights; state in `extra_state` =
{"momentum": EMA copies of vision/text (unimodal parts)/vision_proj/text_proj, "queue": FeatureQueue,
"step": int32}. Captioning: `caption` runs `vlp_jax.decoding` with a KV cache.
"""
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax import decoding
from vlp_jax.encoders.vit import VisionTransformer
from vlp_jax.layers import TextEmbeddings, TransformerStack, create_decode_cache, layer_norm
from vlp_jax.layers.common import Array, Dtype
from vlp_jax.layers.mlp import activation_fn
from vlp_jax.objectives import contrastive, language, matching

PyTree = Any
TextMode = Literal["text", "multimodal", "decoder"]
SELF_ATTENTION = "self_attention"
CAUSAL_SELF_ATTENTION = "causal_self_attention"
MOMENTUM_MODULES = ("vision", "text", "vision_proj", "text_proj")


@dataclasses.dataclass(frozen=True)
class BlipConfig:
  """Architecture, special tokens and objective settings (defaults: BLIP ViT-B/16 base)."""
  image_size: int = 224
  patch_size: int = 16
  vision_width: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  vision_mlp_dim: int = 3072
  vision_layer_norm_epsilon: float = 1e-5
  vision_position_init: str = "normal"
  vision_position_init_scale: float = 1.0
  vocab_size: int = 30524
  text_width: int = 768
  text_layers: int = 12
  text_heads: int = 12
  text_mlp_dim: int = 3072
  max_text_length: int = 512
  text_layer_norm_epsilon: float = 1e-12
  text_dropout_rate: float = 0.0
  tie_word_embeddings: bool = True
  embed_dim: int = 256
  pad_id: int = 0
  cls_id: int = 2
  sep_id: int = 3
  enc_id: int = 5
  dec_id: int = 6
  itc_weight: float = 1.0
  itm_weight: float = 1.0
  lm_weight: float = 1.0
  queue_size: int = 57600
  momentum: float = 0.995
  alpha: float = 0.4
  alpha_ramp_steps: int = 0
  label_smoothing: float = 0.1
  use_image_ids: bool = False


class LMPredictionHead(nn.Module):
  """BERT prediction head: dense -> gelu -> LayerNorm -> vocabulary. [B, T, D] -> [B, T, V].

  With `tied_logits` (hidden -> hidden @ word_embeddings.T) the output matrix is the word
  embedding table and only a bias [V] is owned here; otherwise a `decoder` Dense.
  """
  vocab_size: int
  layer_norm_epsilon: float = 1e-12
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: Array, tied_logits: Callable[[Array], Array] | None) -> Array:
    width = hidden.shape[-1]
    h = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype,
                 kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                          ("embed", "mlp")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                 name="dense")(hidden)
    h = activation_fn("gelu")(h)
    h = layer_norm(self.layer_norm_epsilon, self.dtype, self.param_dtype, name="layer_norm")(h)
    if tied_logits is None:
      return nn.Dense(self.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype,
                      kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                               ("embed", "vocab")),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                      name="decoder")(h)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                      (self.vocab_size,), self.param_dtype)
    return tied_logits(h) + bias.astype(self.dtype)


class MedTextTransformer(nn.Module):
  """BLIP's MED text transformer: token ids [B, T] -> hidden states [B, T, D] (post-LN BERT)."""
  config: BlipConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_policy: str = "none"
  scan_layers: bool = False

  def setup(self) -> None:
    c = self.config
    self.embeddings = TextEmbeddings(
        vocab_size=c.vocab_size, hidden_size=c.text_width, max_length=c.max_text_length,
        layer_norm_epsilon=c.text_layer_norm_epsilon, dropout_rate=c.text_dropout_rate,
        dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = TransformerStack(
        num_layers=c.text_layers, num_heads=c.text_heads, mlp_dim=c.text_mlp_dim,
        norm_position="post", cross_attention=True,
        self_attention_variants=(SELF_ATTENTION, CAUSAL_SELF_ATTENTION),
        dropout_rate=c.text_dropout_rate, attention_dropout_rate=c.text_dropout_rate,
        layer_norm_epsilon=c.text_layer_norm_epsilon, dtype=self.dtype,
        param_dtype=self.param_dtype, remat_policy=self.remat_policy,
        scan_layers=self.scan_layers)

  def __call__(self, token_ids: Array, padding_mask: Array | None = None,
               image_embeds: Array | None = None, *, mode: TextMode = "text",
               position_ids: Array | None = None, deterministic: bool = True,
               decode: bool = False) -> Array:
    """token_ids [B, T]; padding_mask [B, T] (True = token; None in decode mode);
    image_embeds [B, S, Dv] for "multimodal" / "decoder" -> [B, T, D]."""
    if mode not in ("text", "multimodal", "decoder"):
      raise ValueError(f"unknown text mode {mode!r}")
    if mode != "text" and image_embeds is None:
      raise ValueError(f"mode {mode!r} needs image_embeds")
    is_decoder = mode == "decoder"
    x = self.embeddings(token_ids, position_ids=position_ids, deterministic=deterministic)
    padding_mask = None if padding_mask is None else padding_mask.astype(bool)
    return self.encoder(
        x, None if mode == "text" else image_embeds, padding_mask=padding_mask,
        causal=is_decoder, self_attention_variant=(CAUSAL_SELF_ATTENTION if is_decoder
                                                   else SELF_ATTENTION),
        deterministic=deterministic, decode=decode)

  def tied_logits(self, hidden: Array) -> Array:
    """hidden [B, T, D] @ word_embeddings.T -> [B, T, V]."""
    return self.embeddings.attend(hidden)


def _dense(features: int, axes: tuple[str | None, str | None], name: str,
           dtype: Dtype, param_dtype: Dtype) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


class Blip(nn.Module):
  """BLIP: ViT + MED + projections + ITM and LM heads; methods are the forward passes."""
  config: BlipConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_policy: str = "none"
  scan_layers: bool = False

  def setup(self) -> None:
    c = self.config
    self.vision = VisionTransformer(
        image_size=c.image_size, patch_size=c.patch_size, width=c.vision_width,
        num_layers=c.vision_layers, num_heads=c.vision_heads, mlp_dim=c.vision_mlp_dim,
        layer_norm_epsilon=c.vision_layer_norm_epsilon, position_init=c.vision_position_init,
        position_init_scale=c.vision_position_init_scale,
        dtype=self.dtype, param_dtype=self.param_dtype, remat_policy=self.remat_policy,
        scan_layers=self.scan_layers)
    self.text = MedTextTransformer(c, dtype=self.dtype, param_dtype=self.param_dtype,
                                   remat_policy=self.remat_policy, scan_layers=self.scan_layers)
    self.vision_proj = _dense(c.embed_dim, ("embed", None), "vision_proj", self.dtype,
                              self.param_dtype)
    self.text_proj = _dense(c.embed_dim, ("embed", None), "text_proj", self.dtype,
                            self.param_dtype)
    self.itm_head = _dense(2, ("embed", None), "itm_head", self.dtype, self.param_dtype)
    self.lm_head = LMPredictionHead(c.vocab_size, c.text_layer_norm_epsilon, self.dtype,
                                    self.param_dtype)
    self.temperature = self.param("temperature", nn.initializers.constant(
        contrastive.TEMPERATURE_INIT), (), jnp.float32)

  def encode_image(self, images: Array, *, deterministic: bool = True) -> Array:
    """images [B, H, W, 3] -> image tokens [B, 1 + N, Dv]."""
    return self.vision(images, deterministic=deterministic)

  def image_features(self, image_embeds: Array) -> Array:
    """L2-normalised projection of the image [CLS]: [B, 1 + N, Dv] -> [B, E] float32."""
    return contrastive.l2_normalize(self.vision_proj(image_embeds[:, 0]))

  def encode_text(self, token_ids: Array, padding_mask: Array, *,
                  deterministic: bool = True) -> Array:
    """Unimodal encoder ([CLS] at position 0): [B, T] -> [B, T, D]."""
    return self.text(token_ids, padding_mask, mode="text", deterministic=deterministic)

  def text_features(self, text_hidden: Array) -> Array:
    """L2-normalised projection of the text [CLS]: [B, T, D] -> [B, E] float32."""
    return contrastive.l2_normalize(self.text_proj(text_hidden[:, 0]))

  def itm_logits(self, token_ids: Array, padding_mask: Array, image_embeds: Array, *,
                 deterministic: bool = True) -> Array:
    """Image-grounded encoder ([ENC] at position 0) + ITM head: -> [B, 2] float32 (1 = match)."""
    hidden = self.text(token_ids, padding_mask, image_embeds, mode="multimodal",
                       deterministic=deterministic)
    return self.itm_head(hidden[:, 0]).astype(jnp.float32)

  def lm_logits(self, token_ids: Array, padding_mask: Array | None, image_embeds: Array, *,
                position_ids: Array | None = None, deterministic: bool = True,
                decode: bool = False) -> Array:
    """Image-grounded causal decoder ([DEC] as BOS) + LM head: [B, T] -> [B, T, V] float32."""
    hidden = self.text(token_ids, padding_mask, image_embeds, mode="decoder",
                       position_ids=position_ids, deterministic=deterministic, decode=decode)
    tied = self.text.tied_logits if self.config.tie_word_embeddings else None
    return self.lm_head(hidden, tied).astype(jnp.float32)

  def __call__(self, images: Array, token_ids: Array, padding_mask: Array, *,
               deterministic: bool = True) -> dict[str, Array]:
    """Every forward pass once (used by `init`): features, ITM and LM logits."""
    image_embeds = self.encode_image(images, deterministic=deterministic)
    text_hidden = self.encode_text(token_ids, padding_mask, deterministic=deterministic)
    return {"image_features": self.image_features(image_embeds),
            "text_features": self.text_features(text_hidden),
            "itm_logits": self.itm_logits(token_ids, padding_mask, image_embeds,
                                          deterministic=deterministic),
            "lm_logits": self.lm_logits(token_ids, padding_mask, image_embeds,
                                        deterministic=deterministic),
            "temperature": contrastive.clamp_temperature(self.temperature)}


def build_blip(config: BlipConfig, *, dtype: Dtype = jnp.float32, remat_policy: str = "none",
               scan_layers: bool = False) -> Blip:
  """The `Blip` module: params float32, matmuls in `dtype`, blocks remat'ed / scanned as asked."""
  return Blip(config, dtype=dtype, remat_policy=remat_policy, scan_layers=scan_layers)


def init_params(model: Blip, rng: jax.Array, *, image_size: int | None = None,
                text_length: int = 8) -> PyTree:
  """Boxed params from dummy inputs [1, S, S, 3] and [1, text_length]."""
  size = image_size or model.config.image_size
  ids = jnp.zeros((1, text_length), jnp.int32)
  return model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), ids,
                    jnp.ones((1, text_length), bool))["params"]


def momentum_subtree(params: PyTree) -> dict[str, PyTree]:
  """The parts of `params` with momentum copies (BLIP: visual encoder, text encoder, projections).

  The momentum text encoder only runs unimodally, so its copy leaves out the layers' causal
  self-attention and cross-attention (BLIP keeps EMA copies of them that nothing reads).
  """
  subtree = {name: params[name] for name in MOMENTUM_MODULES}
  unused = (CAUSAL_SELF_ATTENTION, "cross_attention")
  layers = {name: {key: value for key, value in layer.items() if key not in unused}
            for name, layer in params["text"]["encoder"].items()}
  subtree["text"] = {**params["text"], "encoder": layers}
  return subtree


def init_extra_state(params: PyTree, rng: jax.Array, config: BlipConfig) -> dict[str, Any]:
  """{"momentum": copy of momentum_subtree(params), "queue": random unit features, "step": 0}."""
  return {"momentum": jax.tree.map(jnp.array, momentum_subtree(params)),
          "queue": contrastive.init_feature_queue(rng, config.queue_size, config.embed_dim),
          "step": jnp.zeros((), jnp.int32)}


def with_token(token_ids: Array, token_id: int) -> Array:
  """token_ids [B, T] with position 0 set to `token_id` ([CLS], [ENC] or [DEC])."""
  return token_ids.at[:, 0].set(jnp.asarray(token_id, token_ids.dtype))


def blip_loss(model: Blip, params: PyTree, extra_state: dict[str, Any],
              batch: dict[str, Array], rng: jax.Array, *, deterministic: bool = False
              ) -> tuple[Array, dict[str, Array], dict[str, Any]]:
  """BLIP pretraining objective on a (global) batch.

  batch: image [B, H, W, 3], text_ids [B, T] ([CLS] w... [SEP] pad), text_mask [B, T], and
  image_id [B] when `config.use_image_ids`. Returns (loss, metrics, new extra_state).
  Follows salesforce BLIP's step: EMA-update the momentum encoders, then ITC against
  [momentum batch; queue], ITM on hard negatives, LM with label smoothing, then enqueue.
  """
  c = model.config
  dropout_rng, momentum_rng, negatives_rng = jax.random.split(rng, 3)
  images = batch["image"]
  padding_mask = batch["text_mask"].astype(bool)
  token_ids = batch["text_ids"].astype(jnp.int32)
  image_ids = batch["image_id"].astype(jnp.int32) if c.use_image_ids else None
  batch_size = token_ids.shape[0]

  def run(variables: PyTree, method: Callable[..., Array], *args: Array,
          rng: jax.Array = dropout_rng, **kwargs: Any) -> Array:
    return model.apply({"params": variables}, *args, method=method,
                       deterministic=deterministic, rngs={"dropout": rng}, **kwargs)

  def run_plain(variables: PyTree, method: Callable[..., Array], *args: Array) -> Array:
    return model.apply({"params": variables}, *args, method=method)

  momentum = contrastive.ema_update(extra_state["momentum"], momentum_subtree(params), c.momentum)
  momentum_params = jax.lax.stop_gradient({**params, **momentum})
  cls_ids = with_token(token_ids, c.cls_id)

  image_embeds = run(params, Blip.encode_image, images)
  image_features = run_plain(params, Blip.image_features, image_embeds)
  text_features = run_plain(params, Blip.text_features,
                            run(params, Blip.encode_text, cls_ids, padding_mask))
  image_features_m = run_plain(momentum_params, Blip.image_features,
                               run(momentum_params, Blip.encode_image, images, rng=momentum_rng))
  text_features_m = run_plain(momentum_params, Blip.text_features, run(
      momentum_params, Blip.encode_text, cls_ids, padding_mask, rng=momentum_rng))
  alpha = contrastive.ramped_alpha(extra_state["step"], c.alpha, c.alpha_ramp_steps)
  itc = contrastive.image_text_contrastive_loss(
      image_features, text_features, image_features_m, text_features_m, extra_state["queue"],
      params["temperature"], alpha, image_ids)

  enc_ids = with_token(token_ids, c.enc_id)
  negatives = matching.sample_hard_negatives(
      negatives_rng, itc.sim_i2t[:, :batch_size], itc.sim_t2i[:, :batch_size], image_ids)
  positive_logits = run(params, Blip.itm_logits, enc_ids, padding_mask, image_embeds)
  negative_ids, negative_mask, negative_images = matching.negative_pairs(
      negatives, enc_ids, padding_mask, image_embeds)
  negative_logits = run(params, Blip.itm_logits, negative_ids, negative_mask, negative_images)
  itm_loss, itm_metrics = matching.image_text_matching_loss(positive_logits, negative_logits)

  dec_ids = with_token(token_ids, c.dec_id)
  lm_logits = run(params, Blip.lm_logits, dec_ids, padding_mask, image_embeds)
  lm_loss, lm_metrics = language.causal_lm_loss(lm_logits, dec_ids, padding_mask,
                                                c.label_smoothing)

  loss = c.itc_weight * itc.loss + c.itm_weight * itm_loss + c.lm_weight * lm_loss
  queue = contrastive.enqueue(extra_state["queue"], image_features_m, text_features_m, image_ids)
  metrics = {"loss": loss, "itc_loss": itc.loss, **itm_metrics, **lm_metrics,
             "temperature": contrastive.clamp_temperature(params["temperature"]),
             "alpha": jnp.asarray(alpha, jnp.float32)}
  new_extra_state = {"momentum": momentum, "queue": queue, "step": extra_state["step"] + 1}
  return loss, metrics, new_extra_state


# ------------------------------------------------------------------------------ captioning
def _cache_to_loop_layout(cache: PyTree, scanned: bool) -> PyTree:
  """Scanned layers keep caches [L, B, ...] and `cache_index` [L]; `vlp_jax.decoding` wants
  batch-major leaves and scalar shared ones: -> [B, L, ...] and a scalar index."""
  if not scanned:
    return cache
  return jax.tree.map(lambda x: x[0] if x.ndim == 1 else jnp.swapaxes(x, 0, 1), cache)


def _cache_from_loop_layout(cache: PyTree, scanned: bool, num_layers: int) -> PyTree:
  """Inverse of `_cache_to_loop_layout`."""
  if not scanned:
    return cache
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_layers,)) if x.ndim == 0
                      else jnp.swapaxes(x, 0, 1), cache)


def init_decode_cache(model: Blip, params: PyTree, image_embeds: Array,
                      max_length: int) -> PyTree:
  """Decoding cache for [B] captions of `max_length` tokens over image_embeds [B, S, Dv]
  (self-attention caches sized max_length, cross-attention keys/values of the image), in
  the batch-major layout `vlp_jax.decoding` tiles and reorders for beams."""
  batch_size = image_embeds.shape[0]
  cache = create_decode_cache(model, {"params": params},
                              jnp.zeros((batch_size, max_length), jnp.int32), None, image_embeds,
                              method=Blip.lm_logits)
  return _cache_to_loop_layout(cache, model.scan_layers)


def decode_step_fn(model: Blip, params: PyTree, image_width: int) -> decoding.StepFn:
  """`vlp_jax.decoding` step: (tokens [B', 1], cache, position) -> (logits [B', V], cache).

  The image enters only through the cross-attention keys/values in the cache, so the memory
  passed here is an empty [B', 0, Dv] placeholder.
  """
  num_layers = model.config.text_layers

  def step(tokens: Array, cache: PyTree, position: Array) -> tuple[Array, PyTree]:
    no_memory = jnp.zeros((tokens.shape[0], 0, image_width), model.dtype)
    position_ids = jnp.broadcast_to(position, tokens.shape)
    flax_cache = _cache_from_loop_layout(cache, model.scan_layers, num_layers)
    logits, state = model.apply({"params": params, "cache": flax_cache}, tokens, None,
                                no_memory, position_ids=position_ids, decode=True,
                                method=Blip.lm_logits, mutable=["cache"])
    return logits[:, -1], _cache_to_loop_layout(state["cache"], model.scan_layers)
  return step


def caption(model: Blip, params: PyTree, images: Array, *, max_length: int = 30,
            method: decoding.Method = "beam", num_beams: int = 3, top_p: float = 0.9,
            prompt_ids: Array | None = None, rng: jax.Array | None = None,
            **decode_kwargs: Any) -> decoding.DecodeOutput:
  """Captions images [B, H, W, 3]: [DEC] + optional prompt (BLIP: "a picture of "), then the
  decoder until [SEP] (eos). BLIP's defaults: beam 3, or nucleus sampling with top-p 0.9
  (`num_beams` applies to beam search only). Call inside `jax.jit` (static keywords)."""
  c = model.config
  image_embeds = model.apply({"params": params}, images, method=Blip.encode_image)
  cache = init_decode_cache(model, params, image_embeds, max_length)
  bos = jnp.full((images.shape[0],), c.dec_id, jnp.int32)
  return decoding.decode(decode_step_fn(model, params, image_embeds.shape[-1]), cache, bos,
                         max_length=max_length, eos_id=c.sep_id, pad_id=c.pad_id, method=method,
                         num_beams=num_beams if method == "beam" else 1, top_p=top_p,
                         prompt_ids=prompt_ids, rng=rng,
                         **decode_kwargs)


def loss_fn_for(model: Blip) -> Callable[..., tuple[Array, dict[str, Array], dict[str, Any]]]:
  """`loss_fn(params, extra_state, batch, rng)` in the trainer's protocol."""
  return functools.partial(blip_loss, model)
