"""Hugging Face BLIP (PyTorch `state_dict`, as numpy arrays) <-> `vlp_jax.models.blip.Blip` params.

Implements the mapping written down in `vlp_jax.models.blip` and `vlp_jax.encoders.vit`:
`BlipForImageTextRetrieval` gives the vision tower, the text encoder (self-attention,
cross-attention, FFN, embeddings), the projections and the ITM head;
`BlipForConditionalGeneration` gives the decoder's causal self-attention and the LM head
(its vision tower and shared text parts are used when no retrieval state is given).
Params are unscanned (`layers_i`). Torch tensors: pass `{k: v.numpy() for k, v in
model.state_dict().items()}`. The inverse (`blip_params_to_hf`, used by `vlp_jax.export`)
and the config mappings (`blip_config_from_hf`, `hf_config_from_blip`) live here too, so
there is one implementation of the mapping (directory I/O: `vlp_jax.convert.hf_blip`).
"""
from collections.abc import Mapping
from typing import Any

import numpy as np

from vlp_jax.models.blip import BlipConfig
from vlp_jax.objectives.contrastive import TEMPERATURE_INIT

State = Mapping[str, np.ndarray]
Params = dict[str, Any]


def _linear(state: State, prefix: str) -> Params:
  """torch Linear [out, in] -> Dense kernel [in, out], bias [out]."""
  return {"kernel": state[prefix + ".weight"].T, "bias": state[prefix + ".bias"]}


def _norm(state: State, prefix: str) -> Params:
  return {"scale": state[prefix + ".weight"], "bias": state[prefix + ".bias"]}


def _heads_in(weight: np.ndarray, bias: np.ndarray, heads: int) -> Params:
  """torch Linear [H*Dh, Din] -> DenseGeneral kernel [Din, H, Dh], bias [H, Dh]."""
  return {"kernel": weight.T.reshape(weight.shape[1], heads, -1),
          "bias": bias.reshape(heads, -1)}


def _heads_out(weight: np.ndarray, bias: np.ndarray, heads: int) -> Params:
  """torch Linear [Do, H*Dh] -> DenseGeneral kernel [H, Dh, Do], bias [Do]."""
  return {"kernel": weight.T.reshape(heads, -1, weight.shape[0]), "bias": bias}


def vision_params_from_hf(state: State, prefix: str, num_layers: int, heads: int) -> Params:
  """`{prefix}embeddings...`, `{prefix}encoder.layers.i...` -> VisionTransformer params."""
  params = {
      "patch_embedding": {"projection": {
          "kernel": state[prefix + "embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
          "bias": state[prefix + "embeddings.patch_embedding.bias"]}},
      "class_embedding": state[prefix + "embeddings.class_embedding"],
      "position_embedding": state[prefix + "embeddings.position_embedding"],
      "post_layernorm": _norm(state, prefix + "post_layernorm"),
      "encoder": {}}
  for i in range(num_layers):
    p = f"{prefix}encoder.layers.{i}."
    width = state[p + "self_attn.projection.weight"].shape[0]
    qkv_weight = state[p + "self_attn.qkv.weight"].reshape(3, width, width)
    qkv_bias = state[p + "self_attn.qkv.bias"].reshape(3, width)
    attention = {name: _heads_in(qkv_weight[k], qkv_bias[k], heads)
                 for k, name in enumerate(("query", "key", "value"))}
    attention["out"] = _heads_out(state[p + "self_attn.projection.weight"],
                                  state[p + "self_attn.projection.bias"], heads)
    params["encoder"][f"layers_{i}"] = {
        "self_attention": {"attention": attention, "layer_norm": _norm(state, p + "layer_norm1")},
        "feed_forward": {"layer_norm": _norm(state, p + "layer_norm2"),
                         "mlp": {"fc1": _linear(state, p + "mlp.fc1"),
                                 "fc2": _linear(state, p + "mlp.fc2")}}}
  return params


def _bert_attention(state: State, prefix: str, heads: int) -> Params:
  """`{prefix}.self.{query,key,value}`, `{prefix}.output.{dense,LayerNorm}` -> AttentionSublayer."""
  attention = {name: _heads_in(state[f"{prefix}.self.{name}.weight"],
                               state[f"{prefix}.self.{name}.bias"], heads)
               for name in ("query", "key", "value")}
  attention["out"] = _heads_out(state[prefix + ".output.dense.weight"],
                                state[prefix + ".output.dense.bias"], heads)
  return {"attention": attention, "layer_norm": _norm(state, prefix + ".output.LayerNorm")}


def text_params_from_hf(state: State, prefix: str, num_layers: int, heads: int,
                        causal_state: State | None = None, causal_prefix: str = "") -> Params:
  """BERT-style `{prefix}embeddings...`, `{prefix}encoder.layer.i...` -> MedTextTransformer params.

  The causal self-attention comes from `causal_state[causal_prefix...]` (the captioning
  decoder); without it, the encoder's self-attention is copied into both variants.
  """
  causal_state = state if causal_state is None else causal_state
  causal_prefix = causal_prefix if causal_state is not state else prefix
  params = {"embeddings": {
      "word_embeddings": {"embedding": state[prefix + "embeddings.word_embeddings.weight"]},
      "position_embeddings": {
          "embedding": state[prefix + "embeddings.position_embeddings.weight"]},
      "layer_norm": _norm(state, prefix + "embeddings.LayerNorm")}, "encoder": {}}
  for i in range(num_layers):
    p = f"{prefix}encoder.layer.{i}."
    params["encoder"][f"layers_{i}"] = {
        "self_attention": _bert_attention(state, p + "attention", heads),
        "causal_self_attention": _bert_attention(
            causal_state, f"{causal_prefix}encoder.layer.{i}.attention", heads),
        "cross_attention": _bert_attention(state, p + "crossattention", heads),
        "feed_forward": {"layer_norm": _norm(state, p + "output.LayerNorm"),
                         "mlp": {"fc1": _linear(state, p + "intermediate.dense"),
                                 "fc2": _linear(state, p + "output.dense")}}}
  return params


def lm_head_params_from_hf(state: State, prefix: str = "text_decoder.cls.predictions.",
                           tie_word_embeddings: bool = True) -> Params:
  """BERT prediction head -> LMPredictionHead params."""
  params = {"dense": _linear(state, prefix + "transform.dense"),
            "layer_norm": _norm(state, prefix + "transform.LayerNorm")}
  if tie_word_embeddings:
    params["bias"] = state[prefix + "bias"]
  else:
    params["decoder"] = _linear(state, prefix + "decoder")
  return params


def blip_params_from_hf(config: BlipConfig, retrieval_state: State | None = None,
                        captioning_state: State | None = None,
                        temperature: float = TEMPERATURE_INIT) -> Params:
  """Full `Blip` params from one or both HF BLIP state dicts (numpy arrays).

  Parts a given checkpoint lacks: without `captioning_state`, the LM head is absent (returned
  tree has no `lm_head`) and the causal self-attention copies the encoder's; without
  `retrieval_state`, the projections and ITM head are absent.
  """
  if retrieval_state is None and captioning_state is None:
    raise ValueError("give at least one of retrieval_state, captioning_state")
  main = retrieval_state if retrieval_state is not None else captioning_state
  text_prefix = "text_encoder." if retrieval_state is not None else "text_decoder.bert."
  params: Params = {
      "vision": vision_params_from_hf(main, "vision_model.", config.vision_layers,
                                      config.vision_heads),
      "text": text_params_from_hf(main, text_prefix, config.text_layers, config.text_heads,
                                  captioning_state, "text_decoder.bert."),
      "temperature": np.asarray(temperature, np.float32)}
  if retrieval_state is not None:
    for name in ("vision_proj", "text_proj", "itm_head"):
      params[name] = _linear(retrieval_state, name)
  if captioning_state is not None:
    params["lm_head"] = lm_head_params_from_hf(captioning_state,
                                               tie_word_embeddings=config.tie_word_embeddings)
  return params


# ------------------------------------------------------------------ ours -> Hugging Face
def _linear_to_hf(params: Params, prefix: str) -> dict[str, np.ndarray]:
  return {prefix + ".weight": np.asarray(params["kernel"]).T,
          prefix + ".bias": np.asarray(params["bias"])}


def _norm_to_hf(params: Params, prefix: str) -> dict[str, np.ndarray]:
  return {prefix + ".weight": np.asarray(params["scale"]),
          prefix + ".bias": np.asarray(params["bias"])}


def _heads_in_to_hf(params: Params) -> tuple[np.ndarray, np.ndarray]:
  """DenseGeneral kernel [Din, H, Dh], bias [H, Dh] -> torch weight [H*Dh, Din], bias [H*Dh]."""
  kernel = np.asarray(params["kernel"])
  return kernel.reshape(kernel.shape[0], -1).T, np.asarray(params["bias"]).reshape(-1)


def _heads_out_to_hf(params: Params, prefix: str) -> dict[str, np.ndarray]:
  """DenseGeneral kernel [H, Dh, Do] -> torch weight [Do, H*Dh]."""
  kernel = np.asarray(params["kernel"])
  return {prefix + ".weight": kernel.reshape(-1, kernel.shape[-1]).T,
          prefix + ".bias": np.asarray(params["bias"])}


def vision_params_to_hf(params: Params, prefix: str, num_layers: int) -> dict[str, np.ndarray]:
  """Inverse of `vision_params_from_hf`."""
  state = {
      prefix + "embeddings.patch_embedding.weight":
          np.asarray(params["patch_embedding"]["projection"]["kernel"]).transpose(3, 2, 0, 1),
      prefix + "embeddings.patch_embedding.bias":
          np.asarray(params["patch_embedding"]["projection"]["bias"]),
      prefix + "embeddings.class_embedding": np.asarray(params["class_embedding"]),
      prefix + "embeddings.position_embedding": np.asarray(params["position_embedding"]),
      **_norm_to_hf(params["post_layernorm"], prefix + "post_layernorm")}
  for i in range(num_layers):
    layer, p = params["encoder"][f"layers_{i}"], f"{prefix}encoder.layers.{i}."
    attention = layer["self_attention"]["attention"]
    weights, biases = zip(*(_heads_in_to_hf(attention[name])
                            for name in ("query", "key", "value")))
    state[p + "self_attn.qkv.weight"] = np.concatenate(weights, axis=0)
    state[p + "self_attn.qkv.bias"] = np.concatenate(biases, axis=0)
    state.update(_heads_out_to_hf(attention["out"], p + "self_attn.projection"))
    state.update(_norm_to_hf(layer["self_attention"]["layer_norm"], p + "layer_norm1"))
    state.update(_norm_to_hf(layer["feed_forward"]["layer_norm"], p + "layer_norm2"))
    state.update(_linear_to_hf(layer["feed_forward"]["mlp"]["fc1"], p + "mlp.fc1"))
    state.update(_linear_to_hf(layer["feed_forward"]["mlp"]["fc2"], p + "mlp.fc2"))
  return state


def _bert_attention_to_hf(params: Params, prefix: str) -> dict[str, np.ndarray]:
  """Inverse of `_bert_attention`."""
  state = {}
  for name in ("query", "key", "value"):
    weight, bias = _heads_in_to_hf(params["attention"][name])
    state.update({f"{prefix}.self.{name}.weight": weight, f"{prefix}.self.{name}.bias": bias})
  state.update(_heads_out_to_hf(params["attention"]["out"], prefix + ".output.dense"))
  state.update(_norm_to_hf(params["layer_norm"], prefix + ".output.LayerNorm"))
  return state


def text_params_to_hf(params: Params, prefix: str, num_layers: int, *,
                      causal: bool) -> dict[str, np.ndarray]:
  """MedTextTransformer params -> HF BERT-style text model state (`{prefix}embeddings...`).

  `causal`: the self-attention comes from our `causal_self_attention` (the captioning
  decoder), else from `self_attention` (the retrieval text encoder).
  """
  embeddings = params["embeddings"]
  state = {
      prefix + "embeddings.word_embeddings.weight":
          np.asarray(embeddings["word_embeddings"]["embedding"]),
      prefix + "embeddings.position_embeddings.weight":
          np.asarray(embeddings["position_embeddings"]["embedding"]),
      **_norm_to_hf(embeddings["layer_norm"], prefix + "embeddings.LayerNorm")}
  for i in range(num_layers):
    layer, p = params["encoder"][f"layers_{i}"], f"{prefix}encoder.layer.{i}."
    self_attention = layer["causal_self_attention" if causal else "self_attention"]
    state.update(_bert_attention_to_hf(self_attention, p + "attention"))
    state.update(_bert_attention_to_hf(layer["cross_attention"], p + "crossattention"))
    state.update(_linear_to_hf(layer["feed_forward"]["mlp"]["fc1"], p + "intermediate.dense"))
    state.update(_linear_to_hf(layer["feed_forward"]["mlp"]["fc2"], p + "output.dense"))
    state.update(_norm_to_hf(layer["feed_forward"]["layer_norm"], p + "output.LayerNorm"))
  return state


def blip_params_to_hf(config: BlipConfig, params: Params,
                      kind: str) -> dict[str, np.ndarray]:
  """Our (unscanned) `Blip` params -> the state dict of HF `kind` ("retrieval":
  `BlipForImageTextRetrieval`, "captioning": `BlipForConditionalGeneration`).

  Our encoder and decoder share all but the self-attention; each HF model gets its own copy.
  The captioning LM output matrix is written as `decoder.weight` (= the word embeddings when
  tied) with `decoder.bias` = the LM bias, so loading works with or without weight tying.
  """
  state = vision_params_to_hf(params["vision"], "vision_model.", config.vision_layers)
  if kind == "retrieval":
    state.update(text_params_to_hf(params["text"], "text_encoder.", config.text_layers,
                                   causal=False))
    for name in ("vision_proj", "text_proj", "itm_head"):
      state.update(_linear_to_hf(params[name], name))
    return state
  if kind != "captioning":
    raise ValueError(f"unknown kind {kind!r}; known: retrieval, captioning")
  state.update(text_params_to_hf(params["text"], "text_decoder.bert.", config.text_layers,
                                 causal=True))
  head, prefix = params["lm_head"], "text_decoder.cls.predictions."
  state.update(_linear_to_hf(head["dense"], prefix + "transform.dense"))
  state.update(_norm_to_hf(head["layer_norm"], prefix + "transform.LayerNorm"))
  if config.tie_word_embeddings:
    bias = np.asarray(head["bias"])
    state.update({prefix + "bias": bias, prefix + "decoder.bias": bias,
                  prefix + "decoder.weight":
                      state["text_decoder.bert.embeddings.word_embeddings.weight"]})
  else:
    state.update(_linear_to_hf(head["decoder"], prefix + "decoder"))
    state[prefix + "bias"] = state[prefix + "decoder.bias"]
  return state


def blip_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> BlipConfig:
  """Our `BlipConfig` from a HF BLIP `config.json` (dict); unset fields take HF's defaults.

  HF's config has no [CLS] / [ENC] ids (they live in the tokenizer): pass `cls_id`, `enc_id`
  in `overrides` (defaults: bert-base-uncased's 101 and 30523)."""
  text, vision = hf_config.get("text_config", {}), hf_config.get("vision_config", {})
  return BlipConfig(
      image_size=vision.get("image_size", 384), patch_size=vision.get("patch_size", 16),
      vision_width=vision.get("hidden_size", 768),
      vision_layers=vision.get("num_hidden_layers", 12),
      vision_heads=vision.get("num_attention_heads", 12),
      vision_mlp_dim=vision.get("intermediate_size", 3072),
      vision_layer_norm_epsilon=vision.get("layer_norm_eps", 1e-5),
      vocab_size=text.get("vocab_size", 30524), text_width=text.get("hidden_size", 768),
      text_layers=text.get("num_hidden_layers", 12),
      text_heads=text.get("num_attention_heads", 8),
      text_mlp_dim=text.get("intermediate_size", 3072),
      max_text_length=text.get("max_position_embeddings", 512),
      text_layer_norm_epsilon=text.get("layer_norm_eps", 1e-12),
      tie_word_embeddings=hf_config.get("tie_word_embeddings", True),
      embed_dim=hf_config.get("image_text_hidden_size", 256),
      pad_id=text.get("pad_token_id", 0), sep_id=text.get("sep_token_id", 102),
      dec_id=text.get("bos_token_id", 30522), **{"cls_id": 101, "enc_id": 30523, **overrides})


def hf_config_from_blip(config: BlipConfig) -> dict[str, Any]:
  """HF `BlipConfig` kwargs (text_config / vision_config dicts) for our `BlipConfig`.

  Special ids: bos = [DEC] (captioning starts from it), pad, sep = eos = [SEP].
  """
  text = dict(vocab_size=config.vocab_size, hidden_size=config.text_width,
              encoder_hidden_size=config.vision_width, num_hidden_layers=config.text_layers,
              num_attention_heads=config.text_heads, intermediate_size=config.text_mlp_dim,
              max_position_embeddings=config.max_text_length,
              layer_norm_eps=config.text_layer_norm_epsilon, hidden_act="gelu",
              bos_token_id=config.dec_id, pad_token_id=config.pad_id,
              sep_token_id=config.sep_id, eos_token_id=config.sep_id,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  vision = dict(hidden_size=config.vision_width, num_hidden_layers=config.vision_layers,
                num_attention_heads=config.vision_heads, intermediate_size=config.vision_mlp_dim,
                image_size=config.image_size, patch_size=config.patch_size,
                layer_norm_eps=config.vision_layer_norm_epsilon, hidden_act="gelu")
  return dict(text_config=text, vision_config=vision, projection_dim=config.embed_dim,
              image_text_hidden_size=config.embed_dim,
              tie_word_embeddings=config.tie_word_embeddings)
