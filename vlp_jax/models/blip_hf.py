"""Hugging Face BLIP (PyTorch `state_dict`, as numpy arrays) -> `vlp_jax.models.blip.Blip` params.

Implements the mapping written down in `vlp_jax.models.blip` and `vlp_jax.encoders.vit`:
`BlipForImageTextRetrieval` gives the vision tower, the text encoder (self-attention,
cross-attention, FFN, embeddings), the projections and the ITM head;
`BlipForConditionalGeneration` gives the decoder's causal self-attention and the LM head
(its vision tower and shared text parts are used when no retrieval state is given).
Params are unscanned (`layers_i`). Torch tensors: pass `{k: v.numpy() for k, v in
model.state_dict().items()}`.
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
