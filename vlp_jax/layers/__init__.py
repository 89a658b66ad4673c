"""Shared flax.linen building blocks: attention, MLP, transformer blocks, embeddings, positions."""
from vlp_jax.layers.attention import (MultiHeadAttention, combine_masks, dot_product_attention,
                                      create_decode_cache)
from vlp_jax.layers.common import layer_norm
from vlp_jax.layers.embeddings import PatchEmbedding, TextEmbeddings
from vlp_jax.layers.mlp import ACTIVATIONS, MLP, activation_fn
from vlp_jax.layers.position import (grid_size_for, resample_position_embedding, sine_encoding,
                                     sine_position_encoding_1d, sine_position_encoding_2d)
from vlp_jax.layers.transformer import (AttentionSublayer, FeedForwardSublayer,
                                        TransformerBlock, TransformerBlockSettings,
                                        TransformerStack)

__all__ = [
    "ACTIVATIONS", "MLP", "AttentionSublayer", "FeedForwardSublayer", "MultiHeadAttention",
    "PatchEmbedding", "TextEmbeddings", "TransformerBlock", "TransformerBlockSettings",
    "TransformerStack", "activation_fn", "combine_masks", "dot_product_attention",
    "create_decode_cache", "grid_size_for", "layer_norm", "resample_position_embedding",
    "sine_encoding", "sine_position_encoding_1d", "sine_position_encoding_2d",
]
