"""Builds a dataset and prints a summary.

    python -m vlp_jax.data.builders.build --dataset shapes --config 64px --data_dir data \\
        [--train_size 256 --validation_size 64 --test_size 64 --seed 0]
    python -m vlp_jax.data.builders.build --dataset coco_format --root /data/coco --data_dir data
"""
import argparse
import dataclasses
import json
import time

import tensorflow as tf
import tensorflow_datasets as tfds

from vlp_jax.data.builders.collisions import description_collision_fraction


@dataclasses.dataclass
class BuildSummary:
  name: str  # "<dataset>/<config>", what tfds.load takes with the data_dir
  data_dir: str
  examples_per_split: dict[str, int]
  build_seconds: float  # 0 when it was already built
  description_collision_fraction: float | None  # on the test split, for shapes only


def build(dataset: str, data_dir: str, **builder_kwargs) -> BuildSummary:
  """Builds (or reuses) `dataset` under data_dir; builder_kwargs go to `tfds.builder` (None values dropped)."""
  import vlp_jax.data.builders  # noqa: F401  (registers the builders)

  builder = tfds.builder(dataset, data_dir=data_dir, **{k: v for k, v in builder_kwargs.items() if v is not None})
  start = time.perf_counter()
  already_built = tf.io.gfile.exists(builder.data_dir) and builder.info.splits
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  seconds = 0.0 if already_built else time.perf_counter() - start
  collision = None
  if dataset == "shapes" and "test" in builder.info.splits:
    test = builder.as_dataset(split="test", decoders={"image": tfds.decode.SkipDecoding()})
    collision = description_collision_fraction(example["objects"] for example in tfds.as_numpy(test))
  return BuildSummary(
      name=f"{dataset}/{builder.builder_config.name}", data_dir=data_dir,
      examples_per_split={name: split.num_examples for name, split in builder.info.splits.items()},
      build_seconds=round(seconds, 2), description_collision_fraction=collision)


def main(argv: list[str] | None = None) -> BuildSummary:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", choices=("shapes", "coco_format"), default="shapes")
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--config", default=None, help="shapes: 64px (default) or 224px")
  for name in ("train_size", "validation_size", "test_size", "seed"):
    parser.add_argument(f"--{name}", type=int, default=None, help="shapes only")
  parser.add_argument("--root", default=None, help="coco_format: the COCO-format folder")
  args = parser.parse_args(argv)
  tf.config.set_visible_devices([], "GPU")
  if args.dataset == "shapes":
    kwargs = {"config": args.config, "train_size": args.train_size, "validation_size": args.validation_size,
              "test_size": args.test_size, "seed": args.seed}
  else:
    if not args.root:
      parser.error("--root is required for coco_format")
    kwargs = {"root": args.root}
  summary = build(args.dataset, args.data_dir, **kwargs)
  print(json.dumps(dataclasses.asdict(summary), indent=2))
  return summary


if __name__ == "__main__":
  main()
