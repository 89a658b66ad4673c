"""VQA v2 accuracy, answer normalisation and soft targets on hand-computed cases."""
import numpy as np
import pytest

from vlp_jax.evaluators import vqa_metrics as vm


@pytest.mark.parametrize("raw,normalised", [
    ("Two", "2"),
    ("The dog.", "dog"),
    ("t-shirt", "t shirt"),
    ("yes !", "yes"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("dont know", "don't know"),
    ("  A Red\tBall\n", "red ball"),
    ("none", "0"),
])
def test_normalize_answer(raw, normalised):
  assert vm.normalize_answer(raw) == normalised


@pytest.mark.parametrize("matches,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0),
                                              (10, 1.0)])
def test_accuracy_averages_leave_one_out_subsets(matches, expected):
  answers = ["cat"] * matches + ["dog"] * (10 - matches)
  assert vm.vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_accuracy_normalises_prediction_and_answers():
  answers = ["2", "two", "Two.", "3", "3", "3", "3", "4", "4", "4"]
  assert vm.vqa_accuracy("TWO", answers) == pytest.approx(0.9)


def test_vqa_metrics_mean_and_missing_question():
  answers = {1: ["yes"] * 10, 2: ["no"] * 9 + ["yes"]}
  metrics = vm.vqa_metrics({1: "yes", 2: "yes"}, answers)
  assert metrics == {"vqa/accuracy": pytest.approx((1.0 + 0.3) / 2)}
  with pytest.raises(ValueError):
    vm.vqa_metrics({3: "yes"}, answers)


def test_soft_answer_target():
  vocabulary = {"2": 0, "red": 1, "blue": 2, "green": 3}
  answers = ["2", "2", "two", "2", "red", "Red", "blue", "purple", "purple", "purple"]
  np.testing.assert_allclose(vm.soft_answer_target(answers, vocabulary),
                             [1.0, 2 / 3, 1 / 3, 0.0], rtol=1e-6)


def test_build_answer_vocabulary_by_frequency():
  vocabulary = vm.build_answer_vocabulary([["yes", "Yes", "no"], ["two", "2", "no"], ["cat"]],
                                          size=3)
  assert vocabulary == {"2": 0, "no": 1, "yes": 2}
