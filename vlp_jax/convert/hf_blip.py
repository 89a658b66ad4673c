"""Converts a Hugging Face BLIP directory (as `save_pretrained` writes it) into ours.

Input (`BlipForImageTextRetrieval` or `BlipForConditionalGeneration`): `config.json`,
`model.safetensors` (read with safetensors only; pickled `.bin` files are refused),
`preprocessor_config.json` or `processor_config.json` (image settings), and `vocab.txt`
(+ `added_tokens.json`) and/or `tokenizer.json` (a WordPiece tokenizer).

Output directory:
  params.safetensors   our `Blip` params, flat names (`vlp_jax.convert.params_io`); a
                       retrieval checkpoint has no `lm_head`, a captioning one no projections
                       / ITM head (its causal and bidirectional self-attention are both the
                       decoder's)
  vlp_config.json      {"format", "model": BlipConfig fields, "tasks", "conventions": "hf",
                        "tokenizer": {"type", "file", "lower_case"}, "image": {...}, "source"}
  vocab.txt            the full vocabulary (added tokens such as [DEC] / [ENC] at their ids)
  + the HF tokenizer / processor files, copied unchanged.
The weight mapping is `vlp_jax.models.blip_hf`.
"""
import dataclasses
import json
import os
import shutil
from typing import Any

import numpy as np
from safetensors import safe_open

from vlp_jax.convert import params_io
from vlp_jax.models import blip_hf

FORMAT = "vlp_jax/blip"
CONFIG_FILE = "vlp_config.json"
PARAMS_FILE = "params.safetensors"
VOCAB_FILE = "vocab.txt"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL codes in HF configs
_COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
           "added_tokens.json", "preprocessor_config.json", "processor_config.json")
ARCHITECTURES = {"BlipForImageTextRetrieval": ("retrieval", ["itm", "itc"]),
                 "BlipForConditionalGeneration": ("captioning", ["caption"])}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a `.safetensors` file as float32 / int numpy arrays (no torch, no pickle)."""
  out = {}
  with safe_open(path, framework="np") as reader:
    for name in reader.keys():
      out[name] = np.asarray(reader.get_tensor(name))
  return out


def _read_json(path: str) -> dict[str, Any]:
  with open(path, encoding="utf-8") as stream:
    return json.load(stream)


def read_vocab(input_dir: str) -> tuple[list[str], bool]:
  """(vocabulary in id order, lower_case) from `tokenizer.json` or `vocab.txt` (+ added tokens)."""
  tokens: dict[int, str] = {}
  lower_case = True
  json_path = os.path.join(input_dir, "tokenizer.json")
  if os.path.exists(json_path):
    spec = _read_json(json_path)
    if spec["model"]["type"] != "WordPiece":
      raise ValueError(f"BLIP tokenizer.json must hold a WordPiece model, got "
                       f"{spec['model']['type']}")
    tokens.update({i: token for token, i in spec["model"]["vocab"].items()})
    lower_case = bool((spec.get("normalizer") or {}).get("lowercase", True))
    tokens.update({t["id"]: t["content"] for t in spec.get("added_tokens", [])})
  elif os.path.exists(os.path.join(input_dir, VOCAB_FILE)):
    with open(os.path.join(input_dir, VOCAB_FILE), encoding="utf-8") as stream:
      tokens.update(enumerate(line.rstrip("\n") for line in stream))
    added = os.path.join(input_dir, "added_tokens.json")
    if os.path.exists(added):
      tokens.update({i: token for token, i in _read_json(added).items()})
  else:
    raise FileNotFoundError(f"{input_dir} has neither tokenizer.json nor {VOCAB_FILE}")
  config_path = os.path.join(input_dir, "tokenizer_config.json")
  if os.path.exists(config_path):
    lower_case = bool(_read_json(config_path).get("do_lower_case", lower_case))
  if sorted(tokens) != list(range(len(tokens))):
    raise ValueError("tokenizer ids are not contiguous from 0")
  return [tokens[i] for i in range(len(tokens))], lower_case


def read_image_settings(input_dir: str, image_size: int) -> dict[str, Any]:
  """BlipImageProcessor settings from `preprocessor_config.json` / `processor_config.json`."""
  settings: dict[str, Any] = {}
  for name in ("preprocessor_config.json", "processor_config.json"):
    path = os.path.join(input_dir, name)
    if os.path.exists(path):
      spec = _read_json(path)
      settings = spec.get("image_processor", spec)
      break
  size = settings.get("size") or {"height": image_size, "width": image_size}
  if "shortest_edge" in size:
    size = {"height": size["shortest_edge"], "width": size["shortest_edge"]}
  return dict(height=int(size["height"]), width=int(size["width"]),
              resample=_RESAMPLE[int(settings.get("resample", 3))], resize_backend="pil",
              do_resize=bool(settings.get("do_resize", True)),
              do_rescale=bool(settings.get("do_rescale", True)),
              rescale_factor=float(settings.get("rescale_factor", 1 / 255)),
              do_normalize=bool(settings.get("do_normalize", True)),
              mean=list(settings.get("image_mean", OPENAI_CLIP_MEAN)),
              std=list(settings.get("image_std", OPENAI_CLIP_STD)))


def convert_hf_blip(input_dir: str, output_dir: str) -> dict[str, Any]:
  """Converts `input_dir` (HF BLIP) into `output_dir`; returns the written `vlp_config.json`."""
  hf_config = _read_json(os.path.join(input_dir, "config.json"))
  architecture = (hf_config.get("architectures") or [""])[0]
  if architecture not in ARCHITECTURES:
    raise ValueError(f"unsupported architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
  kind, tasks = ARCHITECTURES[architecture]
  weights = os.path.join(input_dir, "model.safetensors")
  if not os.path.exists(weights):
    raise FileNotFoundError(f"{weights} missing (pickled checkpoints are not read)")
  vocab, lower_case = read_vocab(input_dir)
  index = {token: i for i, token in enumerate(vocab)}
  config = blip_hf.blip_config_from_hf(hf_config, cls_id=index["[CLS]"],
                                       enc_id=index.get("[ENC]", len(vocab)))
  state = read_safetensors(weights)
  params = blip_hf.blip_params_from_hf(
      config, retrieval_state=state if kind == "retrieval" else None,
      captioning_state=state if kind == "captioning" else None)
  os.makedirs(output_dir, exist_ok=True)
  params_io.save_params(os.path.join(output_dir, PARAMS_FILE), params)
  with open(os.path.join(output_dir, VOCAB_FILE), "w", encoding="utf-8") as stream:
    stream.write("".join(token + "\n" for token in vocab))
  for name in _COPIED:
    if os.path.exists(os.path.join(input_dir, name)):
      shutil.copyfile(os.path.join(input_dir, name), os.path.join(output_dir, name))
  spec = {"format": FORMAT, "model": dataclasses.asdict(config), "tasks": tasks,
          "conventions": "hf",
          "tokenizer": {"type": "wordpiece", "file": VOCAB_FILE, "lower_case": lower_case},
          "image": read_image_settings(input_dir, config.image_size),
          "source": {"format": "hf-blip", "architecture": architecture,
                     "path": os.path.abspath(input_dir)}}
  with open(os.path.join(output_dir, CONFIG_FILE), "w", encoding="utf-8") as stream:
    json.dump(spec, stream, indent=2)
  return spec
