"""Transformer sublayers, blocks (pre-LN ViT / post-LN BERT, optional cross-attention) and stacks.

A block is: self-attention sublayer -> [cross-attention sublayer] -> feed-forward sublayer.
Each sublayer is `f` + dropout + residual + LayerNorm, with the LayerNorm either before `f`
(`norm_position="pre"`: x + f(LN(x)), ViT) or after the residual (`"post"`: LN(x + f(x)),
BERT). Param tree of a block:

  self_attention/{attention/{query,key,value,out}, layer_norm}   (one per variant name)
  cross_attention/{attention/{query,key,value,out}, layer_norm}  (if cross_attention)
  feed_forward/{mlp/{fc1,fc2}, layer_norm}

HF BERT / BLIP-text layer: attention.self.{query,key,value} -> self_attention/attention/*,
attention.output.dense -> .../out, attention.output.LayerNorm -> self_attention/layer_norm,
crossattention.* -> cross_attention/*, intermediate.dense -> feed_forward/mlp/fc1,
output.dense -> feed_forward/mlp/fc2, output.LayerNorm -> feed_forward/layer_norm.
HF BLIP-vision / ViT layer (pre-LN): layer_norm1 -> self_attention/layer_norm,
self_attn.{qkv split, projection} -> self_attention/attention/{query,key,value,out},
layer_norm2 -> feed_forward/layer_norm, mlp.fc1/fc2 -> feed_forward/mlp/fc1/fc2.

Self-attention variants: `self_attention_variants=("self_attention", "causal_self_attention")`
gives a block two self-attention sublayers sharing everything else (BLIP's text encoder and
decoder); `self_attention_variant=` at call time picks the one that runs. `init` creates all.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from vlp_jax.layers.attention import MultiHeadAttention
from vlp_jax.layers.common import (BATCH_LENGTH_EMBED, Array, Dtype, Initializer,
                                   default_bias_init, default_kernel_init, layer_norm)
from vlp_jax.layers.mlp import MLP
from vlp_jax.train.memory import remat_policy as remat_policy_by_name
from vlp_jax.train.memory import uses_remat

NORM_POSITIONS = ("pre", "post")


def _check_norm_position(norm_position: str) -> None:
  if norm_position not in NORM_POSITIONS:
    raise ValueError(f"norm_position must be one of {NORM_POSITIONS}, got {norm_position!r}")


class AttentionSublayer(nn.Module):
  """Attention + dropout + residual + LayerNorm (pre or post). [B, T, D] -> [B, T, D].

  Submodules: `attention` (MultiHeadAttention), `layer_norm`. In the pre-LN position the
  LayerNorm applies to the queries only; a cross-attention memory is used as given.
  """
  num_heads: int
  head_dim: int | None = None
  norm_position: str = "post"
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = default_bias_init

  @nn.compact
  def __call__(self, x: Array, memory: Array | None = None, *,
               key_padding_mask: Array | None = None, mask: Array | None = None,
               causal: bool = False, query_pos: Array | None = None,
               memory_pos: Array | None = None, deterministic: bool = True,
               decode: bool = False) -> Array:
    """x: [B, T, D]; memory: [B, S, Dm] or None (self-attention). See MultiHeadAttention."""
    _check_norm_position(self.norm_position)
    norm = layer_norm(self.layer_norm_epsilon, self.dtype, self.param_dtype, name="layer_norm")
    attention = MultiHeadAttention(
        num_heads=self.num_heads, head_dim=self.head_dim, use_bias=self.use_bias,
        dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init, bias_init=self.bias_init,
        name="attention")
    h = norm(x) if self.norm_position == "pre" else x
    h = attention(h, memory, key_padding_mask=key_padding_mask, mask=mask, causal=causal,
                  query_pos=query_pos, key_pos=memory_pos, deterministic=deterministic,
                  decode=decode)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    x = x + h
    return norm(x) if self.norm_position == "post" else x


class FeedForwardSublayer(nn.Module):
  """MLP + dropout + residual + LayerNorm (pre or post). [B, T, D] -> [B, T, D].

  Submodules: `mlp` (MLP with fc1/fc2), `layer_norm`.
  """
  mlp_dim: int
  activation: str = "gelu"
  norm_position: str = "post"
  dropout_rate: float = 0.0
  activation_dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = default_bias_init

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
    """x: [B, T, D] -> [B, T, D]."""
    _check_norm_position(self.norm_position)
    norm = layer_norm(self.layer_norm_epsilon, self.dtype, self.param_dtype, name="layer_norm")
    mlp = MLP(hidden_dim=self.mlp_dim, activation=self.activation,
              dropout_rate=self.activation_dropout_rate, use_bias=self.use_bias,
              dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init,
              bias_init=self.bias_init, name="mlp")
    h = norm(x) if self.norm_position == "pre" else x
    h = mlp(h, deterministic=deterministic)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    x = x + h
    return norm(x) if self.norm_position == "post" else x


class TransformerBlockSettings(nn.Module):
  """Hyper-parameters shared by `TransformerBlock` and `TransformerStack`.

  Attributes:
    num_heads: attention heads H.
    mlp_dim: feed-forward inner width.
    head_dim: per-head width Dh; defaults to D // H.
    norm_position: "pre" (ViT, DETR pre-norm) or "post" (BERT, DETR).
    cross_attention: add a cross-attention sublayer between self-attention and the MLP;
      it runs only when a memory is passed.
    self_attention_variants: names of alternative self-attention sublayers (own params);
      the first is the default.
    activation: MLP activation name (see `vlp_jax.layers.mlp.ACTIVATIONS`).
    dropout_rate: dropout on each sublayer's output before the residual.
    attention_dropout_rate: dropout on attention probabilities.
    activation_dropout_rate: dropout inside the MLP after the activation (DETR).
    layer_norm_epsilon: 1e-12 for BERT, 1e-6 for ViT, 1e-5 for DETR.
  """
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None
  norm_position: str = "post"
  cross_attention: bool = False
  self_attention_variants: tuple[str, ...] = ("self_attention",)
  activation: str = "gelu"
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  activation_dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = default_bias_init

  def block_settings(self) -> dict:
    """The `TransformerBlockSettings` fields of this module, as keyword arguments."""
    names = [f.name for f in dataclasses.fields(TransformerBlockSettings)
             if f.name not in ("parent", "name")]
    return {name: getattr(self, name) for name in names}


class TransformerBlock(TransformerBlockSettings):
  """Self-attention -> [cross-attention] -> MLP, each a residual sublayer. [B, T, D] -> same."""

  def _attention_sublayer(self, name: str) -> AttentionSublayer:
    return AttentionSublayer(
        num_heads=self.num_heads, head_dim=self.head_dim, norm_position=self.norm_position,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        layer_norm_epsilon=self.layer_norm_epsilon, use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init, bias_init=self.bias_init,
        name=name)

  @nn.compact
  def __call__(self, x: Array, memory: Array | None = None, *,
               padding_mask: Array | None = None, attention_mask: Array | None = None,
               memory_padding_mask: Array | None = None,
               memory_attention_mask: Array | None = None, query_pos: Array | None = None,
               memory_pos: Array | None = None, causal: bool = False,
               self_attention_variant: str | None = None, deterministic: bool = True,
               decode: bool = False) -> Array:
    """Runs the block.

    Args:
      x: [B, T, D] hidden states.
      memory: [B, S, Dm] for cross-attention, or None to skip it.
      padding_mask: [B, T] bool, True at real tokens (keys of the self-attention).
      attention_mask: bool broadcastable to [B, H, T, T] for the self-attention.
      memory_padding_mask: [B, S] bool, True at real memory tokens.
      memory_attention_mask: bool broadcastable to [B, H, T, S].
      query_pos: [B or 1, T, D] added to self-attention queries/keys and cross-attention
        queries (DETR); memory_pos: [B or 1, S, Dm] added to cross-attention keys.
      causal: causal self-attention.
      self_attention_variant: which of `self_attention_variants` runs (default: first).
      deterministic: disables dropout. decode: KV-cache decoding (see attention.py).
    Returns:
      [B, T, D].
    """
    variant = self_attention_variant or self.self_attention_variants[0]
    if variant not in self.self_attention_variants:
      raise ValueError(f"unknown self-attention variant {variant!r}; "
                       f"known: {self.self_attention_variants}")
    if memory is not None and not self.cross_attention:
      raise ValueError("a memory was passed to a block built with cross_attention=False")

    def self_attention(name: str) -> Array:
      return self._attention_sublayer(name)(
          x, key_padding_mask=padding_mask, mask=attention_mask, causal=causal,
          query_pos=query_pos, deterministic=deterministic, decode=decode)

    if self.is_initializing():  # create every variant's params, whichever one runs
      outputs = {name: self_attention(name) for name in self.self_attention_variants}
      x = outputs[variant]
    else:
      x = self_attention(variant)
    if memory is not None:
      x = self._attention_sublayer("cross_attention")(
          x, memory, key_padding_mask=memory_padding_mask, mask=memory_attention_mask,
          query_pos=query_pos, memory_pos=memory_pos, deterministic=deterministic,
          decode=decode)
    x = FeedForwardSublayer(
        mlp_dim=self.mlp_dim, activation=self.activation, norm_position=self.norm_position,
        dropout_rate=self.dropout_rate, activation_dropout_rate=self.activation_dropout_rate,
        layer_norm_epsilon=self.layer_norm_epsilon, use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init, bias_init=self.bias_init,
        name="feed_forward")(x, deterministic=deterministic)
    return nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)


class _StackLayer(TransformerBlock):
  """A block with its per-call options fixed as attributes, for `nn.scan` / `nn.remat`.

  Takes only array (or None) positional arguments; returns (x, x or None) as a scan step.
  """
  causal: bool = False
  self_attention_variant: str | None = None
  deterministic: bool = True
  decode: bool = False
  keep_output: bool = False

  def __call__(self, x: Array, memory: Array | None, padding_mask: Array | None,
               attention_mask: Array | None, memory_padding_mask: Array | None,
               memory_attention_mask: Array | None, query_pos: Array | None,
               memory_pos: Array | None) -> tuple[Array, Array | None]:
    x = super().__call__(
        x, memory, padding_mask=padding_mask, attention_mask=attention_mask,
        memory_padding_mask=memory_padding_mask, memory_attention_mask=memory_attention_mask,
        query_pos=query_pos, memory_pos=memory_pos, causal=self.causal,
        self_attention_variant=self.self_attention_variant, deterministic=self.deterministic,
        decode=self.decode)
    return x, (x if self.keep_output else None)


class TransformerStack(TransformerBlockSettings):
  """`num_layers` TransformerBlocks. [B, T, D] -> [B, T, D] (and [L, B, T, D] if asked).

  Params: `layers_0` ... `layers_{L-1}` (each a TransformerBlock tree), or with
  `scan_layers=True` one `layers` tree whose leaves have a leading [L] axis (logical name
  `layers`). No final LayerNorm: models add their own.

  Attributes:
    num_layers: L.
    scan_layers: `nn.scan` over the layers (faster compile, one set of stacked params).
    remat_policy: a name from `vlp_jax.train.memory` ("none", "full", "dots", ...).
    return_all_layers: also return every layer's output [L, B, T, D] (DETR aux losses).
  """
  num_layers: int = 1
  scan_layers: bool = False
  remat_policy: str = "none"
  return_all_layers: bool = False

  @nn.compact
  def __call__(self, x: Array, memory: Array | None = None, *,
               padding_mask: Array | None = None, attention_mask: Array | None = None,
               memory_padding_mask: Array | None = None,
               memory_attention_mask: Array | None = None, query_pos: Array | None = None,
               memory_pos: Array | None = None, causal: bool = False,
               self_attention_variant: str | None = None, deterministic: bool = True,
               decode: bool = False) -> Array | tuple[Array, Array]:
    """Same arguments as `TransformerBlock.__call__`.

    Returns:
      [B, T, D], or ([B, T, D], [L, B, T, D]) with `return_all_layers`.
    """
    layer_cls = _StackLayer
    if uses_remat(self.remat_policy):
      layer_cls = nn.remat(layer_cls, policy=remat_policy_by_name(self.remat_policy),
                           prevent_cse=not self.scan_layers)
    layer_options = dict(
        self.block_settings(), causal=causal, self_attention_variant=self_attention_variant,
        deterministic=deterministic, decode=decode, keep_output=self.return_all_layers)
    inputs = (memory, padding_mask, attention_mask, memory_padding_mask,
              memory_attention_mask, query_pos, memory_pos)
    if self.scan_layers:
      scanned = nn.scan(
          layer_cls, variable_axes={"params": 0, "cache": 0},
          split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * len(inputs),
          length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x, all_layers = scanned(**layer_options, name="layers")(x, *inputs)
    else:
      outputs = []
      for i in range(self.num_layers):
        x, output = layer_cls(**layer_options, name=f"layers_{i}")(x, *inputs)
        outputs.append(output)
      all_layers = jnp.stack(outputs) if self.return_all_layers else None
    return (x, all_layers) if self.return_all_layers else x
