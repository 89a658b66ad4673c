"""`vlp_jax.pipelines`: image preprocessing, run settings, and BLIP conventions for runs."""
import ml_collections
import numpy as np
import pytest
from transformers import BlipImageProcessorPil

from vlp_jax import pipelines


@pytest.mark.parametrize("shape", [(40, 48), (57, 29), (16, 16)])
def test_bicubic_preprocessing_equals_blip_image_processor(shape):
  image = np.random.default_rng(0).integers(0, 256, (*shape, 3), np.uint8)
  processor = BlipImageProcessorPil(size={"height": 24, "width": 20})
  expected = processor(images=[image], return_tensors="np")["pixel_values"]
  settings = pipelines.ImageSettings(height=24, width=20)
  ours = pipelines.preprocess_images([image], settings)
  assert ours.shape == (1, 24, 20, 3) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, expected.transpose(0, 2, 3, 1), atol=1e-5)


def test_run_image_settings_follow_eval_preprocessing():
  config = ml_collections.ConfigDict({"data": {
      "preprocess_eval": "decode|resize(64)|normalize('imagenet')|pick_caption|tokenize"}})
  settings = pipelines.run_image_settings(config, 64)
  assert (settings.height, settings.resize_backend, settings.resample) == (64, "tf", "bilinear")
  np.testing.assert_allclose(settings.mean, (0.485, 0.456, 0.406), atol=1e-3)
  explicit = ml_collections.ConfigDict({"data": {
      "preprocess_eval": "decode|resize(8)|normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))"}})
  assert pipelines.run_image_settings(explicit, 8).std == (0.25, 0.25, 0.25)
  raw = ml_collections.ConfigDict({"data": {"preprocess_eval": "decode|resize(8)"}})
  assert not pipelines.run_image_settings(raw, 8).do_normalize


def test_tf_resize_matches_our_data_pipeline():
  import tensorflow as tf

  from vlp_jax.data import preprocess_ops
  image = np.random.default_rng(1).integers(0, 256, (40, 30, 3), np.uint8)
  settings = pipelines.ImageSettings(height=16, width=16, resample="bilinear",
                                     resize_backend="tf")
  example = preprocess_ops.normalize("clip")(preprocess_ops.resize(16)(
      {"image": tf.constant(image)}))
  np.testing.assert_allclose(pipelines.preprocess_images([image], settings)[0],
                             example["image"].numpy(), atol=1e-5)


def test_load_rejects_unknown_directories(tmp_path):
  with pytest.raises(FileNotFoundError, match="vlp_config.json"):
    pipelines.load(str(tmp_path))
