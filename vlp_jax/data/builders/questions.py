"""VQA-style questions about a `shapes` scene, with 10 noisy annotator answers each.

One question per type in `QUESTION_TYPES` (colour, shape, count, exists, spatial). Most
annotators give the right answer; a few (at most 3 of 10) give a plausible wrong one.
"""
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from vlp_jax.data.builders.references import (WITH_COLOUR_AND_SHAPE, WITHOUT_COLOUR, WITHOUT_SHAPE,
                                              distinguishing_attributes, noun_phrase, relations)
from vlp_jax.data.builders.scenes import SceneObject
from vlp_jax.data.builders.vocabulary import (COLOUR_NAMES, MAX_OBJECTS, PLACE_NAMES, RELATION_NAMES, SHAPE_NAMES,
                                              SIZE_NAMES, plural)
from vlp_jax.data.features import NUM_ANSWERS_PER_QUESTION, QUESTION_TYPES

_NOISE_RATE = 0.08
_MAX_WRONG_ANSWERS = 3
_YES_NO = ("yes", "no")


class Question(NamedTuple):
  question: str
  answer: str  # the true answer
  type: str
  candidates: tuple[str, ...]  # the answer space annotators' mistakes are drawn from


def questions(objects: Sequence[SceneObject], rng: np.random.Generator) -> list[Question]:
  """One question of each type in QUESTION_TYPES order."""
  makers = {"colour": colour_question, "shape": shape_question, "count": count_question,
            "exists": exists_question, "spatial": spatial_question}
  asked = [makers[kind](objects, rng) for kind in QUESTION_TYPES]
  return [q._replace(question=q.question[0].upper() + q.question[1:]) for q in asked]


def annotator_answers(question: Question, rng: np.random.Generator) -> list[str]:
  """NUM_ANSWERS_PER_QUESTION answers: the truth, except for a few random mistakes."""
  wrong_options = [c for c in question.candidates if c != question.answer]
  num_wrong = min(int(rng.binomial(NUM_ANSWERS_PER_QUESTION, _NOISE_RATE)), _MAX_WRONG_ANSWERS)
  answers = [question.answer] * NUM_ANSWERS_PER_QUESTION
  for slot in rng.choice(NUM_ANSWERS_PER_QUESTION, size=num_wrong, replace=False):
    answers[int(slot)] = wrong_options[int(rng.integers(len(wrong_options)))]
  return answers


def _random_index(objects: Sequence[SceneObject], rng: np.random.Generator) -> int:
  return int(rng.integers(len(objects)))


def colour_question(objects: Sequence[SceneObject], rng: np.random.Generator) -> Question:
  index = _random_index(objects, rng)
  target = noun_phrase(objects[index], distinguishing_attributes(objects, index, WITHOUT_COLOUR))
  text = f"what colour is {target}?" if rng.random() < 0.5 else f"what is the colour of {target}?"
  return Question(text, objects[index].colour_name, "colour", COLOUR_NAMES)


def shape_question(objects: Sequence[SceneObject], rng: np.random.Generator) -> Question:
  index = _random_index(objects, rng)
  target = noun_phrase(objects[index], distinguishing_attributes(objects, index, WITHOUT_SHAPE))
  return Question(f"what shape is {target}?", objects[index].shape_name, "shape", SHAPE_NAMES)


def count_question(objects: Sequence[SceneObject], rng: np.random.Generator) -> Question:
  """How many objects / shapes of a kind / objects of a colour (asked kind may be absent)."""
  kind = int(rng.integers(3))
  if kind == 0:
    text, count = "how many objects are there?", len(objects)
  elif kind == 1:
    shape = int(rng.integers(len(SHAPE_NAMES)))
    text = f"how many {plural(SHAPE_NAMES[shape])} are there?"
    count = sum(obj.shape == shape for obj in objects)
  else:
    colour = int(rng.integers(len(COLOUR_NAMES)))
    text = f"how many {COLOUR_NAMES[colour]} objects are there?"
    count = sum(obj.colour == colour for obj in objects)
  candidates = tuple(str(n) for n in range(MAX_OBJECTS + 1))
  return Question(text, str(count), "count", candidates)


def exists_question(objects: Sequence[SceneObject], rng: np.random.Generator) -> Question:
  """"is there a red circle?" / "is there a small star?" -- true about half of the time."""
  if rng.random() < 0.5:
    present = objects[_random_index(objects, rng)]
    colour, shape, size = present.colour, present.shape, present.size
  else:
    colour, shape, size = (int(rng.integers(len(names))) for names in (COLOUR_NAMES, SHAPE_NAMES, SIZE_NAMES))
  if rng.random() < 0.5:
    text = f"is there a {COLOUR_NAMES[colour]} {SHAPE_NAMES[shape]}?"
    exists = any(o.colour == colour and o.shape == shape for o in objects)
  else:
    text = f"is there a {SIZE_NAMES[size]} {SHAPE_NAMES[shape]}?"
    exists = any(o.size == size and o.shape == shape for o in objects)
  return Question(text, "yes" if exists else "no", "exists", _YES_NO)


def spatial_question(objects: Sequence[SceneObject], rng: np.random.Generator) -> Question:
  """"where is the red circle?" or, with several objects, "is the red circle above the blue star?"."""
  if len(objects) == 1 or rng.random() < 0.5:
    index = _random_index(objects, rng)
    target = noun_phrase(objects[index], distinguishing_attributes(objects, index, WITH_COLOUR_AND_SHAPE))
    return Question(f"where is {target}?", objects[index].place_name, "spatial", PLACE_NAMES)
  first, second = (int(i) for i in rng.choice(len(objects), size=2, replace=False))
  relation = RELATION_NAMES[int(rng.integers(len(RELATION_NAMES)))]
  subject = noun_phrase(objects[first], distinguishing_attributes(objects, first, WITH_COLOUR_AND_SHAPE))
  landmark = noun_phrase(objects[second], distinguishing_attributes(objects, second, WITH_COLOUR_AND_SHAPE))
  holds = relation in relations(objects[first], objects[second])
  return Question(f"is {subject} {relation} {landmark}?", "yes" if holds else "no", "spatial", _YES_NO)
