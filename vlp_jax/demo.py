"""The quick-start demo behind `make demo`.

    python -m vlp_jax.demo --data_dir data --workdir runs/demo [--total_steps N]

1. builds the synthetic `shapes` dataset (64 px, 10k/1k/1k) under `--data_dir`;
2. trains a SentencePiece tokenizer on its training captions;
3. shows one training batch (shapes, a decoded caption, the boxes);
4. trains `configs/blip.py:tiny` with the sharded trainer on CPU and prints its metrics
   (training losses and the held-out retrieval / ITM / captioning metrics) as JSON.
A finished run is not retrained: delete `--workdir` to start over.
"""
import argparse
import dataclasses
import json
import os
import sys

if __name__ == "__main__":  # before jax and TensorFlow load: see vlp_jax.train.host_allocator
  from vlp_jax.train.host_allocator import reexec_under_tbbmalloc
  reexec_under_tbbmalloc(["-m", "vlp_jax.demo", *sys.argv[1:]])

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from vlp_jax.data import pipeline
from vlp_jax.data import tokenizer as tokenizer_lib
from vlp_jax.data.builders import build as build_lib
from vlp_jax.train import trainer
from vlp_jax.train.config import load_config_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "blip.py:tiny")
# BPE over lower-cased captions with pieces that may span words ("▁in▁the▁top"), as
# configs/blip.py:tiny expects: captions fit its 32 tokens.
TOKENIZER_VOCAB_SIZE = 300


def prepare_data(data_dir: str) -> tuple[str, str]:
  """Builds shapes 64 px and its tokenizer; returns (TFDS name, tokenizer path)."""
  summary = build_lib.build("shapes", data_dir, config="64px")
  print("dataset:", json.dumps(dataclasses.asdict(summary)), flush=True)
  tokenizer_path = os.path.join(data_dir, "shapes_64px_bpe_multiword.model")
  if not os.path.exists(tokenizer_path):
    tokenizer_lib.train_sentencepiece(
        tokenizer_lib.dataset_captions(summary.name, data_dir), TOKENIZER_VOCAB_SIZE,
        tokenizer_path, model_type="bpe", lower_case=True, split_by_whitespace=False)
  print(f"tokenizer: {tokenizer_path}", flush=True)
  return summary.name, tokenizer_path


def show_batch(data_config, tokenizer_path: str) -> None:
  """Prints one 4-example training batch: array shapes, a caption, the first image's boxes."""
  data_config = data_config.copy_and_resolve_references()
  data_config.preprocess += "|pad_objects(4)"
  batch = next(pipeline.make_pipeline(data_config, split="train", train=True,
                                      global_batch_size=4, seed=0))
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_path)
  print("batch:", {key: f"{value.dtype}{list(value.shape)}" for key, value in batch.items()})
  print("caption[0]:", repr(tokenizer.decode(batch["text_ids"][0].tolist())))
  boxes = batch["boxes"][0][batch["box_valid"][0]]
  print("boxes[0] (normalised xyxy):", np.round(boxes, 3).tolist(), flush=True)


def main(argv: list[str] | None = None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default="data")
  parser.add_argument("--workdir", default="runs/demo")
  parser.add_argument("--total_steps", type=int, default=None,
                      help="training steps (default: the tiny config's)")
  args = parser.parse_args(argv)
  pipeline.hide_gpus_from_tensorflow()
  name, tokenizer_path = prepare_data(args.data_dir)
  config = load_config_file(CONFIG)
  config.data.update(name=name, data_dir=os.path.abspath(args.data_dir),
                     tokenizer=os.path.abspath(tokenizer_path))
  if args.total_steps:
    config.total_steps = args.total_steps
  show_batch(config.data, tokenizer_path)
  print(f"training {CONFIG} for {config.total_steps} steps in {args.workdir} ...", flush=True)
  result = trainer.train(config, args.workdir)
  print(trainer.result_summary(result), flush=True)
  return result.eval_metrics


if __name__ == "__main__":
  main()
