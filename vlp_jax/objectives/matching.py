"""Image-text matching (ITM) with hard negatives mined from the contrastive similarities (BLIP).

For each image one negative text is drawn with probability proportional to
`softmax(sim_i2t[b, :B]) + floor` over the batch, with its own text (and, when `image_ids` are
given, every text of the same image) given weight zero; likewise one negative image per text
from `sim_t2i`. BLIP adds `floor = 1e-4` before zeroing so that every other pair stays
possible. Sampling is one vectorised `jax.random.categorical` over masked log-weights.

The ITM head then sees 3B pairs, in BLIP's order:
  positives   (text_b,              image_b)              label 1
  negatives   (text_b,              image_neg_image[b])   label 0
              (text_neg_text[b],    image_b)              label 0
`negative_pairs` gathers the inputs of the 2B negatives; `image_text_matching_loss` is the
2-class cross-entropy over all 3B with the accuracy.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

BLIP_WEIGHT_FLOOR = 1e-4


class HardNegatives(NamedTuple):
  """text_for_image [B]: index of the negative text for image b;
  image_for_text [B]: index of the negative image for text b."""
  text_for_image: jax.Array
  image_for_text: jax.Array


def negative_log_weights(sim: jax.Array, image_ids: jax.Array | None = None,
                         floor: float = BLIP_WEIGHT_FLOOR) -> jax.Array:
  """log(softmax(sim) + floor) with excluded pairs at -inf. sim [B, B] -> [B, B] float32.

  Row b excludes column b and, given image_ids [B], every column with the same image id.
  """
  sim = jax.lax.stop_gradient(sim.astype(jnp.float32))
  weights = jax.nn.softmax(sim, axis=-1) + floor
  batch_size = sim.shape[0]
  if image_ids is None:
    excluded = jnp.eye(batch_size, dtype=bool)
  else:
    excluded = image_ids[:, None] == image_ids[None, :]
  return jnp.where(excluded, -jnp.inf, jnp.log(weights))


def sample_hard_negatives(rng: jax.Array, sim_i2t: jax.Array, sim_t2i: jax.Array,
                          image_ids: jax.Array | None = None,
                          floor: float = BLIP_WEIGHT_FLOOR) -> HardNegatives:
  """One negative text per image and one negative image per text. sim_* [B, B] (in-batch
  columns of the contrastive similarities) -> indices [B] int32.

  Every row needs at least one allowed column (B >= 2, not all the batch one image).
  """
  text_rng, image_rng = jax.random.split(rng)
  text_for_image = jax.random.categorical(text_rng,
                                          negative_log_weights(sim_i2t, image_ids, floor))
  image_for_text = jax.random.categorical(image_rng,
                                          negative_log_weights(sim_t2i, image_ids, floor))
  return HardNegatives(text_for_image.astype(jnp.int32), image_for_text.astype(jnp.int32))


def negative_pairs(negatives: HardNegatives, text_ids: jax.Array, text_mask: jax.Array,
                   image_embeds: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Inputs of the 2B negative pairs in BLIP's order.

  text_ids, text_mask [B, L]; image_embeds [B, N, D] ->
  (text_ids [2B, L], text_mask [2B, L], image_embeds [2B, N, D]).
  """
  neg_text_ids = jnp.take(text_ids, negatives.text_for_image, axis=0)
  neg_text_mask = jnp.take(text_mask, negatives.text_for_image, axis=0)
  neg_images = jnp.take(image_embeds, negatives.image_for_text, axis=0)
  return (jnp.concatenate([text_ids, neg_text_ids], axis=0),
          jnp.concatenate([text_mask, neg_text_mask], axis=0),
          jnp.concatenate([neg_images, image_embeds], axis=0))


def image_text_matching_loss(positive_logits: jax.Array, negative_logits: jax.Array
                             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """2-class CE over B positives (label 1) and 2B negatives (label 0), each pair weighted equally.

  positive_logits [B, 2], negative_logits [2B, 2] -> (loss, {"itm_loss", "itm_accuracy"}).
  """
  logits = jnp.concatenate([positive_logits, negative_logits], axis=0).astype(jnp.float32)
  labels = jnp.concatenate([jnp.ones(positive_logits.shape[0], jnp.int32),
                            jnp.zeros(negative_logits.shape[0], jnp.int32)])
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return loss, {"itm_loss": loss, "itm_accuracy": accuracy}
