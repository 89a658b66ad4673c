"""Captioning metrics: corpus BLEU-1..4 and CIDEr-D as the COCO caption toolkit computes them.

Inputs are `references: {image_id: [reference strings]}` and
`candidates: {image_id: candidate string}` over the same image ids.

Tokenisation (`tokenize_caption`) is a deterministic stand-in for the toolkit's PTB tokenizer
(which needs java): lower-case, drop apostrophes ("man's" -> "mans"), turn every other
character that is not a letter or a digit into a space, split on whitespace. Pass
`tokenize=False` when the strings are already tokenised (space-separated tokens).
"""
from __future__ import annotations

import collections
import math
import re
from typing import Hashable, Mapping, Sequence

import numpy as np

NGram = tuple[str, ...]
References = Mapping[Hashable, Sequence[str]]
Candidates = Mapping[Hashable, str]

_APOSTROPHES = re.compile(r"['\u2019`]")
_NOT_WORD = re.compile(r"[^0-9a-z]+")
# The toolkit avoids 0/0 with these two constants; we keep them for bit-for-bit parity.
_TINY = 1e-15
_SMALL = 1e-9
CIDER_SIGMA = 6.0


def tokenize_caption(text: str) -> str:
  """Lower-cases, removes punctuation and returns space-separated tokens."""
  text = _APOSTROPHES.sub("", text.lower())
  return " ".join(_NOT_WORD.sub(" ", text).split())


def ngram_counts(tokens: Sequence[str], max_n: int = 4) -> collections.Counter[NGram]:
  """Counts all n-grams of orders 1..max_n."""
  counts: collections.Counter[NGram] = collections.Counter()
  for n in range(1, max_n + 1):
    for start in range(len(tokens) - n + 1):
      counts[tuple(tokens[start:start + n])] += 1
  return counts


def _tokenized_pairs(references: References, candidates: Candidates,
                     tokenize: bool) -> list[tuple[list[str], list[list[str]]]]:
  """Returns [(candidate tokens, [reference tokens])] in sorted image id order."""
  if set(references) != set(candidates):
    raise ValueError("references and candidates must cover the same image ids")
  prepare = tokenize_caption if tokenize else (lambda s: s)
  pairs = []
  for image_id in sorted(candidates, key=repr):
    refs = references[image_id]
    if not refs:
      raise ValueError(f"image {image_id!r} has no reference")
    pairs.append((prepare(candidates[image_id]).split(),
                  [prepare(r).split() for r in refs]))
  return pairs


def corpus_bleu(references: References, candidates: Candidates, *, max_n: int = 4,
                tokenize: bool = True) -> list[float]:
  """Corpus BLEU-1..max_n with the toolkit's 'closest' reference length.

  Clipped n-gram matches and candidate n-gram counts are summed over the corpus; the
  effective reference length of each candidate is the reference length closest to it
  (the shorter on ties), summed over the corpus for one brevity penalty
  `exp(1 - ref_len / cand_len)` when the candidates are shorter.
  """
  correct = np.zeros(max_n)
  guessed = np.zeros(max_n)
  candidate_length = 0
  reference_length = 0
  for cand, refs in _tokenized_pairs(references, candidates, tokenize):
    max_ref_counts: collections.Counter[NGram] = collections.Counter()
    for ref in refs:
      max_ref_counts |= ngram_counts(ref, max_n)
    for ngram, count in ngram_counts(cand, max_n).items():
      correct[len(ngram) - 1] += min(count, max_ref_counts[ngram])
    guessed += [max(0, len(cand) - n + 1) for n in range(1, max_n + 1)]
    candidate_length += len(cand)
    reference_length += min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]

  ratio = (candidate_length + _TINY) / (reference_length + _SMALL)
  brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
  scores, log_product = [], 0.0
  for n in range(max_n):
    log_product += math.log((correct[n] + _TINY) / (guessed[n] + _SMALL))
    scores.append(math.exp(log_product / (n + 1)) * brevity)
  return scores


def _tfidf_vectors(counts: Mapping[NGram, int], log_num_images: float,
                   document_frequency: Mapping[NGram, float], max_n: int
                   ) -> tuple[list[dict[NGram, float]], np.ndarray]:
  """Per-order tf-idf vectors `tf * (log N - log max(1, df))` and their L2 norms."""
  vectors: list[dict[NGram, float]] = [{} for _ in range(max_n)]
  norms = np.zeros(max_n)
  for ngram, term_frequency in counts.items():
    df = document_frequency.get(ngram, 0.0)
    weight = float(term_frequency) * (log_num_images - np.log(max(1.0, df)))
    vectors[len(ngram) - 1][ngram] = weight
    norms[len(ngram) - 1] += weight**2
  return vectors, np.sqrt(norms)


def cider_d(references: References, candidates: Candidates, *, max_n: int = 4,
            sigma: float = CIDER_SIGMA, tokenize: bool = True
            ) -> tuple[float, dict[Hashable, float]]:
  """CIDEr-D (coco-caption's `Cider`): corpus mean and per-image scores.

  Document frequencies come from the references of the evaluated set. For each order n
  the clipped cosine `sum min(c, r) * r / (|c| |r|)` between tf-idf vectors is damped by
  `exp(-delta^2 / (2 sigma^2))`, delta the length difference (counted, as the toolkit does,
  in bigrams); orders are averaged, references averaged, and the result scaled by 10.
  """
  pairs = _tokenized_pairs(references, candidates, tokenize)
  document_frequency: collections.Counter[NGram] = collections.Counter()
  for _, refs in pairs:
    document_frequency.update(set().union(*(ngram_counts(r, max_n) for r in refs)))
  log_num_images = float(np.log(float(len(pairs))))

  def vectorise(tokens):
    vectors, norms = _tfidf_vectors(ngram_counts(tokens, max_n), log_num_images,
                                    document_frequency, max_n)
    return vectors, norms, max(0, len(tokens) - 1)

  per_image = []
  for cand, refs in pairs:
    cand_vectors, cand_norms, cand_length = vectorise(cand)
    total = np.zeros(max_n)
    for ref in refs:
      ref_vectors, ref_norms, ref_length = vectorise(ref)
      for n in range(max_n):
        overlap = sum(min(w, ref_vectors[n].get(g, 0.0)) * ref_vectors[n].get(g, 0.0)
                      for g, w in cand_vectors[n].items())
        if cand_norms[n] != 0 and ref_norms[n] != 0:
          overlap /= cand_norms[n] * ref_norms[n]
        total[n] += overlap * np.exp(-float(cand_length - ref_length)**2 / (2 * sigma**2))
    per_image.append(float(np.mean(total) / len(refs) * 10.0))
  ids = sorted(candidates, key=repr)
  return float(np.mean(per_image)), dict(zip(ids, per_image))


def caption_metrics(references: References, candidates: Candidates, *,
                    tokenize: bool = True) -> dict[str, float]:
  """`caption/bleu1..4` and `caption/cider` (CIDEr-D), in the toolkit's units (not x100)."""
  bleus = corpus_bleu(references, candidates, tokenize=tokenize)
  metrics = {f"caption/bleu{n + 1}": b for n, b in enumerate(bleus)}
  metrics["caption/cider"] = cider_d(references, candidates, tokenize=tokenize)[0]
  return metrics
