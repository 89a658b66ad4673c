"""Language-modelling objectives: BERT masked-LM masking and loss, autoregressive LM loss.

Losses run in float32 whatever the logits' dtype (bf16 log-softmax collapses training).

- `mask_tokens`: BERT / ALBEF / BLIP masking. Each eligible token (not pad, not a special
  token) is selected with probability `mask_prob` (independent Bernoulli draws, as the
  Hugging Face collator and ALBEF do); a selected token becomes [MASK] with probability 0.8,
  a uniformly random id in [0, vocab_size) with 0.1, and stays itself with 0.1.
- `masked_lm_loss`: mean cross-entropy over the selected positions.
- `causal_lm_loss`: next-token cross-entropy (logits at t predict the token at t + 1) with
  label smoothing, averaged over real target tokens; equal to
  `torch.nn.functional.cross_entropy(logits[:, :-1], labels[:, 1:], label_smoothing=eps,
  ignore_index=-100)` as Hugging Face `BlipTextLMHeadModel` computes it, where the smoothing
  mass `eps` is spread uniformly over all V classes, the target included:
  `loss = (1 - eps) * (-log p_target) + eps * mean_j(-log p_j)`.
"""
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


class MaskedTokens(NamedTuple):
  """inputs [B, L] int32 (ids after masking); labels [B, L] int32 (original ids);
  weights [B, L] float32 (1 where a token was selected for prediction)."""
  inputs: jax.Array
  labels: jax.Array
  weights: jax.Array


def mask_tokens(rng: jax.Array, token_ids: jax.Array, *, vocab_size: int, mask_id: int,
                special_ids: Sequence[int], pad_id: int = 0, mask_prob: float = 0.15,
                mask_token_prob: float = 0.8, random_token_prob: float = 0.1) -> MaskedTokens:
  """BERT masking of token_ids [B, L]; pad and `special_ids` ([CLS], [SEP], ...) never selected."""
  select_rng, action_rng, random_id_rng = jax.random.split(rng, 3)
  eligible = token_ids != pad_id
  for special_id in special_ids:
    eligible &= token_ids != special_id
  selected = jax.random.bernoulli(select_rng, mask_prob, token_ids.shape) & eligible
  action = jax.random.uniform(action_rng, token_ids.shape)
  to_mask = selected & (action < mask_token_prob)
  to_random = selected & (action >= mask_token_prob) & (
      action < mask_token_prob + random_token_prob)
  random_ids = jax.random.randint(random_id_rng, token_ids.shape, 0, vocab_size,
                                  dtype=token_ids.dtype)
  inputs = jnp.where(to_mask, jnp.asarray(mask_id, token_ids.dtype), token_ids)
  inputs = jnp.where(to_random, random_ids, inputs)
  return MaskedTokens(inputs=inputs, labels=token_ids, weights=selected.astype(jnp.float32))


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array,
                           label_smoothing: float = 0.0) -> jax.Array:
  """Per-position cross-entropy, logits [..., V], labels [...] -> [...] float32.

  Targets are `(1 - label_smoothing) * onehot + label_smoothing / V` (torch's convention).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if label_smoothing == 0.0:
    return nll
  uniform_nll = -jnp.mean(log_probs, axis=-1)
  return (1.0 - label_smoothing) * nll + label_smoothing * uniform_nll


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """sum(values * weights) / max(sum(weights), 1): zero, not NaN, when nothing counts."""
  weights = weights.astype(jnp.float32)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def masked_lm_loss(logits: jax.Array, labels: jax.Array,
                   weights: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked-LM loss: logits [B, L, V], labels/weights [B, L] from `mask_tokens`.

  Returns (mean CE over selected positions, {"mlm_loss", "mlm_accuracy"}).
  """
  loss = _weighted_mean(smoothed_cross_entropy(logits, labels), weights)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return loss, {"mlm_loss": loss, "mlm_accuracy": _weighted_mean(correct, weights)}


def causal_lm_loss(logits: jax.Array, token_ids: jax.Array, target_mask: jax.Array,
                   label_smoothing: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-token loss: logits [B, L, V] at t predict token_ids [B, L] at t + 1.

  target_mask [B, L] marks the tokens that count as targets (1 for real tokens; 0 for padding
  and, for prompted captioning, the prompt); position 0 (the BOS) is never a target.
  Returns (mean smoothed CE over counted targets, {"lm_loss", "lm_accuracy"}).
  """
  shifted_logits = logits[:, :-1]
  targets = token_ids[:, 1:]
  weights = target_mask[:, 1:]
  loss = _weighted_mean(smoothed_cross_entropy(shifted_logits, targets, label_smoothing),
                        weights)
  correct = (jnp.argmax(shifted_logits, axis=-1) == targets).astype(jnp.float32)
  return loss, {"lm_loss": loss, "lm_accuracy": _weighted_mean(correct, weights)}
