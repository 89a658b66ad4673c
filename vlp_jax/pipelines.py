"""Inference pipelines: `load(path)` -> a pipeline over raw inputs.

- `BlipPipeline` (ITM, ITC, captioning): a converted directory (`python -m vlp_jax.convert
  hf-blip`, holding `vlp_config.json`) or a BLIP training workdir;
- `E2EVLPPipeline` (detection, captioning): an E2E-VLP training workdir.
Training workdirs hold `config.json` + `checkpoints/`; the latest step is loaded, or
`load(path, step=...)`. Images are uint8 [H, W, 3] numpy arrays, texts python strings.

Preprocessing follows the directory's own files:
- converted HF checkpoints: BlipImageProcessor's steps: PIL resize to (height, width) with its
  `resample` (bicubic), `x * rescale_factor`, `(x - mean) / std`; the WordPiece vocabulary
  and lower-casing of its tokenizer; texts as `[CLS] w... [SEP]`, padded to the longest.
- training runs: the run's eval preprocessing: `tf.image.resize` (bilinear) to the model's
  image size and `normalize(...)` of `data.preprocess_eval`; the run's tokenizer.

Conventions ("hf" for converted HF checkpoints, "blip" for our training runs). Where
transformers differs from the original BLIP, a converted HF checkpoint follows transformers:
- ITM: transformers feeds the tokenizer's output (`[CLS]` first) to the image-grounded encoder;
  BLIP (and our training) replaces it with `[ENC]`.
- Captioning: both start from `[DEC]` (HF's `bos_token_id`) followed by the prompt's tokens
  (HF: the processor's `[CLS] prompt [SEP]` with `[CLS]` replaced by bos and `[SEP]` dropped),
  and stop at `[SEP]`. HF returns text with the prompt (`processor.decode(...)`); BLIP strips
  it. Default prompt: none for HF (its `generate` starts from bos alone), "a picture of " for
  runs (BLIP's). HF pads finished rows with eos where we pad with [PAD]; texts are the same.
- ITC: both use `[CLS]` and the cosine of the projected, normalised [CLS] features (HF's
  `use_itm_head=False`); BLIP's temperature is not applied.
- `max_length` counts every token, [DEC] and prompt included, as HF's `generate` does.
- Texts longer than the model's `max_text_length` are truncated (HF's processor does not
  truncate by default and fails past the position table).
Converted HF checkpoints hold one finetune: a retrieval one gives `itm_scores` /
`itc_similarity`, a captioning one `caption` (each has its own vision tower).
"""
import ast
import dataclasses
import functools
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax.convert import hf_blip, params_io
from vlp_jax.models import blip, e2e_vlp

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ImageSettings:
  """Image preprocessing: resize, rescale, normalise (see the module docstring)."""
  height: int
  width: int
  resample: str = "bicubic"        # "bicubic" | "bilinear" | "nearest"
  resize_backend: str = "pil"      # "pil" (BlipImageProcessor) | "tf" (our data pipeline)
  do_resize: bool = True
  do_rescale: bool = True
  rescale_factor: float = 1 / 255
  do_normalize: bool = True
  mean: tuple[float, ...] = hf_blip.OPENAI_CLIP_MEAN
  std: tuple[float, ...] = hf_blip.OPENAI_CLIP_STD

  def to_json(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}


def _resize(image: np.ndarray, settings: ImageSettings) -> np.ndarray:
  """uint8 [H, W, 3] -> [height, width, 3] (uint8 with PIL, float32 with tf)."""
  if settings.resize_backend == "tf":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.image.resize(image, (settings.height, settings.width),
                           method=settings.resample).numpy()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR,
              "nearest": Image.NEAREST}[settings.resample]
  return np.asarray(Image.fromarray(image).resize((settings.width, settings.height),
                                                  resample=resample))


def preprocess_images(images: Sequence[np.ndarray], settings: ImageSettings) -> np.ndarray:
  """uint8 images [H, W, 3] (any sizes) -> float32 [N, height, width, 3]."""
  out = []
  for image in images:
    image = np.asarray(image)
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3]
    if settings.do_resize:
      image = _resize(image.astype(np.uint8), settings)
    image = image.astype(np.float32)
    if settings.do_rescale:
      image = image * np.float32(settings.rescale_factor)
    if settings.do_normalize:
      image = (image - np.asarray(settings.mean, np.float32)) / np.asarray(settings.std,
                                                                          np.float32)
    out.append(image.astype(np.float32))
  return np.stack(out)


class BlipPipeline:
  """A BLIP model, its params, tokenizer and image settings; numpy / str in, numpy / str out."""

  def __init__(self, config: blip.BlipConfig, params: PyTree, tokenizer: Any,
               image_settings: ImageSettings, *, conventions: str = "blip",
               tasks: Sequence[str] = ("itm", "itc", "caption"),
               default_prompt: str = "", scan_layers: bool = False):
    if conventions not in ("hf", "blip"):
      raise ValueError(f"conventions must be 'hf' or 'blip', got {conventions!r}")
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.image_settings = image_settings
    self.conventions = conventions
    self.tasks = tuple(tasks)
    self.default_prompt = default_prompt
    self.model = blip.build_blip(config, scan_layers=scan_layers)
    self._captioners: dict[tuple[Any, ...], Any] = {}

  # ---------------------------------------------------------------- inputs
  def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 images -> float32 [N, H, W, 3]."""
    return preprocess_images(images, self.image_settings)

  def tokenize(self, texts: Sequence[str], first_token: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """texts -> (ids [N, T] int32 as `[CLS] w... [SEP] pad...`, mask [N, T] bool);
    `first_token` replaces [CLS]. Truncated to the model's `max_text_length`."""
    c = self.config
    rows = [[c.cls_id] + self.tokenizer.encode(text)[:c.max_text_length - 2] + [c.sep_id]
            for text in texts]
    length = max(len(row) for row in rows)
    ids = np.full((len(rows), length), c.pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
      ids[i, :len(row)], mask[i, :len(row)] = row, True
    if first_token is not None:
      ids[:, 0] = first_token
    return ids, mask

  def _require(self, task: str) -> None:
    if task not in self.tasks:
      raise ValueError(f"this checkpoint does not support {task!r} (it has {self.tasks})")

  # ---------------------------------------------------------------- forward passes
  @functools.cached_property
  def _jitted(self) -> dict[str, Any]:
    model = self.model

    def image_embeds(params: PyTree, images: jax.Array) -> jax.Array:
      return model.apply({"params": params}, images, method=blip.Blip.encode_image)

    def itm(params: PyTree, images: jax.Array, ids: jax.Array, mask: jax.Array) -> jax.Array:
      logits = model.apply({"params": params}, ids, mask, image_embeds(params, images),
                           method=blip.Blip.itm_logits)
      return jax.nn.softmax(logits, axis=-1)[:, 1]

    def image_features(params: PyTree, images: jax.Array) -> jax.Array:
      return model.apply({"params": params}, image_embeds(params, images),
                         method=blip.Blip.image_features)

    def text_features(params: PyTree, ids: jax.Array, mask: jax.Array) -> jax.Array:
      hidden = model.apply({"params": params}, ids, mask, method=blip.Blip.encode_text)
      return model.apply({"params": params}, hidden, method=blip.Blip.text_features)

    return {"itm": jax.jit(itm), "image_features": jax.jit(image_features),
            "text_features": jax.jit(text_features)}

  def itm_scores(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
    """Probability that image i matches text i (ITM head, softmax class 1): [N]."""
    self._require("itm")
    if len(images) != len(texts):
      raise ValueError(f"{len(images)} images but {len(texts)} texts")
    first = self.config.enc_id if self.conventions == "blip" else None
    ids, mask = self.tokenize(texts, first)
    return np.asarray(self._jitted["itm"](self.params, self.preprocess(images), ids, mask))

  def image_features(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """L2-normalised projected image features [N, E]."""
    self._require("itc")
    return np.asarray(self._jitted["image_features"](self.params, self.preprocess(images)))

  def text_features(self, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised projected text features [N, E] ([CLS] unimodal encoder)."""
    self._require("itc")
    ids, mask = self.tokenize(texts)
    return np.asarray(self._jitted["text_features"](self.params, ids, mask))

  def itc_similarity(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
    """Cosine similarity of projected features: [N_images, N_texts]."""
    return self.image_features(images) @ self.text_features(texts).T

  # ---------------------------------------------------------------- captioning
  def _prompt_ids(self, prompt: str | None) -> tuple[int, ...]:
    prompt = self.default_prompt if prompt is None else prompt
    return tuple(self.tokenizer.encode(prompt)) if prompt else ()

  def caption_ids(self, images: Sequence[np.ndarray], *, max_length: int = 20,
                  num_beams: int = 3, min_length: int = 0, prompt: str | None = None
                  ) -> np.ndarray:
    """Token ids [N, max_length]: `[DEC] prompt... caption... [SEP] pad...` (greedy when
    num_beams == 1, else beam search)."""
    self._require("caption")
    prompt_ids = self._prompt_ids(prompt)
    key = (max_length, num_beams, min_length, prompt_ids)
    if key not in self._captioners:
      prefix = jnp.asarray(prompt_ids, jnp.int32) if prompt_ids else None
      self._captioners[key] = jax.jit(lambda params, images: blip.caption(
          self.model, params, images, max_length=max_length,
          method="beam" if num_beams > 1 else "greedy", num_beams=num_beams,
          min_length=min_length, prompt_ids=prefix).sequences)
    return np.asarray(self._captioners[key](self.params, self.preprocess(images)))

  def caption(self, images: Sequence[np.ndarray], *, max_length: int = 20, num_beams: int = 3,
              min_length: int = 0, prompt: str | None = None) -> list[str]:
    """Captions (prompt included with "hf" conventions, stripped with "blip")."""
    sequences = self.caption_ids(images, max_length=max_length, num_beams=num_beams,
                                 min_length=min_length, prompt=prompt)
    skip = 1 + (len(self._prompt_ids(prompt)) if self.conventions == "blip" else 0)
    return [self.tokenizer.decode(row[skip:]) for row in sequences]


class E2EVLPPipeline:
  """An E2E-VLP model, its params, tokenizer and image settings: detection and captioning."""

  def __init__(self, config: e2e_vlp.E2EVLPConfig, params: PyTree, tokenizer: Any,
               image_settings: ImageSettings):
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.image_settings = image_settings
    self.model = e2e_vlp.build_e2e_vlp(config)
    self._captioners: dict[tuple[int, int, int], Any] = {}

  def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 images -> float32 [N, S, S, 3] (the run's eval preprocessing)."""
    return preprocess_images(images, self.image_settings)

  def detect(self, images: Sequence[np.ndarray], *, score_threshold: float = 0.0
             ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: (boxes [K, 4] float32 xyxy in that image's pixels, labels [K] int32,
    scores [K] float32), queries scoring above the threshold, best first."""
    pixels = self.preprocess(images)
    results = e2e_vlp.detect(self.model, self.params, pixels, score_threshold=score_threshold)
    size = np.asarray(pixels.shape[1:3], np.float32)  # (height, width) the model saw
    out = []
    for image, (boxes, labels, scores) in zip(images, results):
      scale = np.asarray(np.shape(image)[:2], np.float32) / size
      out.append(((boxes * np.tile(scale[::-1], 2)).astype(np.float32),
                  labels.astype(np.int32), scores.astype(np.float32)))
    return out

  def caption_ids(self, images: Sequence[np.ndarray], *, max_length: int = 20,
                  num_beams: int = 1, min_length: int = 0) -> np.ndarray:
    """Token ids [N, max_length]: `[DEC] caption... [SEP] pad...` (greedy when num_beams is
    1, else beam search); `max_length` counts [DEC]."""
    key = (max_length, num_beams, min_length)
    if key not in self._captioners:
      self._captioners[key] = jax.jit(lambda params, images: e2e_vlp.caption(
          self.model, params, images, max_length=max_length,
          method="beam" if num_beams > 1 else "greedy", num_beams=num_beams,
          min_length=min_length).sequences)
    return np.asarray(self._captioners[key](self.params, self.preprocess(images)))

  def caption(self, images: Sequence[np.ndarray], *, max_length: int = 20, num_beams: int = 1,
              min_length: int = 0) -> list[str]:
    """One caption per image."""
    sequences = self.caption_ids(images, max_length=max_length, num_beams=num_beams,
                                 min_length=min_length)
    return [self.tokenizer.decode(row[1:]) for row in sequences]


# -------------------------------------------------------------------------------- loading
def _load_converted(path: str) -> BlipPipeline:
  with open(os.path.join(path, hf_blip.CONFIG_FILE), encoding="utf-8") as stream:
    spec = json.load(stream)
  if spec.get("format") != hf_blip.FORMAT:
    raise ValueError(f"{path}: unknown format {spec.get('format')!r}")
  from vlp_jax.data.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
  tokenizer_spec = spec["tokenizer"]
  tokenizer = load_tokenizer(os.path.join(path, tokenizer_spec["file"]),
                             tokenizer_spec.get("lower_case", True))
  image = spec["image"]
  settings = ImageSettings(**{**image, "mean": tuple(image["mean"]),
                              "std": tuple(image["std"])})
  params = params_io.load_params(os.path.join(path, hf_blip.PARAMS_FILE))
  return BlipPipeline(blip.BlipConfig(**spec["model"]), params, tokenizer, settings,
                      conventions=spec.get("conventions", "hf"), tasks=spec["tasks"],
                      default_prompt=spec.get("default_prompt", ""))


def run_image_settings(run_config: Any, image_size: int) -> ImageSettings:
  """The eval preprocessing of a training run: `resize` (tf bilinear) and `normalize(...)`."""
  from vlp_jax.data.preprocess_ops import MEAN_STD_PRESETS  # pylint: disable=g-import-not-at-top
  spec = run_config.data.get("preprocess_eval", "") or ""
  mean, std, do_normalize = hf_blip.OPENAI_CLIP_MEAN, hf_blip.OPENAI_CLIP_STD, False
  match = re.search(r"normalize\((.*?)\)\s*(?:\||$)", spec)
  if match:
    args = ast.literal_eval(f"({match.group(1)},)") if match.group(1).strip() else ("clip",)
    mean, std = MEAN_STD_PRESETS[args[0]] if isinstance(args[0], str) else args[:2]
    do_normalize = True
  return ImageSettings(height=image_size, width=image_size, resample="bilinear",
                       resize_backend="tf", do_rescale=do_normalize,
                       do_normalize=do_normalize, mean=tuple(mean), std=tuple(std))


def _run_config(workdir: str) -> Any:
  """A training workdir's `config.json`; it must name a tokenizer."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as stream:
    run_config = ml_collections.ConfigDict(json.load(stream))
  if not run_config.data.get("tokenizer"):
    raise ValueError(f"{workdir}: the run has no data.tokenizer; texts cannot be tokenised")
  return run_config


def _run_tokenizer(run_config: Any) -> Any:
  from vlp_jax.data.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
  return load_tokenizer(run_config.data.tokenizer,
                        run_config.data.get("tokenizer_lower_case", True))


def _run_params(workdir: str, step: int | None) -> PyTree:
  """The checkpoint's params with scanned layer stacks unrolled to `layers_i`."""
  from vlp_jax.train.checkpoint import restore_params  # pylint: disable=g-import-not-at-top
  params, _ = restore_params(workdir, step)
  return params_io.unscan_layers(params)


def load_run(workdir: str, step: int | None = None) -> BlipPipeline:
  """A pipeline over a BLIP training workdir (`config.json` + `checkpoints/`)."""
  from vlp_jax.models import blip_family  # pylint: disable=g-import-not-at-top
  run_config = _run_config(workdir)
  if run_config.model.family != "blip":
    raise ValueError(f"{workdir}: load_run reads blip runs, not {run_config.model.family!r} "
                     "(pipelines.load reads any supported family)")
  config = blip_family.blip_config_from(run_config)
  return BlipPipeline(config, _run_params(workdir, step), _run_tokenizer(run_config),
                      run_image_settings(run_config, config.image_size), conventions="blip",
                      default_prompt=run_config.model.get("eval_caption_prompt", ""))


def load_e2e_vlp_run(workdir: str, step: int | None = None) -> E2EVLPPipeline:
  """A pipeline over an E2E-VLP training workdir (`config.json` + `checkpoints/`)."""
  from vlp_jax.models import e2e_vlp_family  # pylint: disable=g-import-not-at-top
  run_config = _run_config(workdir)
  if run_config.model.family != "e2e_vlp":
    raise ValueError(f"{workdir}: not an e2e_vlp run ({run_config.model.family!r})")
  config = e2e_vlp_family.e2e_vlp_config_from(run_config)
  return E2EVLPPipeline(config, _run_params(workdir, step), _run_tokenizer(run_config),
                        run_image_settings(run_config, config.image_size))


_RUN_LOADERS = {"blip": load_run, "e2e_vlp": load_e2e_vlp_run}


def load(path: str, step: int | None = None) -> BlipPipeline | E2EVLPPipeline:
  """A converted directory (`vlp_config.json`) or a training workdir (`config.json`) of a
  blip or e2e_vlp run."""
  if os.path.exists(os.path.join(path, hf_blip.CONFIG_FILE)):
    return _load_converted(path)
  if os.path.exists(os.path.join(path, "config.json")):
    with open(os.path.join(path, "config.json"), encoding="utf-8") as stream:
      family = json.load(stream).get("model", {}).get("family")
    if family not in _RUN_LOADERS:
      raise ValueError(f"{path}: pipelines support the {sorted(_RUN_LOADERS)} families, "
                       f"not {family!r}")
    return _RUN_LOADERS[family](path, step)
  raise FileNotFoundError(f"{path} holds neither {hf_blip.CONFIG_FILE} nor config.json")
