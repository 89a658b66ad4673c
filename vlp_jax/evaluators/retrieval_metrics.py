"""Image-text retrieval: recall@k in both directions and BLIP's ITC -> ITM re-ranking.

Ranks break ties by index: among equal scores the lower image / text index ranks first.
Recalls are fractions in [0, 1].
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

RECALL_KS = (1, 5, 10)
RERANK_FILL = -100.0
# (image_indices [P], text_indices [P]) -> ITM match scores [P] for those pairs.
PairScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _rank_of_target(scores: np.ndarray, target: np.ndarray, chunk: int = 256) -> np.ndarray:
  """0-based rank of column target[q] in each row of scores [Q, N] (ties: lower index first)."""
  ranks = np.empty(scores.shape[0], np.int64)
  columns = np.arange(scores.shape[1])
  for start in range(0, scores.shape[0], chunk):
    rows = slice(start, start + chunk)
    block, block_target = scores[rows], target[rows]
    target_scores = np.take_along_axis(block, block_target[:, None], axis=1)
    tied_before = (block == target_scores) & (columns[None, :] < block_target[:, None])
    ranks[rows] = np.sum(block > target_scores, axis=1) + np.sum(tied_before, axis=1)
  return ranks


def retrieval_ranks(img2txt_scores: np.ndarray, text_to_image: np.ndarray,
                    txt2img_scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Ranks of the best ground truth: per image [N_images] and per text [N_texts].

  Args:
    img2txt_scores: [N_images, N_texts] scores used to rank texts for each image.
    text_to_image: [N_texts] index of the image each text describes.
    txt2img_scores: [N_texts, N_images] scores used to rank images for each text;
      defaults to `img2txt_scores.T` (one similarity matrix for both directions).
  """
  img2txt_scores = np.asarray(img2txt_scores)
  text_to_image = np.asarray(text_to_image)
  num_images = img2txt_scores.shape[0]
  if txt2img_scores is None:
    txt2img_scores = img2txt_scores.T
  if np.bincount(text_to_image, minlength=num_images).min() == 0:
    raise ValueError("an image has no ground-truth text")
  # An image's rank is that of its best-ranked own text: highest score, lowest index on ties.
  texts = np.arange(len(text_to_image))
  own_scores = img2txt_scores[text_to_image, texts]
  by_image_then_rank = np.lexsort((texts, -own_scores, text_to_image))
  _, first = np.unique(text_to_image[by_image_then_rank], return_index=True)
  best_own_text = by_image_then_rank[first]
  image_ranks = _rank_of_target(img2txt_scores, best_own_text)
  text_ranks = _rank_of_target(np.asarray(txt2img_scores), text_to_image)
  return image_ranks, text_ranks


def retrieval_metrics(img2txt_scores: np.ndarray, text_to_image: np.ndarray,
                      txt2img_scores: np.ndarray | None = None,
                      ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
  """`retrieval/img2txt_r{k}`, `retrieval/txt2img_r{k}`, their means and `retrieval/r_mean`.

  img2txt: an image is a hit at k if any of its texts ranks within the top k;
  txt2img: a text is a hit if its image ranks within the top k.
  """
  image_ranks, text_ranks = retrieval_ranks(img2txt_scores, text_to_image, txt2img_scores)
  metrics = {}
  for direction, ranks in (("img2txt", image_ranks), ("txt2img", text_ranks)):
    recalls = [float(np.mean(ranks < k)) for k in ks]
    metrics.update({f"retrieval/{direction}_r{k}": r for k, r in zip(ks, recalls)})
    metrics[f"retrieval/{direction}_r_mean"] = float(np.mean(recalls))
  metrics["retrieval/r_mean"] = (metrics["retrieval/img2txt_r_mean"]
                                 + metrics["retrieval/txt2img_r_mean"]) / 2
  return metrics


def _score_pairs_in_batches(score_pairs: PairScoreFn, image_indices: np.ndarray,
                            text_indices: np.ndarray, batch_size: int) -> np.ndarray:
  """Calls score_pairs on chunks of at most batch_size pairs; returns scores [P]."""
  chunks = [np.asarray(score_pairs(image_indices[s:s + batch_size], text_indices[s:s + batch_size]),
                       np.float32).reshape(-1)
            for s in range(0, len(image_indices), batch_size)]
  return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)


def _top_k_columns(scores: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
  """Column indices [Q, k] of each row's k best scores, ties by index (row chunks)."""
  return np.concatenate([np.argsort(-scores[s:s + chunk], axis=1, kind="stable")[:, :k]
                         for s in range(0, scores.shape[0], chunk)])


def rerank_with_itm(itc_scores: np.ndarray, score_pairs: PairScoreFn, *, k: int = 128,
                    batch_size: int = 128, fill: float = RERANK_FILL
                    ) -> tuple[np.ndarray, np.ndarray]:
  """BLIP's two-stage ranking: ITC for all pairs, ITM + ITC for each query's top k.

  Args:
    itc_scores: [N_images, N_texts] ITC similarities.
    score_pairs: `(image_indices [P], text_indices [P]) -> ITM scores [P]`, called with at
      most `batch_size` pairs at a time.
    k: candidates re-ranked per query (capped at the number of candidates).
  Returns:
    img2txt_scores [N_images, N_texts] and txt2img_scores [N_texts, N_images]: ITM + ITC on
    each query's top-k candidates by ITC (ties by index), `fill` elsewhere.
  """
  itc_scores = np.asarray(itc_scores, np.float32)
  results = []
  for queries_are_images, scores in ((True, itc_scores), (False, itc_scores.T)):
    top = _top_k_columns(scores, min(k, scores.shape[1]))
    queries = np.repeat(np.arange(scores.shape[0]), top.shape[1])
    candidates = top.reshape(-1)
    images, texts = (queries, candidates) if queries_are_images else (candidates, queries)
    itm = _score_pairs_in_batches(score_pairs, images, texts, batch_size)
    reranked = np.full(scores.shape, fill, np.float32)
    reranked[queries, candidates] = itm + scores[queries, candidates]
    results.append(reranked)
  return results[0], results[1]
