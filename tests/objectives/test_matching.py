"""Hard-negative sampling follows the masked softmax and never returns a positive; ITM loss."""
import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax.objectives import matching

NUM_DRAWS = 20000


def _draws(sim_i2t: np.ndarray, sim_t2i: np.ndarray, image_ids=None) -> matching.HardNegatives:
  keys = jax.random.split(jax.random.key(0), NUM_DRAWS)
  sample = jax.jit(jax.vmap(lambda k: matching.sample_hard_negatives(
      k, jnp.asarray(sim_i2t), jnp.asarray(sim_t2i),
      None if image_ids is None else jnp.asarray(image_ids))))
  return jax.tree.map(np.asarray, sample(keys))  # each [NUM_DRAWS, B]


def _expected_probs(sim: np.ndarray, excluded: np.ndarray) -> np.ndarray:
  weights = np.exp(sim - sim.max(1, keepdims=True))
  weights = weights / weights.sum(1, keepdims=True) + matching.BLIP_WEIGHT_FLOOR
  weights[excluded] = 0
  return weights / weights.sum(1, keepdims=True)


def _frequencies(indices: np.ndarray, size: int) -> np.ndarray:
  return np.stack([np.bincount(indices[:, b], minlength=size) for b in range(size)]) / NUM_DRAWS


def test_hard_negatives_follow_softmax_and_skip_positives():
  rng = np.random.default_rng(0)
  sim_i2t, sim_t2i = (3 * rng.normal(size=(5, 5))).astype(np.float32), rng.normal(size=(5, 5))
  sim_i2t[np.arange(5), np.arange(5)] = 50.0  # positives dominate the softmax, still never drawn
  draws = _draws(sim_i2t, sim_t2i.astype(np.float32))
  diagonal = np.eye(5, dtype=bool)
  for indices, sim in ((draws.text_for_image, sim_i2t), (draws.image_for_text, sim_t2i)):
    assert (indices != np.arange(5)[None]).all()
    np.testing.assert_allclose(_frequencies(indices, 5), _expected_probs(sim, diagonal),
                               atol=0.015)


def test_hard_negatives_exclude_same_image():
  rng = np.random.default_rng(1)
  ids = np.array([0, 0, 1, 2, 2, 2])
  sim_i2t, sim_t2i = rng.normal(size=(2, 6, 6)).astype(np.float32)
  draws = _draws(sim_i2t, sim_t2i, ids)
  same = ids[:, None] == ids[None, :]
  for indices, sim in ((draws.text_for_image, sim_i2t), (draws.image_for_text, sim_t2i)):
    assert (ids[indices] != ids[None, :]).all()
    np.testing.assert_allclose(_frequencies(indices, 6), _expected_probs(sim, same), atol=0.015)


def test_negative_pairs_order():
  text_ids = jnp.arange(3)[:, None] * jnp.ones((3, 4), jnp.int32)
  text_mask = jnp.ones((3, 4), jnp.int32)
  images = 10 + jnp.arange(3)[:, None, None] * jnp.ones((3, 2, 5))
  negatives = matching.HardNegatives(jnp.asarray([2, 0, 1]), jnp.asarray([1, 2, 0]))
  ids, mask, embeds = matching.negative_pairs(negatives, text_ids, text_mask, images)
  assert ids.shape == (6, 4) and mask.shape == (6, 4) and embeds.shape == (6, 2, 5)
  np.testing.assert_array_equal(ids[:, 0], [0, 1, 2, 2, 0, 1])
  np.testing.assert_array_equal(embeds[:, 0, 0], [11, 12, 10, 10, 11, 12])


def test_itm_loss_counts_positives_and_negatives():
  rng = np.random.default_rng(2)
  positive, negative = rng.normal(size=(4, 2)), rng.normal(size=(8, 2))
  loss, metrics = matching.image_text_matching_loss(jnp.asarray(positive), jnp.asarray(negative))
  logits = np.concatenate([positive, negative])
  labels = np.array([1] * 4 + [0] * 8)
  log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(loss, -log_probs[np.arange(12), labels].mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["itm_accuracy"], (logits.argmax(1) == labels).mean())
  perfect = matching.image_text_matching_loss(jnp.tile(jnp.asarray([[-9.0, 9.0]]), (4, 1)),
                                              jnp.tile(jnp.asarray([[9.0, -9.0]]), (8, 1)))
  assert float(perfect[1]["itm_accuracy"]) == 1.0 and float(perfect[0]) < 1e-6
