"""Behavioural tests of the MLM masking, masked-LM loss and label-smoothed causal LM loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vlp_jax.objectives import language

PAD, CLS, SEP, MASK = 0, 1, 2, 3
VOCAB = 50


def _random_sentences(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
  """[CLS] w1..wn [SEP] pad.. rows with random lengths; words in [4, VOCAB)."""
  ids = np.zeros((batch, length), np.int32)
  lengths = rng.integers(3, length + 1, size=batch)
  for row, n in enumerate(lengths):
    ids[row, 0] = CLS
    ids[row, 1:n - 1] = rng.integers(4, VOCAB, size=n - 2)
    ids[row, n - 1] = SEP
  return ids


def test_mask_tokens_rates_and_specials():
  ids = _random_sentences(np.random.default_rng(0), 2048, 64)
  out = language.mask_tokens(jax.random.key(1), jnp.asarray(ids), vocab_size=VOCAB,
                             mask_id=MASK, special_ids=(CLS, SEP))
  inputs, labels, weights = map(np.asarray, out)
  eligible = ids >= 4
  selected = weights > 0
  np.testing.assert_array_equal(labels, ids)
  assert not selected[~eligible].any()
  np.testing.assert_array_equal(inputs[~selected], ids[~selected])
  assert abs(selected.sum() / eligible.sum() - 0.15) < 0.01
  n = selected.sum()
  masked = (inputs == MASK) & selected
  unchanged = (inputs == ids) & selected
  replaced = ~masked & ~unchanged & selected
  assert abs(masked.sum() / n - 0.8) < 0.02
  # A random replacement can draw the original id (1 / VOCAB of the time): count it as kept.
  assert abs(replaced.sum() / n - 0.1 * (1 - 1 / VOCAB)) < 0.012
  assert abs(unchanged.sum() / n - 0.1 * (1 + 1 / VOCAB)) < 0.012


def test_masked_lm_loss_is_mean_over_selected_positions():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  labels = rng.integers(0, 7, size=(2, 5))
  weights = np.zeros((2, 5), np.float32)
  weights[0, 1] = weights[1, 3] = weights[1, 4] = 1
  loss, metrics = language.masked_lm_loss(jnp.asarray(logits), jnp.asarray(labels),
                                          jnp.asarray(weights))
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, nll[weights > 0].mean(), rtol=1e-6)
  correct = logits.argmax(-1) == labels
  np.testing.assert_allclose(metrics["mlm_accuracy"], correct[weights > 0].mean())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_causal_lm_loss_matches_torch_cross_entropy(smoothing: float):
  rng = np.random.default_rng(3)
  ids = _random_sentences(rng, 4, 9)
  logits = (3 * rng.normal(size=(4, 9, VOCAB))).astype(np.float32)
  loss, metrics = language.causal_lm_loss(jnp.asarray(logits), jnp.asarray(ids),
                                          jnp.asarray(ids != PAD), label_smoothing=smoothing)
  labels = torch.tensor(np.where(ids == PAD, -100, ids)).long()
  expected = torch.nn.functional.cross_entropy(
      torch.tensor(logits)[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1),
      ignore_index=-100, label_smoothing=smoothing)
  np.testing.assert_allclose(float(loss), expected.item(), rtol=1e-6, atol=1e-6)
  assert float(metrics["lm_loss"]) == float(loss)


def test_causal_lm_loss_ignores_padding_and_runs_in_float32():
  rng = np.random.default_rng(4)
  ids = _random_sentences(rng, 3, 8)
  logits = rng.normal(size=(3, 8, VOCAB)).astype(np.float32)
  mask = jnp.asarray(ids != PAD)
  base, _ = language.causal_lm_loss(jnp.asarray(logits), jnp.asarray(ids), mask)
  noisy = np.where((ids == PAD)[:, 1:, None], 1e3 * rng.normal(size=logits[:, 1:].shape),
                   logits[:, :-1])
  perturbed = logits.copy()
  perturbed[:, :-1] = noisy  # change only predictions of padding targets
  changed, _ = language.causal_lm_loss(jnp.asarray(perturbed), jnp.asarray(ids), mask)
  np.testing.assert_allclose(changed, base, rtol=1e-6)
  low, _ = language.causal_lm_loss(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(ids), mask)
  assert low.dtype == jnp.float32
