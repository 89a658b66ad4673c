"""Retrieval recalls on hand-made matrices and the ITC -> ITM re-ranking."""
import numpy as np
import pytest

from vlp_jax.evaluators import retrieval_metrics as rm

TEXT_TO_IMAGE = np.array([0, 0, 1, 1, 2, 2])


def test_ranks_on_hand_made_matrix():
  scores = np.array([
      [0.9, 0.1, 0.8, 0.0, 0.0, 0.0],   # image 0: own text 0 first -> rank 0
      [0.5, 0.6, 0.1, 0.4, 0.3, 0.0],   # image 1: own texts at 0.1 / 0.4 -> best rank 2
      [0.2, 0.1, 0.3, 0.0, 0.1, 0.9],   # image 2: own text 5 first -> rank 0
  ])
  image_ranks, text_ranks = rm.retrieval_ranks(scores, TEXT_TO_IMAGE)
  np.testing.assert_array_equal(image_ranks, [0, 2, 0])
  # Columns: text 1's image 0 (0.1) ties image 2 and wins on index, behind image 1: rank 1;
  # text 2's image 1 (0.1) comes after images 0 (0.8) and 2 (0.3): rank 2.
  np.testing.assert_array_equal(text_ranks, [0, 1, 2, 0, 1, 0])
  metrics = rm.retrieval_metrics(scores, TEXT_TO_IMAGE, ks=(1, 2, 3))
  assert metrics["retrieval/img2txt_r1"] == pytest.approx(2 / 3)
  assert metrics["retrieval/img2txt_r2"] == pytest.approx(2 / 3)
  assert metrics["retrieval/img2txt_r3"] == 1.0
  assert metrics["retrieval/txt2img_r1"] == pytest.approx(3 / 6)
  assert metrics["retrieval/txt2img_r2"] == pytest.approx(5 / 6)
  assert metrics["retrieval/txt2img_r3"] == 1.0
  assert metrics["retrieval/img2txt_r_mean"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
  assert metrics["retrieval/r_mean"] == pytest.approx(
      (metrics["retrieval/img2txt_r_mean"] + metrics["retrieval/txt2img_r_mean"]) / 2)


def test_ties_rank_lower_index_first():
  scores = np.zeros((3, 6))
  image_ranks, text_ranks = rm.retrieval_ranks(scores, TEXT_TO_IMAGE)
  np.testing.assert_array_equal(image_ranks, [0, 2, 4])
  np.testing.assert_array_equal(text_ranks, [0, 0, 1, 1, 2, 2])


def test_default_metric_names_and_separate_directions():
  rng = np.random.default_rng(0)
  text_to_image = np.repeat(np.arange(12), 5)
  img2txt = rng.normal(size=(12, 60))
  perfect_txt2img = np.eye(12)[text_to_image]   # every text's own image first
  metrics = rm.retrieval_metrics(img2txt, text_to_image, perfect_txt2img)
  assert sorted(metrics) == sorted(
      [f"retrieval/{d}_r{k}" for d in ("img2txt", "txt2img") for k in (1, 5, 10)]
      + ["retrieval/img2txt_r_mean", "retrieval/txt2img_r_mean", "retrieval/r_mean"])
  assert metrics["retrieval/txt2img_r1"] == 1.0
  # Independent count: texts scoring above the image's best own text.
  image_ranks = np.array([np.sum(row > row[text_to_image == i].max())
                          for i, row in enumerate(img2txt)])
  for k in (1, 5, 10):
    assert metrics[f"retrieval/img2txt_r{k}"] == pytest.approx(np.mean(image_ranks < k))
  assert metrics["retrieval/img2txt_r1"] < metrics["retrieval/img2txt_r10"]


def test_query_without_ground_truth_is_an_error():
  with pytest.raises(ValueError):
    rm.retrieval_ranks(np.zeros((3, 2)), np.array([0, 1]))


def test_rerank_fixes_planted_wrong_itc_order():
  # ITC puts each image's own texts behind another image's text; ITM knows better.
  itc = np.array([
      [0.5, 0.4, 0.6, 0.1, 0.0, 0.0],
      [0.7, 0.1, 0.5, 0.6, 0.0, 0.2],
      [0.1, 0.0, 0.2, 0.0, 0.1, 0.15],
  ], np.float32)
  calls = []

  def itm(images, texts):
    calls.append(len(images))
    return np.where(TEXT_TO_IMAGE[texts] == images, 1.0, -1.0)

  before = rm.retrieval_metrics(itc, TEXT_TO_IMAGE, ks=(1,))
  assert before["retrieval/img2txt_r1"] < 1.0 and before["retrieval/txt2img_r1"] < 1.0
  img2txt, txt2img = rm.rerank_with_itm(itc, itm, k=3, batch_size=4)
  after = rm.retrieval_metrics(img2txt, TEXT_TO_IMAGE, txt2img, ks=(1,))
  assert after["retrieval/img2txt_r1"] == 1.0 and after["retrieval/txt2img_r1"] == 1.0
  # 3 images x top-3 texts + 6 texts x top-3 images, in batches of at most 4.
  assert sum(calls) == 9 + 18 and max(calls) <= 4
  # Image 0's top-3 texts by ITC: 2, 0, 1 -> ITM + ITC; the rest keep the fill value.
  np.testing.assert_allclose(img2txt[0], [1.5, 1.4, -0.4, -100, -100, -100], rtol=1e-6)
  # Text 5's top-3 images by ITC: 2 (0.15), 1 (0.2)... i.e. 1, 2, 0.
  np.testing.assert_allclose(txt2img[5], [-1.0, -0.8, 1.15], rtol=1e-6)
