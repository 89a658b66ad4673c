"""Vision Transformer (ViT) patch encoder, as used by BLIP.

images [B, H, W, 3] -> patch embedding [B, N, D] -> prepend [CLS] -> + learned position
embedding (resampled bicubically when the patch grid differs from the one it was built for,
e.g. 224 px pretraining -> 384 px finetuning) -> pre-LN blocks -> final LayerNorm
-> [B, 1 + N, D].

Params, and how Hugging Face `BlipVisionModel` (`vision_model.*`) converts into them
(torch Linear W [out, in]; D width, H heads, Dh = D / H):
  patch_embedding/projection/kernel [p, p, 3, D]  <- embeddings.patch_embedding.weight.transpose(2, 3, 1, 0)
  patch_embedding/projection/bias [D]             <- embeddings.patch_embedding.bias
  class_embedding [1, 1, D]                       <- embeddings.class_embedding
  position_embedding [1, 1 + N, D]                <- embeddings.position_embedding
  encoder/layers_i/self_attention/layer_norm      <- encoder.layers.i.layer_norm1
  encoder/layers_i/self_attention/attention/{query,key,value}/kernel [D, H, Dh]
      <- self_attn.qkv.weight [3D, D]: W.reshape(3, D, D)[k].T.reshape(D, H, Dh) (k = 0, 1, 2)
     .../{query,key,value}/bias [H, Dh]            <- self_attn.qkv.bias.reshape(3, H, Dh)[k]
  encoder/layers_i/self_attention/attention/out/kernel [H, Dh, D] <- self_attn.projection.weight.T.reshape(H, Dh, D)
  encoder/layers_i/feed_forward/layer_norm        <- encoder.layers.i.layer_norm2
  encoder/layers_i/feed_forward/mlp/fc1, fc2      <- encoder.layers.i.mlp.fc1, fc2 (W.T)
  post_layernorm/{scale, bias}                    <- post_layernorm.{weight, bias}
(with `scan_layers`, `encoder/layers/...` holds the same leaves stacked on a leading [L] axis).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlp_jax.layers import (PatchEmbedding, TransformerStack, grid_size_for, layer_norm,
                            resample_position_embedding, sine_position_encoding_2d)
from vlp_jax.layers.common import BATCH_LENGTH_EMBED, Array, Dtype


class VisionTransformer(nn.Module):
  """ViT: images [B, H, W, 3] -> tokens [B, 1 + N, D] ([CLS] first), after the final LayerNorm.

  Attributes:
    image_size: the resolution the position embedding is built for (N = (image_size / p)^2).
    patch_size: p. width: D. num_layers, num_heads, mlp_dim: the pre-LN blocks.
    layer_norm_epsilon: 1e-5 in HF `BlipVisionConfig` (salesforce BLIP's timm ViT uses 1e-6).
    position_init: how the learned position embedding starts: "normal" (std 0.02, as BLIP)
      or "sincos2d" (DETR's 2-D sine encoding of the patch grid, [CLS] at 0). From scratch
      on small data the sine start gives the patches a position signal from the first step;
      the param (and its Hugging Face layout) is the same.
    position_init_scale: multiplies the "sincos2d" start (its entries have RMS 1/sqrt(2)).
      The blocks grow the patches' content far beyond it: with scale 1 a tiny BLIP's object
      tokens came out with cosine 0.99 between any two grid cells, and its captions named the
      colours and shapes but no place (see configs/blip_tiny_experiments.md).
  """
  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  layer_norm_epsilon: float = 1e-5
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat_policy: str = "none"
  scan_layers: bool = False
  position_init: str = "normal"
  position_init_scale: float = 1.0

  @nn.compact
  def __call__(self, images: Array, *, deterministic: bool = True) -> Array:
    """images: [B, H, W, 3] (H, W multiples of patch_size) -> [B, 1 + (H/p)(W/p), D]."""
    patches = PatchEmbedding(hidden_size=self.width, patch_size=self.patch_size,
                             dtype=self.dtype, param_dtype=self.param_dtype,
                             name="patch_embedding")(images)
    batch = patches.shape[0]
    class_embedding = self.param(
        "class_embedding",
        nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, None, "embed")),
        (1, 1, self.width), self.param_dtype)
    num_patches = grid_size_for(self.image_size, self.patch_size)
    position_embedding = self.param(
        "position_embedding",
        nn.with_logical_partitioning(self._position_initializer(num_patches),
                                     (None, None, "embed")),
        (1, 1 + num_patches[0] * num_patches[1], self.width), self.param_dtype)
    grid = (images.shape[1] // self.patch_size, images.shape[2] // self.patch_size)
    if grid != num_patches:
      position_embedding = resample_position_embedding(position_embedding, grid)

    class_token = jnp.broadcast_to(class_embedding, (batch, 1, self.width)).astype(patches.dtype)
    x = jnp.concatenate([class_token, patches], axis=1)
    x = (x + position_embedding.astype(x.dtype)).astype(self.dtype)
    x = nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)
    x = TransformerStack(
        num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        norm_position="pre", layer_norm_epsilon=self.layer_norm_epsilon,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype, param_dtype=self.param_dtype, remat_policy=self.remat_policy,
        scan_layers=self.scan_layers, name="encoder")(x, deterministic=deterministic)
    return layer_norm(self.layer_norm_epsilon, self.dtype, self.param_dtype,
                      name="post_layernorm")(x)

  def _position_initializer(self, grid: tuple[int, int]) -> nn.initializers.Initializer:
    if self.position_init == "normal":
      return nn.initializers.normal(stddev=0.02)
    if self.position_init != "sincos2d":
      raise ValueError(f"unknown position_init {self.position_init!r}; "
                       "known: 'normal', 'sincos2d'")

    def sincos2d(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
      del key
      patches = self.position_init_scale * sine_position_encoding_2d(grid[0], grid[1], shape[-1])
      return jnp.concatenate([jnp.zeros((1, shape[-1])), patches])[None].astype(dtype)
    return sincos2d


def vit_settings(variant: str) -> dict[str, Any]:
  """Widths of a named ViT: "B/16", "L/16" (BLIP's backbones) or "Ti/16" (tests, demos)."""
  settings = {
      "Ti/16": dict(width=192, num_layers=12, num_heads=3, mlp_dim=768),
      "B/16": dict(width=768, num_layers=12, num_heads=12, mlp_dim=3072),
      "L/16": dict(width=1024, num_layers=24, num_heads=16, mlp_dim=4096),
  }
  if variant not in settings:
    raise ValueError(f"unknown ViT variant {variant!r}; known: {sorted(settings)}")
  return dict(settings[variant], patch_size=16)
