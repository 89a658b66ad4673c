"""CapFilt (BLIP): caption a TFDS split, filter its texts with ITM, write a new dataset.

    python -m vlp_jax.capfilt --captioner RUN_OR_DIR --filter RUN_OR_DIR \\
        --dataset shapes/64px --split train --data_dir data --output_dir data/capfilt \\
        [--num_samples 1 --top_p 0.9 --max_length 30 --min_length 5 --prompt "a picture of " \\
         --itm_threshold 0.5 --batch_size 32 --seed 0 --copy_splits validation,test]

Captioner and filter are anything `vlp_jax.pipelines.load` takes (a training run or a
converted directory; BLIP finetunes them separately, they may also be one run). For every
image of the split, in the split's order:
1. the captioner samples `num_samples` synthetic captions with nucleus sampling (`[DEC]` +
   prompt, default the captioner's own prompt; the prompt is stripped; `max_length` counts
   every token, as `pipelines` does);
2. the filter scores each original and synthetic text with its ITM match probability;
   texts with probability >= `itm_threshold` are kept (empty texts are dropped unscored);
3. the image is written with its kept texts as `captions` (originals first), every other
   feature unchanged (the encoded image is copied, not re-encoded); an image with no kept
   text is dropped.
Sampling draws from `--seed` and the batch's index: the same seed and batch size give the
same dataset.

Output: a TFDS dataset `--output_name` (default `capfilt/<dataset>`, e.g.
`capfilt/shapes_64px`) under `--output_dir`, with the source's features
(`vlp_jax.data.builders.stored`). It holds the filtered split under the same split name and
the `--copy_splits` unchanged (default: every other split of the source, so that evaluation
splits stay where a config looks for them). Pretrain on it with
`--config.data.name=capfilt/shapes_64px --config.data.data_dir=data/capfilt`.
When nothing is kept no dataset is written. The report (also printed as JSON) goes to
`--report` (default `<output_dir>/capfilt_report.json`): images read / kept / dropped,
original and synthetic texts kept / dropped (`*_empty`: how many dropped ones were empty),
the settings, and the dataset's name, folder and split sizes.
"""
import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax import pipelines
from vlp_jax.models import blip

Example = dict[str, Any]
Sampler = Callable[[list[np.ndarray], jax.Array], list[list[str]]]
Scorer = Callable[[list[np.ndarray], list[str]], np.ndarray]


@dataclasses.dataclass
class Counts:
  """What CapFilt kept and dropped."""
  images_read: int = 0
  images_kept: int = 0
  images_dropped: int = 0
  original_kept: int = 0
  original_dropped: int = 0
  synthetic_kept: int = 0
  synthetic_dropped: int = 0
  original_empty: int = 0  # of the dropped, those empty (not scored)
  synthetic_empty: int = 0


def make_sampler(captioner: pipelines.BlipPipeline, *, num_samples: int, top_p: float,
                 max_length: int, min_length: int, prompt: str) -> Sampler:
  """sample(uint8 images [H, W, 3] x B, rng) -> B lists of `num_samples` captions, from
  `blip.caption` with nucleus sampling; the prompt is stripped."""
  if "caption" not in captioner.tasks:
    raise ValueError(f"the captioner cannot caption (it has {captioner.tasks})")
  prompt_ids = captioner.tokenizer.encode(prompt) if prompt else []
  prefix = jnp.asarray(prompt_ids, jnp.int32) if prompt_ids else None
  skip = 1 + len(prompt_ids)  # [DEC] and the prompt

  @jax.jit
  def sequences(params: Any, images: jax.Array, rng: jax.Array) -> jax.Array:
    images = jnp.repeat(images, num_samples, axis=0)
    return blip.caption(captioner.model, params, images, max_length=max_length,
                        method="sample", top_p=top_p, min_length=min_length,
                        prompt_ids=prefix, rng=rng).sequences

  def sample(images: list[np.ndarray], rng: jax.Array) -> list[list[str]]:
    rows = np.asarray(sequences(captioner.params, captioner.preprocess(images), rng))
    texts = [captioner.tokenizer.decode(row[skip:]).strip() for row in rows]
    return [texts[i:i + num_samples] for i in range(0, len(texts), num_samples)]
  return sample


def make_scorer(filter_model: pipelines.BlipPipeline, batch_size: int) -> Scorer:
  """score(uint8 images x N, texts x N) -> ITM match probabilities [N], in chunks of
  `batch_size` pairs (the last one padded, so that every chunk has one shape of images)."""

  def score(images: list[np.ndarray], texts: list[str]) -> np.ndarray:
    chunks = []
    for start in range(0, len(texts), batch_size):
      chunk_images, chunk_texts = images[start:start + batch_size], texts[start:start + batch_size]
      pad = batch_size - len(chunk_texts)
      chunks.append(filter_model.itm_scores(chunk_images + chunk_images[:1] * pad,
                                            chunk_texts + chunk_texts[:1] * pad)[:len(chunk_texts)])
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)
  return score


def filter_batch(images: list[np.ndarray], originals: list[list[str]],
                 synthetic: list[list[str]], score: Scorer, threshold: float,
                 counts: Counts) -> list[list[str]]:
  """Kept texts per image (originals first) of the texts with ITM probability >= threshold;
  updates `counts`."""
  pairs = [(i, text, is_synthetic) for i in range(len(images))
           for is_synthetic, texts in ((False, originals[i]), (True, synthetic[i]))
           for text in texts if text.strip()]
  probabilities = score([images[i] for i, _, _ in pairs], [text for _, text, _ in pairs])
  kept: list[list[str]] = [[] for _ in images]
  kept_originals = kept_synthetic = 0
  for (i, text, is_synthetic), probability in zip(pairs, probabilities):
    if probability >= threshold:
      kept[i].append(text)
      kept_synthetic += is_synthetic
      kept_originals += not is_synthetic
  counts.original_kept += kept_originals
  counts.original_dropped += sum(map(len, originals)) - kept_originals
  counts.synthetic_kept += kept_synthetic
  counts.synthetic_dropped += sum(map(len, synthetic)) - kept_synthetic
  counts.original_empty += sum(not text.strip() for texts in originals for text in texts)
  counts.synthetic_empty += sum(not text.strip() for texts in synthetic for text in texts)
  counts.images_kept += sum(bool(texts) for texts in kept)
  counts.images_dropped += sum(not texts for texts in kept)
  counts.images_read += len(images)
  return kept


def _batches(examples: Iterable[Example], size: int) -> Iterator[list[Example]]:
  batch: list[Example] = []
  for example in examples:
    batch.append(example)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def select_texts(examples: Iterable[Example], sample: Sampler, score: Scorer, *,
                 threshold: float, batch_size: int, seed: int) -> tuple[list[list[str]], Counts]:
  """(kept texts of every example in order, counts). `examples` carry `pixels` (uint8
  [H, W, 3]) and `captions`; batch b samples with fold_in(key(seed), b)."""
  counts, kept = Counts(), []
  for index, batch in enumerate(_batches(examples, batch_size)):
    images = [example["pixels"] for example in batch]
    padded = images + images[-1:] * (batch_size - len(images))  # one shape for the sampler
    synthetic = sample(padded, jax.random.fold_in(jax.random.key(seed), index))[:len(images)]
    originals = [[text.decode("utf-8") for text in example["captions"]] for example in batch]
    kept.extend(filter_batch(images, originals, synthetic, score, threshold, counts))
  return kept, counts


def read_split(builder: Any, split: str, *, decode: bool) -> Iterator[Example]:
  """The split's examples as numpy, in file order: `image` its encoded bytes, and with
  `decode` also `pixels` uint8 [H, W, 3]."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset = builder.as_dataset(split=split, shuffle_files=False,
                               decoders={"image": tfds.decode.SkipDecoding()},
                               read_config=tfds.ReadConfig(interleave_cycle_length=1,
                                                           add_tfds_id=False))
  if decode:
    dataset = dataset.map(lambda example: {**example, "pixels": tf.io.decode_image(
        example["image"], channels=3, expand_animations=False)})
  return iter(tfds.as_numpy(dataset))


def _with_captions(examples: Iterable[Example],
                   captions: Sequence[list[str]] | None) -> Iterator[tuple[int, Example]]:
  """(index, example) with `captions` replaced (examples with none left out), or unchanged."""
  for index, example in enumerate(examples):
    if captions is None:
      yield index, example
    elif captions[index]:
      yield index, {**example, "captions": captions[index]}


def default_output_name(dataset: str) -> str:
  """"shapes/64px" -> "capfilt/shapes_64px"."""
  return "capfilt/" + "".join(ch if ch.isalnum() else "_" for ch in dataset)


def load_blip(path: str) -> pipelines.BlipPipeline:
  """`pipelines.load(path)`, which must be a BLIP model."""
  model = pipelines.load(path)
  if not isinstance(model, pipelines.BlipPipeline):
    raise ValueError(f"{path} is not a BLIP model ({type(model).__name__})")
  return model


def run(args: argparse.Namespace) -> dict[str, Any]:
  """CapFilt as the module docstring says; returns the report."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from vlp_jax.data.builders.stored import store_examples  # pylint: disable=g-import-not-at-top
  from vlp_jax.data.pipeline import hide_gpus_from_tensorflow  # pylint: disable=g-import-not-at-top
  hide_gpus_from_tensorflow()  # also registers the builders (shapes, coco_format)
  source = tfds.builder(args.dataset, data_dir=args.data_dir)
  if args.split not in source.info.splits:
    raise ValueError(f"{args.dataset} has no split {args.split!r} ({list(source.info.splits)})")
  copy_splits = ([name for name in source.info.splits if name != args.split]
                 if args.copy_splits is None else [s for s in args.copy_splits.split(",") if s])
  name = args.output_name or default_output_name(args.dataset)
  if os.path.exists(os.path.join(args.output_dir, *name.split("/"))):
    raise FileExistsError(f"{args.output_dir} already holds {name}")
  captioner = load_blip(args.captioner)
  filter_model = captioner if args.filter == args.captioner else load_blip(args.filter)
  prompt = captioner.default_prompt if args.prompt is None else args.prompt
  sample = make_sampler(captioner, num_samples=args.num_samples, top_p=args.top_p,
                        max_length=args.max_length, min_length=args.min_length, prompt=prompt)
  kept, counts = select_texts(read_split(source, args.split, decode=True), sample,
                              make_scorer(filter_model, args.batch_size),
                              threshold=args.itm_threshold, batch_size=args.batch_size,
                              seed=args.seed)
  dataset_dir, splits = None, {}
  if counts.images_kept:
    split_examples = {args.split: _with_captions(read_split(source, args.split, decode=False),
                                                 kept)}
    split_examples.update({split: _with_captions(read_split(source, split, decode=False), None)
                           for split in copy_splits})
    dataset_dir = store_examples(
        name, source.info.features, split_examples, args.output_dir,
        description=f"CapFilt of {args.dataset} ({args.split}), ITM threshold "
                    f"{args.itm_threshold}, seed {args.seed}")
    splits = {split: info.num_examples for split, info in
              tfds.builder(name, data_dir=args.output_dir).info.splits.items()}
  report = {**dataclasses.asdict(counts),
            "source": {"dataset": args.dataset, "data_dir": args.data_dir, "split": args.split},
            "output": {"name": name if dataset_dir else None, "data_dir": args.output_dir,
                       "dataset_dir": dataset_dir, "splits": splits},
            "settings": {"captioner": args.captioner, "filter": args.filter,
                         "num_samples": args.num_samples, "top_p": args.top_p,
                         "max_length": args.max_length, "min_length": args.min_length,
                         "prompt": prompt, "itm_threshold": args.itm_threshold,
                         "seed": args.seed}}
  report_path = args.report or os.path.join(args.output_dir, "capfilt_report.json")
  os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
  with open(report_path, "w", encoding="utf-8") as stream:
    json.dump(report, stream, indent=2)
  return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m vlp_jax.capfilt", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--captioner", required=True, help="training run or converted directory")
  parser.add_argument("--filter", required=True, help="training run or converted directory")
  parser.add_argument("--dataset", required=True, help="TFDS name, e.g. shapes/64px")
  parser.add_argument("--split", default="train")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir of --dataset")
  parser.add_argument("--output_dir", required=True, help="TFDS data_dir to write to")
  parser.add_argument("--output_name", default=None, help="default: capfilt/<dataset>")
  parser.add_argument("--copy_splits", default=None,
                      help="comma-separated splits copied unchanged (default: all others)")
  parser.add_argument("--num_samples", type=int, default=1, help="synthetic captions per image")
  parser.add_argument("--top_p", type=float, default=0.9)
  parser.add_argument("--max_length", type=int, default=30,
                      help="caption tokens, [DEC] and prompt included")
  parser.add_argument("--min_length", type=int, default=5,
                      help="caption tokens, [DEC] and prompt included")
  parser.add_argument("--prompt", default=None, help="default: the captioner's prompt")
  parser.add_argument("--itm_threshold", type=float, default=0.5)
  parser.add_argument("--batch_size", type=int, default=32, help="images and ITM pairs per step")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--report", default=None, help="default: <output_dir>/capfilt_report.json")
  args = parser.parse_args(argv)
  if args.num_samples < 1 or args.batch_size < 1:
    parser.error("--num_samples and --batch_size must be >= 1")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  try:
    report = run(parse_args(argv))
  except (FileNotFoundError, FileExistsError, ValueError) as error:
    print(f"capfilt failed: {error}", file=sys.stderr, flush=True)
    return 2
  print(json.dumps(report), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
