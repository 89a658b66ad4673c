"""BLEU and CIDEr-D: hand-computed cases and parity with pycocoevalcap."""
import math

import numpy as np
import pytest

from vlp_jax.evaluators import caption_metrics as cm


def test_tokenize_lowercases_and_strips_punctuation():
  assert cm.tokenize_caption("A Man's dog,  running!  (Fast)") == "a mans dog running fast"


def test_identical_candidate_and_references_give_bleu_one():
  refs = {1: ["a cat sits on the mat"], 2: ["two dogs play in the park"]}
  cands = {1: "a cat sits on the mat", 2: "two dogs play in the park"}
  np.testing.assert_allclose(cm.corpus_bleu(refs, cands), [1.0] * 4, atol=1e-8)


def test_bleu_hand_computed_precisions():
  # unigram 3/4, bigram 2/3, trigram 1/2, 4-gram 0/1, same length: no brevity penalty.
  b1, b2, b3, b4 = cm.corpus_bleu({0: ["a b c e"]}, {0: "a b c d"})
  assert b1 == pytest.approx(0.75)
  assert b2 == pytest.approx(math.sqrt(0.75 * 2 / 3))
  assert b3 == pytest.approx((0.75 * 2 / 3 * 0.5)**(1 / 3))
  assert b4 < 1e-3


def test_bleu_clips_repeated_words():
  assert cm.corpus_bleu({0: ["the cat"]}, {0: "the the the"})[0] == pytest.approx(1 / 3, rel=1e-6)


def test_bleu_brevity_penalty_uses_closest_reference_length():
  # Closest reference has 3 tokens: BP = exp(1 - 3/2).
  b1 = cm.corpus_bleu({0: ["a b c d", "a b c"]}, {0: "a b"})[0]
  assert b1 == pytest.approx(math.exp(1 - 3 / 2), rel=1e-6)
  # Distances tie (2 and 4 tokens vs 3): the shorter one is taken, so no penalty.
  b1 = cm.corpus_bleu({0: ["a b", "a b c d"]}, {0: "a b c"})[0]
  assert b1 == pytest.approx(1.0, rel=1e-6)


def test_cider_hand_computed():
  # Every n-gram has idf log(2 / 1), which cancels in the cosines.
  refs = {1: ["a b"], 2: ["c d"]}
  # Perfect match: unigram and bigram cosines 1, no 3-/4-grams: (1 + 1 + 0 + 0) / 4 * 10.
  score, per_image = cm.cider_d(refs, {1: "a b", 2: "c d"})
  assert score == pytest.approx(5.0)
  assert per_image == {1: pytest.approx(5.0), 2: pytest.approx(5.0)}
  # "a a b" vs "a b": clipped unigram cosine 2/sqrt(10), bigram 1/sqrt(2), length gap of 1.
  _, per_image = cm.cider_d(refs, {1: "a a b", 2: "c d"})
  expected = (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72) * 10
  assert per_image[1] == pytest.approx(expected)


def test_cider_single_image_is_zero():
  # With one image every reference n-gram has idf log(1/1) = 0.
  assert cm.cider_d({0: ["a cat"]}, {0: "a cat"})[0] == 0.0


def test_caption_metrics_names_and_mismatched_ids():
  metrics = cm.caption_metrics({0: ["a cat"], 1: ["a dog"]}, {0: "a cat", 1: "a dog"})
  assert set(metrics) == {"caption/bleu1", "caption/bleu2", "caption/bleu3",
                          "caption/bleu4", "caption/cider"}
  with pytest.raises(ValueError):
    cm.caption_metrics({0: ["a cat"]}, {1: "a cat"})


def _random_corpus(seed: int, num_images: int = 25):
  rng = np.random.default_rng(seed)
  vocab = "a the cat dog man woman sits on mat grass red blue two of with plays ball".split()

  def sentence():
    return " ".join(rng.choice(vocab, size=rng.integers(1, 12)))

  refs = {i: [sentence() for _ in range(rng.integers(1, 6))] for i in range(num_images)}
  cands = {i: sentence() for i in range(num_images)}
  cands[0] = refs[0][0]  # one exact hit
  return refs, cands


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_pycocoevalcap(seed):
  bleu_module = pytest.importorskip("pycocoevalcap.bleu.bleu")
  cider_module = pytest.importorskip("pycocoevalcap.cider.cider")
  refs, cands = _random_corpus(seed)
  reference_bleu, _ = bleu_module.Bleu(4).compute_score(
      refs, {i: [c] for i, c in cands.items()}, verbose=0)
  reference_cider, reference_per_image = cider_module.Cider().compute_score(
      refs, {i: [c] for i, c in cands.items()})
  np.testing.assert_allclose(cm.corpus_bleu(refs, cands, tokenize=False), reference_bleu,
                             rtol=0, atol=1e-6)
  score, per_image = cm.cider_d(refs, cands, tokenize=False)
  assert score == pytest.approx(reference_cider, abs=1e-6)
  np.testing.assert_allclose([per_image[i] for i in refs], reference_per_image, atol=1e-6)
