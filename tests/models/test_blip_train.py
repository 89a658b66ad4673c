"""End to end: `configs/blip.py:tiny` (shrunk) trains on the synthetic shapes set with the trainer."""
import os

import numpy as np
import pytest

from vlp_jax.train import trainer
from vlp_jax.train.config import load_config_file

SHAPES = "shapes/64px_train256_validation64_test64"
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.mark.slow
def test_tiny_blip_trains_and_evaluates_on_shapes(shapes_data_dir, shapes_tokenizer,
                                                  tmp_path):
  config = load_config_file(os.path.join(REPO_ROOT, "configs", "blip.py:tiny"))
  config.data.update(name=SHAPES, data_dir=shapes_data_dir, tokenizer=shapes_tokenizer,
                     shuffle_buffer=64, max_text_length=16)
  config.model.update(vision_layers=1, text_layers=1, max_text_length=16, queue_size=32,
                      eval_rerank_k=4, eval_itm_batch_size=32, eval_caption_max_length=10)
  config.update(total_steps=4, global_batch_size=16, eval_batch_size=32, log_every_steps=1,
                checkpoint_every_steps=4, eval_every_steps=0)
  result = trainer.train(config, str(tmp_path / "run"))
  assert result.status == "completed" and result.step == 4
  for name in ("loss", "itc_loss", "itm_loss", "lm_loss"):
    assert np.isfinite(result.metrics[name]), (name, result.metrics)
  for name in ("img2txt_r1", "txt2img_r1", "r_mean"):
    assert 0.0 <= result.eval_metrics[f"retrieval/{name}"] <= 1.0, result.eval_metrics
  for name in ("bleu4", "cider"):
    assert np.isfinite(result.eval_metrics[f"caption/{name}"]), result.eval_metrics
