"""BLIP family: ViT + MED, ITC (momentum distillation, queue) + ITM (hard negatives) + LM.

  python -m vlp_jax.train --config=configs/blip.py:tiny --workdir=runs/blip_tiny \
      --config.data.data_dir=data --config.data.tokenizer=<path to the shapes SentencePiece model>
  python -m vlp_jax.train --config=configs/blip.py:base --workdir=<dir> --config.data.data_dir=<dir> \
      --config.data.tokenizer=<BERT vocab.txt with [ENC]/[DEC] added>
Variants: tiny (64 px shapes, 8 px patches, 2+2 layers of width 64; ~10 CPU minutes with
the shapes build; `tests/models/test_blip_learning.py` checks what it learns), base (ViT-B/16 + BERT-base,
224 px, batch 2,880, queue 57,600, AdamW 3e-4 with wd 0.05, 20 epochs of 14M pairs).
The vocabulary size and special ids come from `data.tokenizer`.
"""
import ml_collections

from vlp_jax.models.registry import register_family
from vlp_jax.train.config import run_config

register_family("blip", "vlp_jax.models.blip_family")

_PRETRAIN_PAIRS = 14_000_000


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
  variant = variant or "tiny"
  config = run_config("blip", variant)
  config.optimizer.weight_decay = 0.05
  config.optimizer.schedule = "cosine"
  if variant == "tiny":
    # ~8 minutes of an unloaded 2-core CPU (about 1.7 steps/s), 2.6 epochs of shapes/64px;
    # evaluated once at the end (retrieval with ITM re-ranking, ITM accuracy, greedy captions).
    config.total_steps = 800
    config.global_batch_size = 32
    config.eval_batch_size = 200
    config.log_every_steps = 50
    config.checkpoint_every_steps = 800
    config.eval_every_steps = 0
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 50
    config.data.shuffle_buffer = 2000
  else:
    config.global_batch_size = 2880
    steps_per_epoch = _PRETRAIN_PAIRS // config.global_batch_size
    config.total_steps = 20 * steps_per_epoch
    config.model.alpha_ramp_steps = steps_per_epoch  # BLIP ramps alpha over the first epoch
    config.optimizer.learning_rate = 3e-4
    config.optimizer.warmup_steps = 3000
    config.dtype = "bfloat16"
    config.remat_policy = "dots"
  return config
