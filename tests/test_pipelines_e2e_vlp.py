"""`vlp_jax.pipelines.load(RUN)` for an E2E-VLP training run: detection in input pixels and
captioning on raw uint8 images of any size, agreeing with the model's own functions."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vlp_jax import pipelines
from vlp_jax.models import e2e_vlp, e2e_vlp_family
from vlp_jax.train import checkpoint, trainer
from vlp_jax.train.config import load_config_file

SHAPES = "shapes/64px_train256_validation64_test64"
REPO_ROOT = os.path.abspath(os.path.dirname(os.path.dirname(__file__)))


@pytest.fixture(scope="module")
def run_dir(shapes_data_dir, shapes_tokenizer, tmp_path_factory):
  """A shrunk `configs/e2e_vlp.py:tiny` trained for a few steps with scanned layers."""
  workdir = tmp_path_factory.mktemp("e2e_vlp_run")
  config = load_config_file(os.path.join(REPO_ROOT, "configs", "e2e_vlp.py:tiny"))
  config.data.update(name=SHAPES, data_dir=shapes_data_dir, tokenizer=shapes_tokenizer,
                     shuffle_buffer=64, max_text_length=16)
  config.model.update(width=32, heads=2, mlp_dim=64, encoder_layers=1, decoder_layers=2,
                      resnet_stage_widths=(8, 16, 32), resnet_stem_width=8, max_text_length=16,
                      num_queries=5, eval_caption_max_length=8)
  config.update(total_steps=8, global_batch_size=16, log_every_steps=8, checkpoint_every_steps=8,
                eval_every_steps=0, scan_layers=True)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=0)
  run = str(workdir / "run")
  assert trainer.train(config, run).step == 8
  return run


@pytest.fixture(scope="module")
def images(shapes_data_dir):
  """Two shapes test images (64 px) and the second one stretched to 96 x 40 px."""
  examples = tfds.as_numpy(tfds.load(SHAPES, split="test", data_dir=shapes_data_dir).take(2))
  first, second = [example["image"] for example in examples]
  return [first, second, np.asarray(Image.fromarray(second).resize((40, 96)))]


@pytest.fixture(scope="module")
def pipe(run_dir):
  return pipelines.load(run_dir)


@pytest.mark.slow
def test_detect_gives_input_pixel_boxes_like_the_trained_model(run_dir, pipe, images):
  assert isinstance(pipe, pipelines.E2EVLPPipeline)
  results = pipe.detect(images)
  assert len(results) == len(images)
  for image, (boxes, labels, scores) in zip(images, results):
    height, width = image.shape[:2]
    assert boxes.dtype == np.float32 and labels.dtype == np.int32 and scores.dtype == np.float32
    assert boxes.shape == (pipe.config.num_queries, 4) and labels.shape == scores.shape == (5,)
    assert np.all(boxes[:, 2:] >= boxes[:, :2]) and np.all(boxes >= 0)
    assert np.all(boxes[:, [0, 2]] <= width) and np.all(boxes[:, [1, 3]] <= height)
    assert np.all(np.diff(scores) <= 0) and np.all((labels >= 0) & (labels < 5))

  # The run's own (scanned) model on its checkpoint params, fed the same preprocessed batch.
  with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as stream:
    run_config = ml_collections.ConfigDict(json.load(stream))
  assert run_config.scan_layers
  model = e2e_vlp.build_e2e_vlp(e2e_vlp_family.e2e_vlp_config_from(run_config),
                                scan_layers=True)
  params, _ = checkpoint.restore_params(run_dir)
  expected = e2e_vlp.detect(model, params, pipe.preprocess(images))
  for image, (boxes, labels, scores), (want_boxes, want_labels, want_scores) in zip(
      images, results, expected):
    scale = np.asarray(image.shape[:2], np.float32) / pipe.config.image_size
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(boxes, want_boxes * np.tile(scale[::-1], 2), rtol=1e-4, atol=1e-3)
  threshold = float(np.median(results[0][2]))
  kept = pipe.detect(images[:1], score_threshold=threshold)[0]
  assert np.all(kept[2] > threshold) and len(kept[2]) < len(results[0][2])


@pytest.mark.slow
def test_caption_decodes_the_models_captions(pipe, images):
  texts = pipe.caption(images, max_length=8, num_beams=1)
  assert len(texts) == len(images) and all(isinstance(text, str) for text in texts)
  sequences = jax.jit(lambda p, x: e2e_vlp.caption(pipe.model, p, x, max_length=8).sequences)(
      pipe.params, jnp.asarray(pipe.preprocess(images)))
  assert texts == [pipe.tokenizer.decode(row[1:]) for row in np.asarray(sequences)]
  beams = pipe.caption(images[:2], max_length=8, num_beams=2)
  assert len(beams) == 2 and all(isinstance(text, str) for text in beams)


def test_load_rejects_runs_of_other_families(tmp_path):
  with open(tmp_path / "config.json", "w", encoding="utf-8") as stream:
    json.dump({"model": {"family": "toy"}, "data": {"tokenizer": "x"}}, stream)
  with pytest.raises(ValueError, match="toy"):
    pipelines.load(str(tmp_path))
