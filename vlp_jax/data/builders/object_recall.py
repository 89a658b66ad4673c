"""Object recall of a caption on a `shapes` image: which objects does it name correctly?

An object is recalled when the caption mentions its shape (any synonym or plural) with its
colour attached: a colour word before the shape in the same noun phrase ("a small red
circle", "two red circles"), or after it through a copula ("a circle that is red", "a circle
in red"). Word order of the objects does not matter; each mention recalls at most as many
objects as it counts ("two red circles" recalls two, "the red circle" one).
"""
import collections
import re
from collections.abc import Mapping, Sequence

import numpy as np

from vlp_jax.data.builders.vocabulary import (COLOUR_NAMES, COLOUR_WORDS, NUMBER_WORDS, SHAPE_NAMES, SHAPE_WORDS,
                                              SIZE_WORDS, plural)

ObjectsLike = Mapping[str, Sequence[int]] | Sequence[tuple[int, int]]

_COLOUR_BY_WORD = {word: COLOUR_NAMES.index(name) for name, words in COLOUR_WORDS.items() for word in words}
_SHAPE_BY_WORD = {form: SHAPE_NAMES.index(name) for name, words in SHAPE_WORDS.items()
                  for word in words for form in (word, plural(word))}
_SINGULAR_SHAPE_WORDS = {word for words in SHAPE_WORDS.values() for word in words}
_SIZE_WORDS = {word for words in SIZE_WORDS.values() for word in words}
# Words that may sit between a colour and its shape ("a red coloured small circle").
_NOUN_MODIFIERS = _SIZE_WORDS | {"coloured", "colored", "bright", "dark", "light", "solid", "filled", "shaped"}
# Words that may link a shape to a colour after it ("a circle that is red", "a circle in red").
_POSTMODIFIER_LINKS = {"that", "which", "is", "are", "in", "coloured", "colored"} | _SIZE_WORDS
_COUNT_BY_WORD = {word: count for count, word in enumerate(NUMBER_WORDS)} | {"a": 1, "an": 1, "single": 1}
_DEFINITE = {"the", "this", "that"}
_TOKEN = re.compile(r"[a-z]+|\d+")


def mentioned_objects(caption: str | bytes) -> collections.Counter:
  """Counter of (colour id, shape id) the caption names, e.g. "two red circles" -> {(0, 0): 2}."""
  text = caption.decode() if isinstance(caption, bytes) else caption
  tokens = _TOKEN.findall(text.lower())
  indefinite: collections.Counter = collections.Counter()
  definite: set[tuple[int, int]] = set()
  for position, token in enumerate(tokens):
    if token not in _SHAPE_BY_WORD:
      continue
    start, colour = _colour_before(tokens, position)
    if colour is None:
      colour = _colour_after(tokens, position)
    if colour is None:
      continue
    key = (colour, _SHAPE_BY_WORD[token])
    determiner = tokens[start - 1] if start > 0 else ""
    if determiner in _DEFINITE:
      definite.add(key)
    else:
      indefinite[key] += _count(determiner, plural_noun=token not in _SINGULAR_SHAPE_WORDS)
  for key in definite:  # "the red circle" refers back to an earlier mention, or names one object
    indefinite[key] = max(indefinite[key], 1)
  return indefinite


def _colour_before(tokens: list[str], position: int) -> tuple[int, int | None]:
  """(start of the noun phrase's modifiers, its colour id or None if none or several)."""
  start = position
  colours = set()
  while start > 0 and (tokens[start - 1] in _COLOUR_BY_WORD or tokens[start - 1] in _NOUN_MODIFIERS):
    start -= 1
    if tokens[start] in _COLOUR_BY_WORD:
      colours.add(_COLOUR_BY_WORD[tokens[start]])
  return start, (colours.pop() if len(colours) == 1 else None)


def _colour_after(tokens: list[str], position: int) -> int | None:
  index = position + 1
  while index < len(tokens) and tokens[index] in _POSTMODIFIER_LINKS:
    index += 1
  if index > position + 1 and index < len(tokens) and tokens[index] in _COLOUR_BY_WORD:
    return _COLOUR_BY_WORD[tokens[index]]
  return None


def _count(determiner: str, plural_noun: bool) -> int:
  if determiner.isdigit():
    return int(determiner)
  if determiner in _COUNT_BY_WORD:
    return _COUNT_BY_WORD[determiner]
  return 2 if plural_noun else 1  # "red circles": at least two


def _colour_shape_pairs(objects: ObjectsLike) -> list[tuple[int, int]]:
  if isinstance(objects, Mapping):
    return [(int(c), int(s)) for c, s in zip(np.asarray(objects["colour"]), np.asarray(objects["label"]))]
  return [(int(c), int(s)) for c, s in objects]


def object_recall(caption: str | bytes, objects: ObjectsLike) -> float:
  """Fraction of the image's objects whose colour and shape the caption names (0 if no objects).

  `objects` is the TFDS `objects` dict (its `colour` and `label` arrays) or (colour, shape) id pairs.
  """
  pairs = _colour_shape_pairs(objects)
  if not pairs:
    return 0.0
  available = mentioned_objects(caption)
  recalled = 0
  for pair in pairs:
    if available[pair] > 0:
      available[pair] -= 1
      recalled += 1
  return recalled / len(pairs)


def batch_object_recall(captions: Sequence[str | bytes], objects: Sequence[ObjectsLike]) -> np.ndarray:
  """object_recall per (caption, objects) pair. Returns float32 [B]."""
  if len(captions) != len(objects):
    raise ValueError(f"{len(captions)} captions for {len(objects)} object lists")
  return np.asarray([object_recall(c, o) for c, o in zip(captions, objects)], dtype=np.float32)
