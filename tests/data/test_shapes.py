"""The `shapes` dataset: determinism, geometry vs pixels, captions, VQA, referring, configs, object recall."""
import io
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import vlp_jax.data.builders  # noqa: F401  (registers the builders)
from vlp_jax.data.builders import collisions, shapes
from vlp_jax.data.builders.examples import example_streams, image_id, make_example
from vlp_jax.data.builders.object_recall import batch_object_recall, mentioned_objects, object_recall
from vlp_jax.data.builders.questions import annotator_answers, questions
from vlp_jax.data.builders.references import place_phrases, referring_expressions
from vlp_jax.data.builders.scenes import SceneObject, sample_scene
from vlp_jax.data.builders.vocabulary import COLOUR_NAMES, COLOUR_RGB, PLACE_NAMES, SHAPE_NAMES, SIZE_NAMES
from vlp_jax.data.features import NUM_ANSWERS_PER_QUESTION, QUESTION_TYPES

FIXTURE_CONFIG = "64px_train256_validation64_test64"
NUM_SCENES = 150


def scenes(split: str = "test", count: int = NUM_SCENES) -> list[list[SceneObject]]:
  return [sample_scene(example_streams(0, split, index)[0]) for index in range(count)]


def decode(jpeg: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(jpeg)))


_PHRASE = re.compile(rf"the (?:(?P<size>{'|'.join(SIZE_NAMES)}) )?(?:(?P<colour>{'|'.join(COLOUR_NAMES)}) )?"
                     rf"(?P<noun>{'|'.join(SHAPE_NAMES)}|object|shape)(?: in the (?P<place>{'|'.join(PLACE_NAMES)}))?")


def resolve(phrase: str, objects: list[SceneObject]) -> list[int]:
  """Indices of the objects a canonical noun phrase ("the small red circle in the top left") fits."""
  match = _PHRASE.fullmatch(phrase)
  assert match, phrase
  wanted = match.groupdict()
  return [index for index, obj in enumerate(objects)
          if (wanted["size"] in (None, obj.size_name)) and (wanted["colour"] in (None, obj.colour_name))
          and (wanted["noun"] in ("object", "shape", obj.shape_name)) and (wanted["place"] in (None, obj.place_name))]


# Builder, fixture and configs.

def test_fixture_build_honours_split_sizes_and_loads_by_name(shapes_data_dir):
  builder = tfds.builder(f"shapes/{FIXTURE_CONFIG}", data_dir=shapes_data_dir)
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
      "train": 256, "validation": 64, "test": 64}
  example = next(iter(tfds.as_numpy(builder.as_dataset(split="validation").take(1))))
  assert example["image"].shape == (64, 64, 3) and example["image"].dtype == np.uint8
  assert len(example["captions"]) >= 3
  assert example["questions"]["answers"].shape == (len(QUESTION_TYPES), NUM_ANSWERS_PER_QUESTION)


def test_built_images_are_the_generated_ones(shapes_data_dir):
  dataset = tfds.load(f"shapes/{FIXTURE_CONFIG}", split="test", data_dir=shapes_data_dir,
                      decoders={"image": tfds.decode.SkipDecoding()})
  ids = set()
  for example in tfds.as_numpy(dataset.take(8)):
    index = int(example["image_id"]) - image_id("test", 0)
    expected = make_example(0, "test", index, 64)
    assert example["image"] == expected["image"]  # the stored JPEG bytes
    assert [c.decode() for c in example["captions"]] == expected["captions"]
    ids.add(int(example["image_id"]))
  assert len(ids) == 8


def test_config_names_are_distinct_per_size_and_round_trip():
  assert shapes.shapes_config() is shapes.shapes_config(image_size=64)
  assert shapes.shapes_config(image_size=224).name == "224px"
  tiny = shapes.shapes_config(train_size=256, validation_size=64, test_size=64)
  assert tiny.name == FIXTURE_CONFIG
  assert shapes.parse_config_name(FIXTURE_CONFIG).split_sizes() == tiny.split_sizes()
  seeded = shapes.shapes_config(train_size=256, validation_size=64, test_size=64, seed=3)
  assert seeded.name == FIXTURE_CONFIG + "_seed3" and seeded.seed == 3
  builder = tfds.builder("shapes", config="224px", train_size=8, data_dir="/tmp/unused")
  assert builder.builder_config.image_size == 224 and builder.builder_config.train_size == 8
  assert builder.builder_config.name == "224px_train8_validation1000_test1000"
  by_name = tfds.builder("shapes/64px_train5_validation1_test1", data_dir="/tmp/unused")  # not built: from code
  assert by_name.builder_config.split_sizes() == {"train": 5, "validation": 1, "test": 1}
  with pytest.raises(ValueError):
    shapes.parse_config_name("64 px")


# Determinism and ids.

def test_examples_are_deterministic_per_seed_split_and_index():
  first, again = make_example(0, "train", 5, 64), make_example(0, "train", 5, 64)
  assert first["image"] == again["image"] and first == again
  other_split = make_example(0, "validation", 5, 64)
  other_seed = make_example(1, "train", 5, 64)
  assert other_split["image"] != first["image"] and other_seed["image"] != first["image"]
  assert len({image_id(split, 5) for split in ("train", "validation", "test")}) == 3


# Geometry and pixels.

def test_objects_are_inside_the_image_and_do_not_overlap():
  for objects in scenes():
    assert 1 <= len(objects) <= 4
    boxes = np.array([obj.bbox for obj in objects])
    assert np.all(boxes >= 0) and np.all(boxes <= 1)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    for i in range(len(boxes)):
      for j in range(i + 1, len(boxes)):
        overlap_y = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
        overlap_x = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
        assert overlap_y <= 0 or overlap_x <= 0
    for obj in objects:  # the box centre lies in the object's named grid cell
      ymin, xmin, ymax, xmax = obj.bbox
      assert int((ymin + ymax) / 2 * 3) == obj.row and int((xmin + xmax) / 2 * 3) == obj.column


def test_boxes_match_drawn_pixels():
  palette = np.array([COLOUR_RGB[name] for name in COLOUR_NAMES], dtype=np.float32)
  for index in range(60):
    example = make_example(0, "test", index, 64)
    pixels = decode(example["image"]).astype(np.float32)
    distances = np.linalg.norm(pixels[:, :, None, :] - palette, axis=-1)
    labels = np.where(distances.min(-1) < 70, distances.argmin(-1), -1)
    covered = np.zeros(labels.shape, dtype=bool)
    for obj in example["objects"]:
      ymin, xmin, ymax, xmax = np.asarray(obj["bbox"]) * 64
      rows, columns = slice(int(ymin), int(np.ceil(ymax))), slice(int(xmin), int(np.ceil(xmax)))
      covered[rows, columns] = True
      inside = labels[rows, columns]
      counts = np.bincount(inside[inside >= 0], minlength=len(COLOUR_NAMES))
      assert counts.argmax() == obj["colour"] and counts[obj["colour"]] >= 0.12 * inside.size
    assert (labels[~covered] >= 0).mean() < 0.03  # colour only where the boxes are


# Captions.

def test_captions_name_every_object_and_vary():
  for index in range(NUM_SCENES):
    example = make_example(0, "test", index, 64)
    captions = example["captions"]
    assert len(captions) >= 3 and len(set(captions)) == len(captions)
    objects = [(obj["colour"], obj["label"]) for obj in example["objects"]]
    assert all(object_recall(caption, objects) == 1.0 for caption in captions)
    for caption in captions:  # every object's size and place are named too
      assert len(re.findall(r"\b(small|little|tiny|large|big)\b", caption)) >= len(objects)
      assert len(re.findall(r"\b(in|at) the\b", caption)) >= len(objects)


def test_captions_state_true_relations():
  checked = 0
  for index, objects in enumerate(scenes()):
    example = make_example(0, "test", index, 64)
    for caption in example["captions"]:
      for subject, relation, landmark in re.findall(
          r"\. The (.+?) is (to the left of|left of|to the right of|right of|above|over|below|under|beneath) "
          r"the (.+?)\.$", caption):
        first, second = _resolve_synonyms(subject, objects), _resolve_synonyms(landmark, objects)
        delta_row = objects[first].row - objects[second].row
        delta_column = objects[first].column - objects[second].column
        holds = {"left": delta_column < 0, "right": delta_column > 0, "above": delta_row < 0, "over": delta_row < 0,
                 "below": delta_row > 0, "under": delta_row > 0, "beneath": delta_row > 0}
        assert holds[relation.split()[-2] if "of" in relation else relation], caption
        checked += 1
  assert checked > 50


def _resolve_synonyms(phrase: str, objects: list[SceneObject]) -> int:
  canonical = {"little": "small", "tiny": "small", "big": "large", "violet": "purple", "disc": "circle",
               "disk": "circle", "box": "square", "rhombus": "diamond"}
  attributes, place = re.fullmatch(r"(.+?)(?: ((?:in|at) the .+))?", phrase).groups()
  words = [canonical.get(word, word) for word in attributes.split()]
  matches = [index for index in resolve("the " + " ".join(words), objects)
             if place is None or place in place_phrases(objects[index])]
  assert len(matches) == 1, (phrase, objects)
  return matches[0]


def test_description_collision_fraction():
  assert collisions.collision_fraction(["a", "b", "a", "c"]) == 0.5
  assert collisions.collision_fraction([]) == 0.0
  objects = make_example(0, "test", 0, 64)["objects"]
  as_tfds = {key: [obj[key] if key != "bbox" else list(obj["bbox"]) for obj in objects]
             for key in ("bbox", "label", "colour", "size")}
  assert collisions.description_collision_fraction([as_tfds, as_tfds]) == 1.0
  test_split = [{"bbox": [o.bbox for o in objects], "label": [o.shape for o in objects],
                 "colour": [o.colour for o in objects], "size": [o.size for o in objects]}
                for objects in scenes(count=1000)]
  assert collisions.description_collision_fraction(test_split) < 0.05


# Questions and referring expressions.

def test_questions_have_correct_majority_answers():
  for objects, rng_index in zip(scenes(), range(NUM_SCENES)):
    rng = example_streams(0, "test", rng_index)[3]
    asked = questions(objects, rng)
    assert [q.type for q in asked] == list(QUESTION_TYPES)
    for question in asked:
      assert _independent_answer(question.question, objects) == question.answer, question
      answers = annotator_answers(question, rng)
      assert len(answers) == NUM_ANSWERS_PER_QUESTION
      assert answers.count(question.answer) >= NUM_ANSWERS_PER_QUESTION - 3


def _independent_answer(question: str, objects: list[SceneObject]) -> str:
  """Answers a canonical question by reading the scene, without the question generator."""
  text = question[0].lower() + question[1:-1]
  if match := re.fullmatch(r"what (?:colour is|is the colour of) (.+)", text):
    return objects[_single(resolve(match[1], objects))].colour_name
  if match := re.fullmatch(r"what shape is (.+)", text):
    return objects[_single(resolve(match[1], objects))].shape_name
  if match := re.fullmatch(r"where is (.+)", text):
    return objects[_single(resolve(match[1], objects))].place_name
  if match := re.fullmatch(r"how many (\w+?)s? are there", text):
    return str(sum(match[1] in ("object", o.shape_name) for o in objects))
  if match := re.fullmatch(r"how many (\w+) objects are there", text):
    return str(sum(match[1] == o.colour_name for o in objects))
  if match := re.fullmatch(r"is there a (\w+) (\w+)", text):
    found = any(match[1] in (o.colour_name, o.size_name) and match[2] == o.shape_name for o in objects)
    return "yes" if found else "no"
  if match := re.fullmatch(r"is (the .+?) (left of|right of|above|below) (the .+)", text):
    first = objects[_single(resolve(match[1], objects))]
    second = objects[_single(resolve(match[3], objects))]
    holds = {"left of": first.column < second.column, "right of": first.column > second.column,
             "above": first.row < second.row, "below": first.row > second.row}[match[2]]
    return "yes" if holds else "no"
  raise AssertionError(f"unexpected question {question!r}")


def _single(indices: list[int]) -> int:
  assert len(indices) == 1, indices
  return indices[0]


def test_annotators_are_mostly_but_not_always_right():
  answers = [make_example(0, "train", index, 64)["questions"] for index in range(100)]
  agreements = [max(q["answers"].count(a) for a in q["answers"]) for example in answers for q in example]
  assert min(agreements) >= 7 and np.mean(agreements) > 9 and min(agreements) < 10


def test_referring_expressions_single_out_their_object():
  for objects in scenes():
    expressions = referring_expressions(objects)
    assert {index for _, index in expressions} == set(range(len(objects)))
    for expression, index in expressions:
      assert resolve(expression, objects) == [index], (expression, objects)


# Object recall.

def test_object_recall_scores_ground_truth_swaps_and_empty():
  example = make_example(0, "test", 3, 64)
  objects = example["objects"]
  as_tfds = {"colour": [o["colour"] for o in objects], "label": [o["label"] for o in objects]}
  assert all(object_recall(caption, as_tfds) == 1.0 for caption in example["captions"])
  red_circle, blue_square = (0, 0), (4, 1)
  scene = [red_circle, blue_square]
  assert object_recall("A blue square and a red circle.", scene) == 1.0
  assert object_recall("a big red disc on the left, a tiny violet box", scene) == 0.5
  assert object_recall("a blue circle and a red square", scene) == 0.0
  assert object_recall("a red square and a circle", scene) == 0.0  # the colour must be attached to its shape
  assert object_recall("a circle that is red next to a square in blue", scene) == 1.0
  assert object_recall("", scene) == 0.0
  assert object_recall("two red circles", [red_circle, red_circle, blue_square]) == pytest.approx(2 / 3)
  assert object_recall("the red circle is above the red circle", [red_circle, red_circle]) == 0.5
  assert mentioned_objects(b"three blue squares") == {blue_square: 3}
  scores = batch_object_recall(["a red circle", "a blue square"], [scene, scene])
  np.testing.assert_allclose(scores, [0.5, 0.5])


# Command line.

def test_build_cli_reuses_a_build_and_reports_a_summary(shapes_data_dir, capsys):
  from vlp_jax.data.builders import build

  summary = build.main(["--dataset", "shapes", "--config", "64px", "--data_dir", shapes_data_dir,
                        "--train_size", "256", "--validation_size", "64", "--test_size", "64"])
  assert summary.name == f"shapes/{FIXTURE_CONFIG}" and summary.build_seconds == 0.0
  assert summary.examples_per_split == {"train": 256, "validation": 64, "test": 64}
  assert 0.0 <= summary.description_collision_fraction < 0.2
  assert '"examples_per_split"' in capsys.readouterr().out


def test_build_cli_builds_a_fresh_tiny_split(tmp_path):
  from vlp_jax.data.builders import build

  summary = build.build("shapes", str(tmp_path), train_size=6, validation_size=2, test_size=3, seed=7)
  assert summary.name == "shapes/64px_train6_validation2_test3_seed7" and summary.build_seconds > 0
  assert summary.examples_per_split == {"train": 6, "validation": 2, "test": 3}
