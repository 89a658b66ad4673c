"""Token embeddings (BERT style, with a tied output head) and ViT patch embeddings.

TextEmbeddings params (HF BERT `embeddings.*` copy directly, nn.Embedding weights as is):
  word_embeddings/embedding [V, D] (`vocab`, `embed`)
  position_embeddings/embedding [P, D] (None, `embed`)
  token_type_embeddings/embedding [S, D] (None, `embed`)   (if type_vocab_size > 0)
  layer_norm/{scale, bias} [D]
PatchEmbedding params (HF Conv2d weight W [D, C, p, p] converts as W.transpose(2, 3, 1, 0)):
  projection/kernel [p, p, C, D] (`conv_height`, `conv_width`, `conv_in`, `conv_out`)
  projection/bias [D] (`conv_out`)
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.layers.attention import HeadProjection
from vlp_jax.layers.common import (BATCH_LENGTH_EMBED, Array, Dtype, Initializer,
                                   default_bias_init, default_embedding_init,
                                   default_kernel_init, layer_norm)


class TextEmbeddings(nn.Module):
  """word + learned position [+ token type] embeddings -> LayerNorm -> dropout.

  Attributes:
    vocab_size: V.
    hidden_size: D.
    max_length: P, the number of learned positions.
    type_vocab_size: number of segment types; 0 disables token type embeddings.
  """
  vocab_size: int
  hidden_size: int
  max_length: int
  type_vocab_size: int = 0
  layer_norm_epsilon: float = 1e-12
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  embedding_init: Initializer = default_embedding_init

  def setup(self) -> None:
    def table(num_embeddings: int, first_axis: str | None, name: str) -> nn.Embed:
      return nn.Embed(
          num_embeddings, self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
          embedding_init=nn.with_logical_partitioning(self.embedding_init,
                                                      (first_axis, "embed")),
          name=name)

    self.word_embeddings = table(self.vocab_size, "vocab", "word_embeddings")
    self.position_embeddings = table(self.max_length, None, "position_embeddings")
    if self.type_vocab_size > 0:
      self.token_type_embeddings = table(self.type_vocab_size, None, "token_type_embeddings")
    self.layer_norm = layer_norm(self.layer_norm_epsilon, self.dtype, self.param_dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, input_ids: Array, *, token_type_ids: Array | None = None,
               position_ids: Array | None = None, deterministic: bool = True) -> Array:
    """Embeds token ids.

    Args:
      input_ids: [B, T] int.
      token_type_ids: [B, T] int segment ids (zeros if None and types are enabled).
      position_ids: [B or 1, T] int; defaults to 0..T-1 (pass offsets when decoding).
    Returns:
      [B, T, D].
    """
    if position_ids is None:
      position_ids = jnp.arange(input_ids.shape[-1])[None, :]
    x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
    if self.type_vocab_size > 0:
      if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
      x = x + self.token_type_embeddings(token_type_ids)
    elif token_type_ids is not None:
      raise ValueError("token_type_ids given but type_vocab_size=0")
    x = self.dropout(self.layer_norm(x), deterministic=deterministic)
    return nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)

  def attend(self, hidden: Array) -> Array:
    """Tied output head: hidden [B, T, D] -> logits [B, T, V] against the word embeddings."""
    return self.word_embeddings.attend(hidden)


class PatchEmbedding(nn.Module):
  """Non-overlapping patches -> linear projection: images [B, H, W, C] -> [B, N, D].

  N = (H // p) * (W // p), patches in row-major order (as a flattened [gh, gw] grid), each
  flattened as (row, column, channel) to match the [p, p, C, D] kernel.
  """
  hidden_size: int
  patch_size: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = default_bias_init

  @nn.compact
  def __call__(self, images: Array) -> Array:
    """images: [B, H, W, C] with H, W multiples of the patch size -> [B, N, D]."""
    p = self.patch_size
    batch, height, width, channels = images.shape
    if height % p or width % p:
      raise ValueError(f"image size {images.shape[1:3]} is not a multiple of patch size {p}")
    grid_h, grid_w = height // p, width // p
    patches = images.reshape(batch, grid_h, p, grid_w, p, channels).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(batch, grid_h * grid_w, p, p, channels)
    kernel_shape = (p, p, channels, self.hidden_size)

    def conv_kernel_init(rng: jax.Array, flat_shape: tuple[int, ...], dtype: Dtype) -> Array:
      # Fans of a [p, p, C, D] conv kernel, as the stride-p convolution this replaces.
      return self.kernel_init(rng, kernel_shape, dtype).reshape(flat_shape)

    # One GEMM on the conv-shaped kernel: XLA CPU ran the strided convolution's kernel
    # gradient as a dilated convolution, several times slower than the GEMM.
    x = HeadProjection((self.hidden_size,), num_contracted=3, axis_names=(
        "conv_height", "conv_width", "conv_in", "conv_out"), use_bias=self.use_bias,
                       dtype=self.dtype, param_dtype=self.param_dtype,
                       kernel_init=conv_kernel_init, bias_init=self.bias_init,
                       name="projection")(patches)
    return nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)
