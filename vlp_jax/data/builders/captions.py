"""The caption grammar of the `shapes` dataset.

Every caption names each object's size, colour, shape and place (in a random order, with
synonyms and several templates) and, for scenes with several objects, usually one spatial
relation between two of them.
"""
from collections.abc import Sequence

import numpy as np

from vlp_jax.data.builders.references import (WITH_COLOUR_AND_SHAPE, distinguishing_attributes, noun_phrase,
                                              pick, place_phrase, relations)
from vlp_jax.data.builders.scenes import SceneObject
from vlp_jax.data.builders.vocabulary import COLOUR_WORDS, NUMBER_WORDS, RELATION_WORDS, SHAPE_WORDS, SIZE_WORDS

_SCENE_TEMPLATES = (
    "{objects}.",
    "there is {objects}.",
    "an image of {objects}.",
    "a picture with {objects}.",
    "this scene shows {objects}.",
)
_COUNTED_TEMPLATES = (
    "{count} shapes: {objects}.",
    "{count} objects on a grey background: {objects}.",
    "there are {count} shapes: {objects}.",
)
_SINGLE_TEMPLATES = ("a single object: {objects}.", "only one shape: {objects}.")
_RELATION_PROBABILITY = 0.8


def article(next_word: str) -> str:
  return "an" if next_word[0] in "aeiou" else "a"


def object_phrase(obj: SceneObject, rng: np.random.Generator) -> str:
  """"a small red circle in the top left", "a red circle, small, at the top left", ..."""
  size = pick(SIZE_WORDS[obj.size_name], rng)
  colour = pick(COLOUR_WORDS[obj.colour_name], rng)
  shape = pick(SHAPE_WORDS[obj.shape_name], rng)
  place = place_phrase(obj, rng)
  form = int(rng.integers(3))
  if form == 0:
    return f"{article(size)} {size} {colour} {shape} {place}"
  if form == 1:
    return f"{article(colour)} {colour} {shape}, {size}, {place}"
  return f"{article(size)} {size} {colour} {shape} located {place}"


def join_phrases(phrases: Sequence[str]) -> str:
  if len(phrases) == 1:
    return phrases[0]
  return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def relation_sentence(objects: Sequence[SceneObject], rng: np.random.Generator) -> str:
  """e.g. "the red circle is to the left of the small blue square." """
  first, second = (int(i) for i in rng.choice(len(objects), size=2, replace=False))
  relation = pick(relations(objects[first], objects[second]), rng)
  subject = noun_phrase(objects[first], distinguishing_attributes(objects, first, WITH_COLOUR_AND_SHAPE), rng=rng)
  landmark = noun_phrase(objects[second], distinguishing_attributes(objects, second, WITH_COLOUR_AND_SHAPE), rng=rng)
  return f"{subject} is {pick(RELATION_WORDS[relation], rng)} {landmark}."


def caption(objects: Sequence[SceneObject], rng: np.random.Generator) -> str:
  """One random caption of the scene."""
  order = rng.permutation(len(objects))
  listed = join_phrases([object_phrase(objects[i], rng) for i in order])
  if len(objects) == 1:
    templates = _SCENE_TEMPLATES + _SINGLE_TEMPLATES
  else:
    templates = _SCENE_TEMPLATES + _COUNTED_TEMPLATES
  text = pick(templates, rng).format(objects=listed, count=NUMBER_WORDS[len(objects)])
  if len(objects) > 1 and rng.random() < _RELATION_PROBABILITY:
    text = f"{text} {relation_sentence(objects, rng)}"
  return _capitalise_sentences(text)


def captions(objects: Sequence[SceneObject], rng: np.random.Generator, count: int = 5) -> list[str]:
  """`count` distinct captions (fewer only if the grammar runs out of paraphrases)."""
  distinct: list[str] = []
  for _ in range(10 * count):
    text = caption(objects, rng)
    if text not in distinct:
      distinct.append(text)
    if len(distinct) == count:
      break
  return distinct


def _capitalise_sentences(text: str) -> str:
  sentences = text.split(". ")
  return ". ".join(sentence[:1].upper() + sentence[1:] for sentence in sentences)
