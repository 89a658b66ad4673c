"""`python -m vlp_jax.capfilt` on 16 shapes images with a tiny random-weight BLIP run."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vlp_jax import capfilt, pipelines
from vlp_jax.data.pipeline import make_pipeline
from vlp_jax.models import blip_family

DATASET = "shapes/64px_train16_validation8_test8"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "red", "blue", "green",
         "circle", "square", "star", "triangle", "small", "large", "in", "left", "right",
         "top", "bottom", "corner", "and", "of", "."]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  import vlp_jax.data.builders  # noqa: F401  (registers shapes)
  path = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder(DATASET, data_dir=path).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, random_blip_run):
  """A tiny BLIP run (WordPiece vocab), random params perturbed by 0.5 N(0, 1) (spreads the
  ITM probabilities)."""
  return random_blip_run(
      str(tmp_path_factory.mktemp("run")), VOCAB, 0.5, image_size=32, patch_size=8,
      vision_width=16, vision_layers=1, vision_mlp_dim=32, text_width=16, text_layers=1,
      text_mlp_dim=32, max_text_length=16, embed_dim=8, queue_size=16)


@pytest.fixture(scope="module")
def source(data_dir, run_dir):
  """Source train images (uint8), originals and their ITM probabilities, by image_id."""
  examples = list(capfilt.read_split(tfds.builder(DATASET, data_dir=data_dir), "train",
                                     decode=True))
  model = pipelines.load(run_dir)
  originals = {int(e["image_id"]): [c.decode() for c in e["captions"]] for e in examples}
  images = {int(e["image_id"]): e["pixels"] for e in examples}
  probabilities = {key: model.itm_scores([images[key]] * len(texts), texts)
                   for key, texts in originals.items()}
  return {"model": model, "images": images, "originals": originals,
          "probabilities": probabilities}


def _argv(data_dir, run_dir, output_dir, threshold, seed=0, copy_splits=None):
  argv = ["--captioner", run_dir, "--filter", run_dir, "--dataset", DATASET, "--split", "train",
          "--data_dir", data_dir, "--output_dir", str(output_dir), "--itm_threshold",
          str(threshold), "--batch_size", "8", "--max_length", "10", "--min_length", "6",
          "--seed", str(seed)]
  return argv + ([] if copy_splits is None else ["--copy_splits", copy_splits])


def _run(*args, **kwargs):
  argv = _argv(*args, **kwargs)
  assert capfilt.main(argv) == 0
  with open(os.path.join(argv[argv.index("--output_dir") + 1], "capfilt_report.json"),
            encoding="utf-8") as stream:
    return json.load(stream)


def _written(report):
  builder = tfds.builder(report["output"]["name"], data_dir=report["output"]["data_dir"])
  dataset = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
  return {int(e["image_id"]): [c.decode() for c in e["captions"]]
          for e in tfds.as_numpy(dataset)}


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, data_dir, run_dir, source):
  """CapFilt at the median ITM probability of the originals (keeps some, drops some)."""
  threshold = float(np.median(np.concatenate(list(source["probabilities"].values()))))
  report = _run(data_dir, run_dir, tmp_path_factory.mktemp("capfilt"), threshold)
  return report, threshold


def test_counts_add_up_and_kept_texts_pass_the_filter(filtered, source):
  report, threshold = filtered
  num_originals = sum(map(len, source["originals"].values()))
  assert report["images_read"] == 16
  assert report["images_kept"] + report["images_dropped"] == 16
  assert report["original_kept"] + report["original_dropped"] == num_originals
  assert report["synthetic_kept"] + report["synthetic_dropped"] == 16  # one sample per image
  assert 0 < report["original_kept"] < num_originals
  written = _written(report)
  assert len(written) == report["images_kept"] == report["output"]["splits"]["train"]
  assert report["output"]["splits"]["validation"] == report["output"]["splits"]["test"] == 8
  model = source["model"]
  synthetic = []
  for image_id, texts in written.items():
    originals = source["originals"][image_id]
    expected = [text for text, p in zip(originals, source["probabilities"][image_id])
                if p >= threshold]
    assert texts[:len(expected)] == expected  # originals first, exactly those that pass
    synthetic += [(image_id, text) for text in texts[len(expected):]]
  assert len(synthetic) == report["synthetic_kept"]
  assert sum(map(len, written.values())) == report["original_kept"] + report["synthetic_kept"]
  if synthetic:
    assert all(isinstance(text, str) and text.strip() for _, text in synthetic)
    assert all(set(text.replace(".", " ").split()) <= set(VOCAB) for _, text in synthetic)
    probabilities = model.itm_scores([source["images"][i] for i, _ in synthetic],
                                     [text for _, text in synthetic])
    assert np.all(probabilities >= threshold - 1e-6)


def test_output_loads_through_make_pipeline(filtered, run_dir):
  report, _ = filtered
  defaults = blip_family.default_config("tiny")
  data, size = defaults.data, defaults.model.image_size
  data.update(name=report["output"]["name"], data_dir=report["output"]["data_dir"],
              tokenizer=os.path.join(run_dir, "vocab.txt"), max_text_length=16)
  batch = next(make_pipeline(data, split="train", train=True, global_batch_size=4, seed=0,
                             process_index=0, process_count=1))
  assert batch["image"].shape == (4, size, size, 3) and batch["text_ids"].shape == (4, 16)
  batches = list(make_pipeline(data, split="validation", train=False, global_batch_size=4,
                               seed=0, process_index=0, process_count=1))
  assert sum(int(b["mask"].sum()) for b in batches) == 8


def test_threshold_zero_keeps_all_and_above_one_drops_all(tmp_path, data_dir, run_dir, source):
  num_originals = sum(map(len, source["originals"].values()))
  everything = _run(data_dir, run_dir, tmp_path / "all", 0.0, copy_splits="")
  assert everything["original_kept"] == num_originals and everything["original_dropped"] == 0
  assert everything["synthetic_dropped"] == everything["synthetic_empty"]  # all but empty ones
  assert everything["synthetic_kept"] + everything["synthetic_empty"] == 16
  assert everything["images_dropped"] == 0
  assert set(everything["output"]["splits"]) == {"train"}
  written = _written(everything)
  assert all(texts[:len(source["originals"][i])] == source["originals"][i]
             for i, texts in written.items())
  assert sum(map(len, written.values())) == num_originals + everything["synthetic_kept"]
  nothing = _run(data_dir, run_dir, tmp_path / "none", 1.01, copy_splits="")
  assert nothing["images_dropped"] == 16 and nothing["images_kept"] == 0
  assert nothing["original_kept"] == nothing["synthetic_kept"] == 0
  assert nothing["output"]["name"] is None and not os.path.exists(tmp_path / "none" / "capfilt")


def test_same_seed_same_output(tmp_path, filtered, data_dir, run_dir):
  report, threshold = filtered
  again = _run(data_dir, run_dir, tmp_path, threshold, copy_splits="")
  strip = lambda r: {k: v for k, v in r.items() if k != "output"}
  assert strip(again) == strip(report)
  assert _written(again) == _written(report)


def test_existing_output_is_refused(filtered, data_dir, run_dir, capsys):
  report, threshold = filtered
  assert capfilt.main(_argv(data_dir, run_dir, report["output"]["data_dir"], threshold)) == 2
  assert "already holds" in capsys.readouterr().err
