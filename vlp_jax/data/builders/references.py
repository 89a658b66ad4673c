"""Noun phrases that name one object of a scene unambiguously ("the small red circle")."""
from collections.abc import Sequence

import numpy as np

from vlp_jax.data.builders.scenes import SceneObject
from vlp_jax.data.builders.vocabulary import COLOUR_WORDS, RELATION_NAMES, SHAPE_WORDS, SIZE_WORDS

Attributes = tuple[str, ...]

# Attribute sets tried in order; the first that singles out the object is used.
# Places are unique per scene, so every list ends with a set that always succeeds.
WITH_COLOUR_AND_SHAPE: Sequence[Attributes] = (
    ("colour", "shape"), ("size", "colour", "shape"), ("colour", "shape", "place"))
WITHOUT_COLOUR: Sequence[Attributes] = (("shape",), ("size", "shape"), ("shape", "place"))
WITHOUT_SHAPE: Sequence[Attributes] = (("colour",), ("size", "colour"), ("place",))


def attribute_key(obj: SceneObject, attributes: Attributes) -> tuple[int, ...]:
  values = {"size": obj.size, "colour": obj.colour, "shape": obj.shape, "place": obj.cell}
  return tuple(values[name] for name in attributes)


def distinguishing_attributes(objects: Sequence[SceneObject], index: int,
                              candidates: Sequence[Attributes]) -> Attributes:
  """The first attribute set in `candidates` that no other object of the scene shares."""
  for attributes in candidates:
    key = attribute_key(objects[index], attributes)
    if sum(attribute_key(other, attributes) == key for other in objects) == 1:
      return attributes
  raise ValueError(f"no attribute set in {candidates} singles out object {index}")


def pick(options: Sequence[str], rng: np.random.Generator | None) -> str:
  """A random option, or the first (canonical) one without an rng."""
  return options[int(rng.integers(len(options)))] if rng is not None else options[0]


def place_phrases(obj: SceneObject) -> tuple[str, ...]:
  """Ways to say where the object is on the 3x3 grid; the first is canonical ("in the top left")."""
  place = obj.place_name
  if obj.row != 1 and obj.column != 1:  # corner
    return (f"in the {place}", f"in the {place} corner", f"at the {place}")
  if obj.row != 1:  # top or bottom edge
    edge = place.split()[0]
    return (f"in the {place}", f"at the {edge}", f"in the {edge} middle")
  if obj.column != 1:  # left or right edge
    side = place.split()[1]
    return (f"in the {place}", f"at the middle {side}", f"in the middle of the {side} side")
  return ("in the center", "in the middle", "at the center")


def place_phrase(obj: SceneObject, rng: np.random.Generator | None = None) -> str:
  """A random (or without rng the canonical) phrase from `place_phrases`."""
  return pick(place_phrases(obj), rng)


def noun_phrase(obj: SceneObject, attributes: Attributes, determiner: str = "the",
                rng: np.random.Generator | None = None) -> str:
  """e.g. "the small red circle", "the object in the top left" (synonyms drawn from rng)."""
  words = [determiner] if determiner else []
  if "size" in attributes:
    words.append(pick(SIZE_WORDS[obj.size_name], rng))
  if "colour" in attributes:
    words.append(pick(COLOUR_WORDS[obj.colour_name], rng))
  words.append(pick(SHAPE_WORDS[obj.shape_name], rng) if "shape" in attributes else pick(("object", "shape"), rng))
  if "place" in attributes:
    words.append(place_phrase(obj, rng))
  return " ".join(words)


def relations(first: SceneObject, second: SceneObject) -> list[str]:
  """Every name in RELATION_NAMES that holds for `first` relative to `second`."""
  holding = []
  if first.column != second.column:
    holding.append(RELATION_NAMES[0] if first.column < second.column else RELATION_NAMES[1])
  if first.row != second.row:
    holding.append(RELATION_NAMES[2] if first.row < second.row else RELATION_NAMES[3])
  return holding


def referring_expressions(objects: Sequence[SceneObject]) -> list[tuple[str, int]]:
  """Two unambiguous expressions per object: by attributes, and by shape and place."""
  expressions = []
  for index, obj in enumerate(objects):
    by_attributes = noun_phrase(obj, distinguishing_attributes(objects, index, WITH_COLOUR_AND_SHAPE))
    by_place = noun_phrase(obj, ("shape", "place"))
    expressions.append((by_attributes, index))
    if by_place != by_attributes:
      expressions.append((by_place, index))
  return expressions

