"""VQA v2 accuracy, answer normalisation and soft training targets.

Accuracy follows the official VQA v2 evaluation: with the 10 human answers of a question,
each of the 10 leave-one-out subsets of 9 annotators scores `min(1, #matches / 3)` and the
question's accuracy is the mean over the subsets. (For 10 answers of which n match, that is
`(n * min(1, (n-1)/3) + (10-n) * min(1, n/3)) / 10`, e.g. 0.3 for n=1, 0.6 for n=2, 0.9 for n=3.)

Normalisation (`normalize_answer`) is the official one, slightly simplified: lower-case,
newlines/tabs to spaces, punctuation deleted where it touches a space ("yes !" -> "yes")
or the answer holds a number with a comma ("1,000" -> "1000"), else turned into a space
("t-shirt" -> "t shirt"), periods dropped unless a digit follows ("3.5" stays), number
words zero..ten -> digits ("none" -> "0"), articles a/an/the dropped, common contractions
written without apostrophe restored ("dont" -> "don't"). The official eval normalises
predictions only when the annotators disagree; here both sides are always normalised.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hasnt": "hasn't", "havent": "haven't", "hes": "he's", "im": "i'm", "isnt": "isn't",
    "itd": "it'd", "itll": "it'll", "ive": "i've", "lets": "let's", "shouldnt": "shouldn't",
    "thats": "that's", "theres": "there's", "theyre": "they're", "wasnt": "wasn't",
    "werent": "weren't", "whats": "what's", "wheres": "where's", "whos": "who's",
    "wont": "won't", "wouldnt": "wouldn't", "youre": "you're", "youve": "you've",
}
HUMAN_MATCHES_FOR_FULL_CREDIT = 3


def _strip_punctuation(text: str) -> str:
  out = text
  for mark in _PUNCTUATION:
    touches_space = mark + " " in text or " " + mark in text
    if touches_space or _COMMA_IN_NUMBER.search(text):
      out = out.replace(mark, "")
    else:
      out = out.replace(mark, " ")
  return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def normalize_answer(answer: str) -> str:
  """Canonical form of a VQA answer (see the module docstring)."""
  text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
  words = []
  for word in _strip_punctuation(text).split():
    word = _NUMBER_WORDS.get(word, word)
    if word not in _ARTICLES:
      words.append(_CONTRACTIONS.get(word, word))
  return " ".join(words)


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
  """Official VQA v2 accuracy of one prediction: mean over leave-one-annotator-out subsets."""
  predicted = normalize_answer(prediction)
  matches = [normalize_answer(a) == predicted for a in human_answers]
  total = sum(matches)
  per_subset = [min(1.0, (total - m) / HUMAN_MATCHES_FOR_FULL_CREDIT) for m in matches]
  return float(np.mean(per_subset))


def vqa_metrics(predictions: Mapping[int, str],
                human_answers: Mapping[int, Sequence[str]]) -> dict[str, float]:
  """`vqa/accuracy` (in [0, 1]) over question ids; every prediction needs its answers."""
  missing = set(predictions) - set(human_answers)
  if missing:
    raise ValueError(f"no human answers for questions {sorted(missing)[:5]}")
  scores = [vqa_accuracy(predictions[q], human_answers[q]) for q in predictions]
  return {"vqa/accuracy": float(np.mean(scores)) if scores else 0.0}


def soft_answer_target(human_answers: Sequence[str], answer_to_index: Mapping[str, int]
                       ) -> np.ndarray:
  """Training target [num_answers] float32: `min(1, n / 3)` for every in-vocabulary answer
  given by n annotators (answers normalised; out-of-vocabulary answers are dropped)."""
  target = np.zeros(len(answer_to_index), np.float32)
  counts: dict[int, int] = {}
  for answer in human_answers:
    index = answer_to_index.get(normalize_answer(answer))
    if index is not None:
      counts[index] = counts.get(index, 0) + 1
  for index, count in counts.items():
    target[index] = min(1.0, count / HUMAN_MATCHES_FOR_FULL_CREDIT)
  return target


def build_answer_vocabulary(all_human_answers: Sequence[Sequence[str]], size: int = 3129
                            ) -> dict[str, int]:
  """The `size` most frequent normalised answers -> index (ties broken alphabetically)."""
  frequency: dict[str, int] = {}
  for answers in all_human_answers:
    for answer in answers:
      key = normalize_answer(answer)
      frequency[key] = frequency.get(key, 0) + 1
  ranked = sorted(frequency, key=lambda a: (-frequency[a], a))[:size]
  return {answer: index for index, answer in enumerate(ranked)}
