"""End to end: `configs/e2e_vlp.py:tiny` (shrunk) trains on shapes with the trainer, evaluators run."""
import os

import numpy as np
import pytest

from vlp_jax.train import trainer
from vlp_jax.train.config import load_config_file

SHAPES = "shapes/64px_train256_validation64_test64"
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.mark.slow
def test_tiny_e2e_vlp_trains_and_evaluates_on_shapes(shapes_data_dir, shapes_tokenizer,
                                                     tmp_path):
  config = load_config_file(os.path.join(REPO_ROOT, "configs", "e2e_vlp.py:tiny"))
  config.data.update(name=SHAPES, data_dir=shapes_data_dir, tokenizer=shapes_tokenizer,
                     shuffle_buffer=64, max_text_length=16)
  config.model.update(width=32, heads=2, mlp_dim=64, encoder_layers=1, decoder_layers=2,
                      resnet_stage_widths=(8, 16, 32), resnet_stem_width=8, max_text_length=16,
                      eval_caption_max_length=8)
  config.update(total_steps=3, global_batch_size=16, eval_batch_size=32, log_every_steps=1,
                checkpoint_every_steps=3, eval_every_steps=0)
  result = trainer.train(config, str(tmp_path / "run"))
  assert result.status == "completed" and result.step == 3
  for name in ("loss", "mlm_loss", "itm_loss", "detection_loss", "loss_ce", "loss_bbox",
               "loss_giou", "loss_ce_aux", "attribute_loss", "lm_loss"):
    assert np.isfinite(result.metrics[name]), (name, result.metrics)
  for name in ("detection/ap", "detection/ap50", "itm/accuracy", "caption/object_recall"):
    assert 0.0 <= result.eval_metrics[name] <= 1.0, result.eval_metrics
  for name in ("bleu4", "cider"):
    assert np.isfinite(result.eval_metrics[f"caption/{name}"]), result.eval_metrics
