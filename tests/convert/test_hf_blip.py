"""`python -m vlp_jax.convert hf-blip` and `vlp_jax.pipelines` against transformers' BLIP."""
import json
import os

import numpy as np
import pytest
import torch
from hf_blip_testing import (DEC_ID, BlipForConditionalGeneration, BlipForImageTextRetrieval,
                             random_images, save_hf_blip)
from subprocess_testing import run_module

from vlp_jax import convert, pipelines
from vlp_jax.convert import params_io

TEXTS = ["a red circle on the left", "Two blue squares.", "the green triangle",
         "a small photo of underish circles"]
IMAGES = random_images(4)


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
  hf_dir = str(tmp_path_factory.mktemp("hf_retrieval"))
  model, processor = save_hf_blip(hf_dir, BlipForImageTextRetrieval, seed=0)
  out = str(tmp_path_factory.mktemp("ours_retrieval"))
  assert convert.main(["hf-blip", "--input", hf_dir, "--output", out]) == 0
  return model, processor, out


@pytest.fixture(scope="module")
def captioning(tmp_path_factory):
  hf_dir = str(tmp_path_factory.mktemp("hf_captioning"))
  model, processor = save_hf_blip(hf_dir, BlipForConditionalGeneration, seed=1)
  out = str(tmp_path_factory.mktemp("ours_captioning"))
  assert convert.main(["hf-blip", "--input", hf_dir, "--output", out]) == 0
  return model, processor, out


def test_output_directory_layout(retrieval):
  _, _, out = retrieval
  spec = json.load(open(os.path.join(out, "vlp_config.json")))
  assert spec["tasks"] == ["itm", "itc"] and spec["conventions"] == "hf"
  assert spec["model"]["dec_id"] == DEC_ID and spec["model"]["enc_id"] == DEC_ID + 1
  assert spec["image"]["height"] == 32 and spec["image"]["resample"] == "bicubic"
  params = params_io.load_params(os.path.join(out, "params.safetensors"))
  assert "lm_head" not in params and "itm_head" in params
  assert "[DEC]" in open(os.path.join(out, "vocab.txt")).read().split("\n")


def test_refuses_pickled_checkpoints(tmp_path):
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  (hf_dir / "config.json").write_text(json.dumps({"architectures": ["BlipForImageTextRetrieval"]}))
  (hf_dir / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    convert.main(["hf-blip", "--input", str(hf_dir), "--output", str(tmp_path / "out")])


def test_preprocessing_and_tokens_match_hf_processor(retrieval):
  _, processor, out = retrieval
  pipe = pipelines.load(out)
  hf = processor(images=IMAGES, text=TEXTS, padding=True, return_tensors="np")
  np.testing.assert_allclose(pipe.preprocess(IMAGES), hf["pixel_values"].transpose(0, 2, 3, 1),
                             atol=1e-5)
  ids, mask = pipe.tokenize(TEXTS)
  np.testing.assert_array_equal(ids, hf["input_ids"])
  np.testing.assert_array_equal(mask, hf["attention_mask"].astype(bool))


def test_itm_and_itc_match_transformers(retrieval):
  model, processor, out = retrieval
  pipe = pipelines.load(out)
  inputs = processor(images=IMAGES, text=TEXTS, padding=True, return_tensors="pt")
  with torch.no_grad():
    itm = model(**inputs, use_itm_head=True).itm_score.softmax(-1)[:, 1].numpy()
    cosine = model(**inputs, use_itm_head=False).itm_score.numpy()
  ours_itm = pipe.itm_scores(IMAGES, TEXTS)
  ours_itc = pipe.itc_similarity(IMAGES, TEXTS)
  assert np.ptp(itm) > 1e-3  # the checkpoint discriminates
  np.testing.assert_allclose(ours_itm, itm, atol=1e-4)
  np.testing.assert_allclose(ours_itc, cosine, atol=1e-4)
  with pytest.raises(ValueError, match="caption"):
    pipe.caption(IMAGES[:1])


def _until_eos(row: np.ndarray, eos: int = 3) -> list[int]:
  """Ids up to and including the first eos (HF pads finished rows with eos, we with pad);
  a row without eos ran to max_length and is compared whole."""
  row = [int(t) for t in row]
  return row[:row.index(eos) + 1] if eos in row else row


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("prompt", ["", "a picture of"])
def test_captions_match_transformers(captioning, num_beams, prompt):
  model, processor, out = captioning
  pipe = pipelines.load(out)
  max_length = 12
  kwargs = {"text": [prompt] * len(IMAGES)} if prompt else {}
  inputs = processor(images=IMAGES, return_tensors="pt", **kwargs)
  with torch.no_grad():
    hf_ids = model.generate(**inputs, max_length=max_length, num_beams=num_beams,
                            do_sample=False, min_length=0).numpy()
  ours = pipe.caption_ids(IMAGES, max_length=max_length, num_beams=num_beams, prompt=prompt)
  assert [_until_eos(r) for r in ours] == [_until_eos(r) for r in hf_ids]
  texts = pipe.caption(IMAGES, max_length=max_length, num_beams=num_beams, prompt=prompt)
  assert texts == processor.batch_decode(hf_ids, skip_special_tokens=True)


def test_cli_module_runs():
  result = run_module("vlp_jax.convert", ["--help"])
  assert result.returncode == 0, result.stderr[-2000:]
  assert "hf-blip" in result.stdout
