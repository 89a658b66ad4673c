"""Throughput of the training input pipeline (JPEG decode, random resized crop, flip, tokenise, batch).

    python benchmarks/input_pipeline.py --image_size 224 [--data_dir data --batches 100]

Builds a `shapes` set with a modest train split under data_dir if it is missing, trains a
SentencePiece tokenizer on its captions (once), then times `make_pipeline(train=True)` after
a warm-up. The last line printed is `examples_per_s=X`.
"""
import argparse
import os
import resource
import time

import tensorflow as tf

from vlp_jax.data import pipeline
from vlp_jax.data.builders.build import build
from vlp_jax.data.tokenizer import dataset_captions, train_sentencepiece


def prepare(data_dir: str, image_size: int, num_train: int) -> tuple[str, str]:
  """Builds (or reuses) shapes/<size>px with `num_train` train examples; returns (TFDS name, tokenizer path)."""
  summary = build("shapes", data_dir, config=f"{image_size}px", train_size=num_train, validation_size=16,
                  test_size=16)
  tokenizer = os.path.join(data_dir, f"{summary.name.replace('/', '_')}.model")
  if not os.path.exists(tokenizer):
    train_sentencepiece(dataset_captions(summary.name, data_dir), vocab_size=1000, output=tokenizer)
  return summary.name, tokenizer


def measure(data_config: dict, batch_size: int, warmup_batches: int, batches: int) -> tuple[float, float]:
  """(examples per second, CPU milliseconds per example) over `batches` batches after a warm-up.

  CPU time per example (all threads of this process) is what other processes on a shared
  machine do not disturb much; examples/s is what a trainer gets on this machine right now.
  """
  iterator = pipeline.make_pipeline(data_config, split="train", train=True, global_batch_size=batch_size, seed=0,
                                    process_index=0, process_count=1)
  for _ in range(warmup_batches):
    next(iterator)
  start, start_cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(batches):
    next(iterator)
  examples = batches * batch_size
  return examples / (time.perf_counter() - start), 1000 * (_cpu_seconds() - start_cpu) / examples


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--image_size", type=int, default=224, choices=(64, 224))
  parser.add_argument("--data_dir", default="data")
  parser.add_argument("--num_train", type=int, default=2048, help="train examples of the shapes build")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--warmup_batches", type=int, default=20)
  parser.add_argument("--batches", type=int, default=100)
  parser.add_argument("--max_text_length", type=int, default=32)
  parser.add_argument("--preprocess", default=None, help="op spec (default: the standard training spec)")
  args = parser.parse_args(argv)
  tf.config.set_visible_devices([], "GPU")
  name, tokenizer = prepare(args.data_dir, args.image_size, args.num_train)
  preprocess = args.preprocess or (f"decode|random_resized_crop({args.image_size})|pick_caption|flip_lr|"
                                   "value_range(-1,1)|tokenize")
  data_config = {"name": name, "data_dir": args.data_dir, "tokenizer": tokenizer,
                 "max_text_length": args.max_text_length, "preprocess": preprocess, "shuffle_buffer": 1000}
  print(f"dataset={name} batch_size={args.batch_size} preprocess={preprocess!r} cpus={os.cpu_count()}")
  examples_per_s, cpu_ms = measure(data_config, args.batch_size, args.warmup_batches, args.batches)
  print(f"cpu_ms_per_example={cpu_ms:.3f} (at most {os.cpu_count() * 1000 / cpu_ms:.0f} examples/s on "
        f"{os.cpu_count()} idle cores), load average {os.getloadavg()[0]:.1f}")
  print(f"examples_per_s={examples_per_s:.0f}")


if __name__ == "__main__":
  main()
