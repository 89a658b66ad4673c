"""`python -m vlp_jax.export`: params files round-trip; `hf-blip` loads in transformers and
gives the outputs of `vlp_jax.pipelines.load(RUN)`."""
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from subprocess_testing import run_module
from vlp_jax import export, pipelines
from vlp_jax.convert import params_io
from vlp_jax.train import checkpoint

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "picture", "of", "red",
         "blue", "green", "circle", "square", "triangle", "on", "left", "right", "big",
         "small", "and", "##s", "."]
TEXTS = ["a red circle on the left", "Two blue squares.", "the green triangle",
         "a big square and a small circle"]
SIZE = 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, random_blip_run):
  """A tiny BLIP run (WordPiece vocab), random params perturbed by 0.2 N(0, 1)."""
  return random_blip_run(
      str(tmp_path_factory.mktemp("run")), VOCAB, 0.2, image_size=SIZE, patch_size=8,
      vision_width=32, vision_mlp_dim=48, text_width=24, text_mlp_dim=40, max_text_length=16,
      embed_dim=8, queue_size=16)


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_params_files_round_trip(run_dir, tmp_path, fmt):
  assert export.main(["--workdir", run_dir, "--format", fmt, "--output", str(tmp_path)]) == 0
  loaded = params_io.load_params(str(tmp_path / f"params.{fmt}"))
  expected, _ = checkpoint.restore_params(run_dir)
  assert jax.tree.structure(loaded) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)


def test_unscan_layers_splits_stacked_layers():
  stacked = {"encoder": {"layers": {"w": np.arange(6).reshape(3, 2)}}, "b": np.ones(2)}
  out = params_io.unscan_layers(stacked)
  assert sorted(out["encoder"]) == ["layers_0", "layers_1", "layers_2"]
  np.testing.assert_array_equal(out["encoder"]["layers_2"]["w"], [4, 5])


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("hf_export"))
  assert export.main(["--workdir", run_dir, "--format", "hf-blip", "--output", out]) == 0
  return out


def _load(cls, directory):
  model, info = cls.from_pretrained(directory, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  return model.eval()


def test_hf_retrieval_equals_pipeline(run_dir, exported):
  pipe = pipelines.load(run_dir)
  directory = os.path.join(exported, "retrieval")
  model = _load(transformers.BlipForImageTextRetrieval, directory)
  processor = transformers.BlipProcessor.from_pretrained(directory)
  images = [np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), np.uint8)
            for i in range(len(TEXTS))]
  inputs = processor(images=images, text=TEXTS, padding=True, return_tensors="pt")
  ids, mask = pipe.tokenize(TEXTS)
  np.testing.assert_array_equal(inputs["input_ids"].numpy(), ids)
  np.testing.assert_allclose(inputs["pixel_values"].numpy().transpose(0, 2, 3, 1),
                             pipe.preprocess(images), atol=1e-5)
  itm_ids = inputs["input_ids"].clone()
  itm_ids[:, 0] = model.config.text_config.enc_token_id  # our runs feed [ENC] to ITM
  with torch.no_grad():
    itm = model(input_ids=itm_ids, attention_mask=inputs["attention_mask"],
                pixel_values=inputs["pixel_values"]).itm_score.softmax(-1)[:, 1].numpy()
    cosine = model(**inputs, use_itm_head=False).itm_score.numpy()
  np.testing.assert_allclose(pipe.itm_scores(images, TEXTS), itm, atol=1e-4)
  np.testing.assert_allclose(pipe.itc_similarity(images, TEXTS), cosine, atol=1e-4)


def test_hf_captioning_equals_pipeline(run_dir, exported):
  pipe = pipelines.load(run_dir)
  directory = os.path.join(exported, "captioning")
  model = _load(transformers.BlipForConditionalGeneration, directory)
  processor = transformers.BlipProcessor.from_pretrained(directory)
  images = [np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), np.uint8)
            for i in range(3)]
  prompt = "a picture of"
  inputs = processor(images=images, text=[prompt] * 3, return_tensors="pt")
  with torch.no_grad():
    hf_ids = model.generate(**inputs, max_length=10, num_beams=1, do_sample=False).numpy()
  ours = pipe.caption_ids(images, max_length=10, num_beams=1, prompt=prompt)
  sep = pipe.config.sep_id
  cut = lambda row: list(row[:list(row).index(sep) + 1]) if sep in row else list(row)
  assert [cut(r) for r in ours] == [cut(r) for r in hf_ids]
  # Runs follow BLIP: the prompt is stripped from the text (transformers keeps it).
  hf_texts = processor.batch_decode(hf_ids, skip_special_tokens=True)
  assert all(text.startswith(prompt) for text in hf_texts)
  assert pipe.caption(images, max_length=10, num_beams=1, prompt=prompt) == [
      text[len(prompt):].strip() for text in hf_texts]


@pytest.mark.parametrize("model_type, split_by_whitespace",
                         [("unigram", True), ("bpe", True), ("bpe", False)])
def test_sentencepiece_tokenizer_json_gives_our_ids(tmp_path, model_type, split_by_whitespace):
  from vlp_jax.data.tokenizer import train_sentencepiece
  corpus = [f"a {c} {s} on the {p}" for c in ("red", "blue", "green", "yellow")
            for s in ("circle", "square", "triangle") for p in ("left", "right", "top")]
  ours = train_sentencepiece(corpus * 3, vocab_size=60, lower_case=True, model_type=model_type,
                             split_by_whitespace=split_by_whitespace)
  hf = export._sentencepiece_hf_tokenizer(ours)
  hf.save_pretrained(str(tmp_path))
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  for text in corpus[:5] + ["A  Red circle,  on the LEFT!", "unseen words xyz",
                              "  leading and trailing  ", "Ｆｕｌｌwidth ＲＥＤ"]:
    assert hf(text)["input_ids"] == [ours.cls_id] + ours.encode(text) + [ours.sep_id], text
  assert hf.bos_token_id == ours.dec_id


def test_cli_module_runs():
  result = run_module("vlp_jax.export", ["--help"])
  assert result.returncode == 0, result.stderr[-2000:]
  assert "hf-blip" in result.stdout and "msgpack" in result.stdout
