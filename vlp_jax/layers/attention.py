"""Multi-head attention for self, cross and causal attention, with masks and a KV cache.

Layout: activations are [B, T, H, Dh] from the projections to the output projection; the
core (`dot_product_attention`) works in [B, H, T, Dh]. Masks are boolean, True =
attend. Logits and softmax run in float32 whatever the compute `dtype` is.

Parameters (HF PyTorch `Linear` weight W [D_out, D_in] converts as shown):
  query/kernel [Dq, H, Dh]  = W.T.reshape(Dq, H, Dh)    query/bias [H, Dh]
  key/kernel   [Dkv, H, Dh] = W.T.reshape(Dkv, H, Dh)   key/bias   [H, Dh]
  value/kernel [Dkv, H, Dh] = W.T.reshape(Dkv, H, Dh)   value/bias [H, Dh]
  out/kernel   [H, Dh, Do]  = W.T.reshape(H, Dh, Do)    out/bias   [Do]

Incremental decoding (`decode=True`, mutable 'cache' collection):
  * self-attention keeps `cached_key` / `cached_value` [B, L, H, Dh] and `cache_index`;
    each call appends its T new tokens at `cache_index` and attends causally to the cache.
  * cross-attention keeps the projected memory `cached_key` / `cached_value` [B, S, H, Dh];
    they are computed once, when the cache is created, and reused by every later step.
  The cache is created by the first `decode=True` call that finds none: run it once with
  `create_decode_cache` on full-length [B, L] queries (this sizes the self-attention cache)
  and the real memory (this fills the cross-attention cache with the current params).
"""
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.layers.common import (BATCH_LENGTH_EMBED, BATCH_LENGTH_HEADS_KV, Array, Dtype,
                                   Initializer, default_bias_init, default_kernel_init)


def combine_masks(key_padding_mask: Array | None = None,
                  mask: Array | None = None) -> Array | None:
  """Boolean attention mask broadcastable to [B, H, Tq, Tk] (True = attend), or None.

  Args:
    key_padding_mask: [B, Tk] bool, True at real keys.
    mask: bool, broadcastable to [B, H, Tq, Tk].
  """
  result = None
  if key_padding_mask is not None:
    result = jnp.asarray(key_padding_mask, bool)[:, None, None, :]
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    result = mask if result is None else jnp.logical_and(result, mask)
  return result


def dot_product_attention(query: Array, key: Array, value: Array, mask: Array | None,
                          *, causal: bool = False, dropout_rate: float = 0.0,
                          dropout_rng: jax.Array | None = None) -> Array:
  """Scaled dot-product attention, optionally with dropout on the probabilities.

  The numerics of `jax.nn.dot_product_attention` (float32 logits and softmax, masked logits
  set to a large negative number, so fully masked rows stay finite). The core runs in
  [B, H, T, Dh]: one transpose of q/k/v/output each (small next to the [B, H, Tq, Tk]
  probabilities) and plain batched GEMMs; `jax.nn.dot_product_attention` copied the
  probabilities and their gradient several times per layer on XLA CPU.

  Args:
    query: [B, Tq, H, Dh]; key, value: [B, Tk, H, Dh].
    mask: bool broadcastable to [B, H, Tq, Tk] or None.
    dropout_rate, dropout_rng: dropout on the probabilities (the rng only when rate > 0).
  Returns:
    [B, Tq, H, Dh] in `value.dtype`.
  """
  query = query * jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
  query, key, value = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))
  logits = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32)
  if causal:
    causal_mask = jnp.tril(jnp.ones((query.shape[2], key.shape[2]), bool))
    mask = causal_mask if mask is None else jnp.logical_and(mask, causal_mask)
  if mask is not None:
    large_negative = -0.7 * jnp.finfo(jnp.float32).max
    logits = jnp.where(mask, logits, large_negative)
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  context = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(value.dtype), value)
  return jnp.swapaxes(context, 1, 2)


class HeadProjection(nn.Module):
  """Dense layer whose kernel is created at its final N-D shape, e.g. [D, H, Dh].

  Contracts the last `num_contracted` axes of the input with the leading kernel axes.
  The kernel is initialised as a flat [prod(in), prod(out)] matrix and reshaped, so its
  statistics equal a 2-D Dense layer's, while its logical axis names always apply to an
  array of the right rank (flax's DenseGeneral constrains the flat matrix, which fails
  under a global mesh).

  Attributes:
    out_shape: trailing output axes, e.g. (H, Dh) or (Do,).
    num_contracted: input axes contracted: 1 for [.., D] inputs, 2 for [.., H, Dh].
    axis_names: logical names of the kernel axes (contracted axes first); the bias takes
      the output axes' names.
  """
  out_shape: tuple[int, ...]
  num_contracted: int
  axis_names: tuple[str, ...]
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = default_bias_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., *in_shape] -> [..., *out_shape]."""
    in_shape = x.shape[x.ndim - self.num_contracted:]
    flat_shape = (math.prod(in_shape), math.prod(self.out_shape))

    def init_kernel(rng: jax.Array, shape: tuple[int, ...], dtype: Dtype) -> Array:
      return self.kernel_init(rng, flat_shape, dtype).reshape(shape)

    kernel = self.param("kernel", nn.with_logical_partitioning(init_kernel, self.axis_names),
                        in_shape + self.out_shape, self.param_dtype)
    # One 2-D GEMM [N, K] x [K, F]: with the leading axes merged, the weight gradient is a
    # plain transposed GEMM too (3-D operands made XLA CPU copy the output gradient first).
    leading = x.shape[:x.ndim - self.num_contracted]
    y = jnp.dot(x.reshape(-1, flat_shape[0]).astype(self.dtype),
                kernel.reshape(flat_shape).astype(self.dtype))
    y = y.reshape(leading + self.out_shape)
    if self.use_bias:
      bias_names = self.axis_names[self.num_contracted:]
      bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, bias_names),
                        self.out_shape, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class MultiHeadAttention(nn.Module):
  """Multi-head attention: self (`inputs_kv=None`), cross, causal; KV cache for decoding.

  Attributes:
    num_heads: H.
    head_dim: Dh; defaults to Dq // H.
    out_features: Do; defaults to Dq (the query width).
    use_bias: biases on the four projections.
    dropout_rate: dropout on the attention probabilities.
  """
  num_heads: int
  head_dim: int | None = None
  out_features: int | None = None
  use_bias: bool = True
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init
  bias_init: Initializer = default_bias_init

  def _projection(self, name: str, head_dim: int) -> HeadProjection:
    return HeadProjection(
        out_shape=(self.num_heads, head_dim), num_contracted=1,
        axis_names=("embed", "heads", "kv"), use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init,
        bias_init=self.bias_init, name=name)

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array | None = None, *,
               key_padding_mask: Array | None = None, mask: Array | None = None,
               causal: bool = False, query_pos: Array | None = None,
               key_pos: Array | None = None, deterministic: bool = True,
               decode: bool = False) -> Array:
    """Attends `inputs_q` [B, Tq, Dq] to `inputs_kv` [B, Tk, Dkv] (or to itself).

    Args:
      inputs_q: [B, Tq, Dq] queries.
      inputs_kv: [B, Tk, Dkv] memory for cross-attention; None for self-attention.
      key_padding_mask: [B, Tk] bool, True at real keys. In self-attention decoding it
        covers the whole cache, [B, L].
      mask: bool broadcastable to [B, H, Tq, Tk], True = attend.
      causal: query i attends to keys <= i (implied for self-attention decoding).
      query_pos: [B or 1, Tq, Dq] added to the queries (and, in self-attention, to the
        keys) but not to the values, DETR style.
      key_pos: [B or 1, Tk, Dkv] added to the cross-attention keys, not to the values.
      deterministic: disables attention dropout.
      decode: incremental decoding with the 'cache' collection (see module docstring).
    Returns:
      [B, Tq, Do].
    """
    is_self_attention = inputs_kv is None
    query_width = inputs_q.shape[-1]
    if self.head_dim is None and query_width % self.num_heads:
      raise ValueError(f"query width {query_width} is not divisible by {self.num_heads} heads; "
                       "set head_dim")
    head_dim = self.head_dim or query_width // self.num_heads
    queries_in = inputs_q if query_pos is None else inputs_q + query_pos
    query = self._projection("query", head_dim)(queries_in)
    key_module = self._projection("key", head_dim)
    value_module = self._projection("value", head_dim)

    if is_self_attention:
      keys_in, values_in = queries_in, inputs_q
    else:
      keys_in = inputs_kv if key_pos is None else inputs_kv + key_pos
      values_in = inputs_kv

    if decode and not is_self_attention:
      key, value = self._cached_memory_projection(key_module, value_module, keys_in,
                                                  values_in)
    else:
      key, value = key_module(keys_in), value_module(values_in)
    query = nn.with_logical_constraint(query, BATCH_LENGTH_HEADS_KV)
    key = nn.with_logical_constraint(key, BATCH_LENGTH_HEADS_KV)
    value = nn.with_logical_constraint(value, BATCH_LENGTH_HEADS_KV)

    if decode and is_self_attention:
      if self.has_variable("cache", "cached_key"):
        key, value, decode_mask = self._append_to_cache(key, value)
        mask = decode_mask if mask is None else jnp.logical_and(mask, decode_mask)
        causal = False  # the decode mask is already causal
      else:
        self._create_self_attention_cache(key, value)
        causal = True
    attention_mask = combine_masks(key_padding_mask, mask)

    dropout_rate = 0.0 if deterministic else self.dropout_rate
    context = dot_product_attention(
        query, key, value, attention_mask, causal=causal, dropout_rate=dropout_rate,
        dropout_rng=self.make_rng("dropout") if dropout_rate > 0.0 else None)
    context = nn.with_logical_constraint(context, BATCH_LENGTH_HEADS_KV)

    out = HeadProjection(
        out_shape=(self.out_features or query_width,), num_contracted=2,
        axis_names=("heads", "kv", "embed"), use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init,
        bias_init=self.bias_init, name="out")(context)
    return nn.with_logical_constraint(out, BATCH_LENGTH_EMBED)

  def _cached_memory_projection(self, key_module: HeadProjection, value_module: HeadProjection,
                                keys_in: Array, values_in: Array) -> tuple[Array, Array]:
    """Cross-attention keys/values [B, S, H, Dh], projected once and then read from cache."""
    if self.has_variable("cache", "cached_key"):
      return (self.get_variable("cache", "cached_key"),
              self.get_variable("cache", "cached_value"))
    key, value = key_module(keys_in), value_module(values_in)
    self.variable("cache", "cached_key", lambda: key)
    self.variable("cache", "cached_value", lambda: value)
    return key, value

  def _create_self_attention_cache(self, key: Array, value: Array) -> None:
    """Zero cache [B, L, H, Dh] sized from full-length keys/values, and `cache_index` = 0."""
    self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))

  def _append_to_cache(self, key: Array, value: Array) -> tuple[Array, Array, Array]:
    """Writes T new keys/values [B, T, H, Dh] at `cache_index`.

    Returns the whole cache [B, L, H, Dh] twice and the causal decode mask [1, 1, T, L].
    """
    cached_key = self.variable("cache", "cached_key")
    cached_value = self.variable("cache", "cached_value")
    cache_index = self.variable("cache", "cache_index")
    num_new, cache_length = key.shape[1], cached_key.value.shape[1]
    index = cache_index.value
    start = (0, index, 0, 0)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value,
                                                    key.astype(cached_key.value.dtype), start)
    cached_value.value = jax.lax.dynamic_update_slice(
        cached_value.value, value.astype(cached_value.value.dtype), start)
    cache_index.value = index + num_new
    query_positions = index + jnp.arange(num_new)[:, None]
    decode_mask = jnp.arange(cache_length)[None, :] <= query_positions
    return cached_key.value, cached_value.value, decode_mask[None, None]


def create_decode_cache(module: nn.Module, variables: Mapping[str, Any], *args: Any,
                        method: Callable[..., Any] | str | None = None,
                        **kwargs: Any) -> Any:
  """Creates the 'cache' collection for incremental decoding with the given params.

  Runs `module.apply(variables, *args, decode=True, **kwargs)` with a mutable 'cache' and
  no existing cache: pass full-length queries [B, L] (they size the self-attention caches)
  and the real memory (its keys/values fill the cross-attention caches).
  """
  variables = {name: value for name, value in variables.items() if name != "cache"}
  apply = functools.partial(module.apply, variables, mutable=["cache"])
  if method is not None:
    apply = functools.partial(apply, method=method)
  _, state = apply(*args, decode=True, **kwargs)
  return state["cache"]
