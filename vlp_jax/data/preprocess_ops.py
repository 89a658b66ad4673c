"""Preprocessing ops: in-graph functions on one example dict, registered by name (big_vision style).

A spec such as `"decode|random_resized_crop(224)|flip_lr|value_range(-1,1)|pick_caption|tokenize(32)"`
is parsed by `parse_ops` into one function `example -> example`. Ops are pure TF (no
`tf.py_function`); random ops are stateless and draw their seeds from the example's `_seed`
(int64 [2], set by the pipeline per example), so results depend only on the seed and the
position in the stream and the tf.data iterator stays checkpointable.

Keys of an example (from `pipeline.source_example`):
  image: tf.string JPEG bytes; after `decode` uint8 [H, W, 3]; after a resize float32 [S, S, 3].
  image_id: int64 [].
  captions: tf.string [K] (non-empty captions).
  boxes: float32 [N, 4] normalised (x1, y1, x2, y2) in [0, 1]; labels: int64 [N];
    colours: int64 [N] (when the source has them; -1 unknown).
  questions: tf.string [Q]; answers: tf.string [Q, 10]; question_types: tf.string [Q].
  referring_expressions: tf.string [R]; referring_object_index: int64 [R] (index into boxes, -1 if gone).

Ops (arguments as in the spec string):
  decode                    JPEG bytes -> uint8 image.
  resize(size)              image -> float32 [size, size, 3] (bilinear); boxes are normalised, unchanged.
  random_resized_crop(size, area_min=0.08, area_max=1.0, aspect_min=3/4, aspect_max=4/3)
                            Inception crop then resize; boxes are moved, clipped, and dropped if they
                            leave the crop. `decode|random_resized_crop(...)` runs fused
                            (`decode_random_resized_crop`): only the crop window is decoded.
  decode_random_resized_crop(size, ...)  the fused form, same arguments and same result.
  flip_lr(prob=0.5)         random horizontal flip of image and boxes; swaps left/right (also
                            leftmost/rightmost, ...) in captions, text, questions, answers, expressions.
  value_range(vmin=-1, vmax=1, in_min=0, in_max=255)  linear map of pixel values -> float32.
  normalize(preset_or_mean, std=None)  (x / 255 - mean) / std; presets "clip" (also BLIP), "imagenet".
  pick_caption              one random caption -> `text` tf.string [] (removes `captions`).
  all_captions(num)         the first `num` captions -> `text` [num] (padded with ""), `text_valid` bool [num].
  tokenize(max_length=<data_config.max_text_length>, key="text", bos="cls", eos="sep")
                            -> `{key}_ids` int32 [..., L] ([BOS] tokens [EOS] [PAD]...), `{key}_mask`
                            int32 [..., L]; bos/eos in {"cls", "sep", "enc", "dec", None}; truncates.
  pad_objects(max_objects, box_format="xyxy")  -> `boxes` float32 [M, 4] ("xyxy" or "cxcywh"),
                            `labels` int32 [M], `box_valid` bool [M] (extra objects are dropped),
                            and `colours` int32 [M] (padded with -1) when the example has them.

tokenize is batchable: when it ends a training spec, the pipeline runs it once per batch
(vectorised) instead of per example; put it last for speed. (Pixel ops stay per example: on
one image they run in cache, on a whole batch they are memory-bound.)
"""
import ast
import dataclasses
import inspect
from collections.abc import Callable

import tensorflow as tf

from vlp_jax.data.tokenizer import Tokenizer

Example = dict[str, tf.Tensor]
Op = Callable[[Example], Example]
SEED_KEY = "_seed"
TEXT_KEYS = ("captions", "text", "questions", "answers", "referring_expressions")
MEAN_STD_PRESETS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_FUSED = {("decode", "random_resized_crop"): "decode_random_resized_crop"}


@dataclasses.dataclass(frozen=True)
class OpContext:
  """What ops may need beyond their arguments."""
  tokenizer: Tokenizer | None = None
  max_text_length: int | None = None


_REGISTRY: dict[str, Callable[..., Op]] = {}
_BATCHABLE: set[str] = set()


def register(name: str, batchable: bool = False) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
  """Registers an op factory `factory(*args, [context: OpContext], **kwargs) -> Op`.

  `batchable`: the op works unchanged on a batch of examples (leading batch dim on every key).
  """
  def wrap(factory: Callable[..., Op]) -> Callable[..., Op]:
    if name in _REGISTRY:
      raise ValueError(f"op {name!r} registered twice")
    _REGISTRY[name] = factory
    if batchable:
      _BATCHABLE.add(name)
    return factory
  return wrap


def registered_ops() -> list[str]:
  return sorted(_REGISTRY)


def parse_ops(spec: str, context: OpContext = OpContext()) -> Op:
  """`"op1(args)|op2|..."` -> one function example -> example applying them in order."""
  return _compose([_build(*call, context) for call in _parse_spec(spec)])


def parse_ops_batched_suffix(spec: str, context: OpContext = OpContext()) -> tuple[Op, Op]:
  """Splits a spec into (per-example ops, the trailing batchable ops to run on whole batches).

  E.g. `"decode|random_resized_crop(224)|pick_caption|value_range(-1,1)|tokenize"` runs
  tokenize once per batch; the result equals running all ops per example.
  """
  calls = _parse_spec(spec)
  split = len(calls)
  while split and calls[split - 1][0] in _BATCHABLE:
    split -= 1
  return (_compose([_build(*call, context) for call in calls[:split]]),
          _compose([_build(*call, context) for call in calls[split:]]))


def _parse_spec(spec: str) -> list[tuple[str, tuple, dict]]:
  calls = []
  for name, args, kwargs in (_parse_call(part.strip()) for part in spec.split("|") if part.strip()):
    if calls and (calls[-1][0], name) in _FUSED and not calls[-1][1] and not calls[-1][2]:
      calls[-1] = (_FUSED[(calls[-1][0], name)], args, kwargs)
    else:
      calls.append((name, args, kwargs))
  return calls


def _compose(ops: list[Op]) -> Op:
  def apply(example: Example) -> Example:
    for op in ops:
      example = op(example)
    return example
  return apply


def _parse_call(text: str) -> tuple[str, tuple, dict]:
  node = ast.parse(text, mode="eval").body
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    return node.func.id, args, kwargs
  raise ValueError(f"cannot parse op {text!r}; expected name or name(literal args)")


def _build(name: str, args: tuple, kwargs: dict, context: OpContext) -> Op:
  if name not in _REGISTRY:
    raise ValueError(f"unknown op {name!r}; registered: {registered_ops()}")
  factory = _REGISTRY[name]
  if "context" in inspect.signature(factory).parameters:
    kwargs = dict(kwargs, context=context)
  return factory(*args, **kwargs)


def take_seed(example: Example) -> tuple[tf.Tensor, Example]:
  """Splits the example's seed: returns a seed for this op and the example with a fresh one."""
  seeds = tf.random.experimental.stateless_split(example[SEED_KEY], 2)
  return seeds[0], {**example, SEED_KEY: seeds[1]}


# ---------------------------------------------------------------------------------------- images

@register("decode")
def decode() -> Op:
  def op(example: Example) -> Example:
    return {**example, "image": tf.io.decode_jpeg(example["image"], channels=3)}
  return op


@register("resize")
def resize(size: int) -> Op:
  def op(example: Example) -> Example:
    return {**example, "image": tf.image.resize(example["image"], (size, size))}
  return op


def _sample_crop_window(image_shape: tf.Tensor, seed: tf.Tensor, area: tuple[float, float],
                        aspect: tuple[float, float]) -> tuple[tf.Tensor, tf.Tensor]:
  """Inception-style crop: offset [2] and size [2] (y, x) in pixels."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed, min_object_covered=0.0,
      aspect_ratio_range=aspect, area_range=area, max_attempts=10, use_image_if_no_bounding_boxes=True)
  return begin[:2], size[:2]


def _crop_objects(example: Example, image_hw: tf.Tensor, begin: tf.Tensor, size: tf.Tensor) -> Example:
  """Moves boxes into the crop window, clips them, drops those left empty; remaps referring indices."""
  if "boxes" not in example:
    return example
  xy_scale = tf.cast(tf.tile(tf.reverse(image_hw, [0]), [2]), tf.float32)  # W, H, W, H
  offset = tf.cast(tf.tile(tf.reverse(begin, [0]), [2]), tf.float32) / xy_scale
  extent = tf.cast(tf.tile(tf.reverse(size, [0]), [2]), tf.float32) / xy_scale
  boxes = tf.clip_by_value((example["boxes"] - offset) / extent, 0.0, 1.0)
  keep = tf.reduce_all(boxes[:, 2:] > boxes[:, :2], axis=1)
  example = {**example, "boxes": tf.boolean_mask(boxes, keep)}
  for key in ("labels", "colours"):
    if key in example:
      example[key] = tf.boolean_mask(example[key], keep)
  if "referring_object_index" in example:
    new_index = tf.where(keep, tf.cumsum(tf.cast(keep, tf.int64)) - 1, -1)
    old_index = example["referring_object_index"]
    valid = (old_index >= 0) & (old_index < tf.size(new_index, tf.int64))
    example["referring_object_index"] = tf.where(valid, tf.gather(new_index, tf.maximum(old_index, 0)), -1)
  return example


@register("random_resized_crop")
def random_resized_crop(size: int, area_min: float = 0.08, area_max: float = 1.0, aspect_min: float = 3 / 4,
                        aspect_max: float = 4 / 3) -> Op:
  def op(example: Example) -> Example:
    seed, example = take_seed(example)
    image = example["image"]
    image_hw = tf.shape(image)[:2]
    begin, crop_size = _sample_crop_window(tf.shape(image), seed, (area_min, area_max), (aspect_min, aspect_max))
    crop = tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([crop_size, [-1]], 0))
    example = _crop_objects(example, image_hw, begin, crop_size)
    return {**example, "image": tf.image.resize(crop, (size, size))}
  return op


@register("decode_random_resized_crop")
def decode_random_resized_crop(size: int, area_min: float = 0.08, area_max: float = 1.0, aspect_min: float = 3 / 4,
                               aspect_max: float = 4 / 3) -> Op:
  def op(example: Example) -> Example:
    seed, example = take_seed(example)
    image_shape = tf.io.extract_jpeg_shape(example["image"])
    begin, crop_size = _sample_crop_window(image_shape, seed, (area_min, area_max), (aspect_min, aspect_max))
    crop = tf.io.decode_and_crop_jpeg(example["image"], tf.concat([begin, crop_size], 0), channels=3)
    example = _crop_objects(example, image_shape[:2], begin, crop_size)
    return {**example, "image": tf.image.resize(crop, (size, size))}
  return op


def _swap_left_right_in_keys(example: Example, keys: list[str]) -> Example:
  """Swaps left/right in all `keys` at once (one flat string tensor: fewer, larger regex ops)."""
  texts = [example[key] for key in keys]
  sizes = [tf.size(text) for text in texts]
  swapped = tf.split(swap_left_right(tf.concat([tf.reshape(t, [-1]) for t in texts], 0)), sizes)
  return {**example, **{key: tf.reshape(new, tf.shape(old)) for key, old, new in zip(keys, texts, swapped)}}


def swap_left_right(text: tf.Tensor) -> tf.Tensor:
  """Swaps left <-> right (and -most / -ward / -wards forms, 3 casings) in tf.string text."""
  for marker, (left, right) in enumerate((("left", "right"), ("Left", "Right"), ("LEFT", "RIGHT")), start=1):
    placeholder = chr(marker)
    text = tf.strings.regex_replace(text, rf"\b{left}(most|ward|wards)?\b", placeholder + r"\1")
    text = tf.strings.regex_replace(text, rf"\b{right}(most|ward|wards)?\b", left + r"\1")
    text = tf.strings.regex_replace(text, placeholder, right)
  return text


@register("flip_lr")
def flip_lr(prob: float = 0.5) -> Op:
  def op(example: Example) -> Example:
    seed, example = take_seed(example)
    flip = tf.random.stateless_uniform([], seed) < prob
    example = dict(example)
    example["image"] = tf.cond(flip, lambda: tf.reverse(example["image"], axis=[1]), lambda: example["image"])
    if "boxes" in example:
      x1, y1, x2, y2 = tf.unstack(example["boxes"], axis=-1)
      example["boxes"] = tf.where(flip, tf.stack([1.0 - x2, y1, 1.0 - x1, y2], axis=-1), example["boxes"])
    keys = [key for key in TEXT_KEYS if key in example]
    if keys:
      texts = {key: example[key] for key in keys}
      example.update(tf.cond(flip, lambda: _swap_left_right_in_keys(texts, keys), lambda: texts))
    return example
  return op


@register("value_range")
def value_range(vmin: float = -1.0, vmax: float = 1.0, in_min: float = 0.0, in_max: float = 255.0) -> Op:
  scale = (vmax - vmin) / (in_max - in_min)
  offset = vmin - in_min * scale

  def op(example: Example) -> Example:
    return {**example, "image": tf.cast(example["image"], tf.float32) * scale + offset}
  return op


@register("normalize")
def normalize(mean: str | tuple[float, float, float] = "clip", std: tuple[float, float, float] | None = None) -> Op:
  if isinstance(mean, str):
    if mean not in MEAN_STD_PRESETS:
      raise ValueError(f"unknown preset {mean!r}; known: {sorted(MEAN_STD_PRESETS)}")
    mean, std = MEAN_STD_PRESETS[mean]
  if std is None:
    raise ValueError("normalize needs std with an explicit mean")
  scale = 1.0 / (255.0 * tf.constant(std, tf.float32))
  offset = -tf.constant(mean, tf.float32) / tf.constant(std, tf.float32)

  def op(example: Example) -> Example:
    return {**example, "image": tf.cast(example["image"], tf.float32) * scale + offset}
  return op


# ------------------------------------------------------------------------------------------- text

@register("pick_caption")
def pick_caption() -> Op:
  def op(example: Example) -> Example:
    seed, example = take_seed(example)
    captions = example["captions"]
    index = tf.random.stateless_uniform([], seed, maxval=tf.shape(captions)[0], dtype=tf.int32)
    example = {**example, "text": captions[index]}
    del example["captions"]  # picked: later ops (e.g. flip_lr) need not touch the others
    return example
  return op


@register("all_captions")
def all_captions(num: int) -> Op:
  def op(example: Example) -> Example:
    captions = example["captions"][:num]
    count = tf.shape(captions)[0]
    text = tf.concat([captions, tf.fill([num - count], "")], 0)
    return {**example, "text": tf.ensure_shape(text, [num]), "text_valid": tf.range(num) < count}
  return op


@register("tokenize", batchable=True)
def tokenize(max_length: int | None = None, key: str = "text", bos: str | None = "cls", eos: str | None = "sep", *,
             context: OpContext) -> Op:
  tokenizer = context.tokenizer
  if tokenizer is None:
    raise ValueError("tokenize needs a tokenizer (data_config.tokenizer)")
  max_length = max_length or context.max_text_length
  if not max_length:
    raise ValueError("tokenize needs max_length (argument or data_config.max_text_length)")
  bos_id = _special_id(tokenizer, bos) if bos else None
  eos_id = _special_id(tokenizer, eos) if eos else None
  if max_length - (bos_id is not None) - (eos_id is not None) < 1:
    raise ValueError(f"max_length {max_length} leaves no room for tokens")

  def op(example: Example) -> Example:
    ids, mask = tokenize_and_pad(tokenizer, example[key], max_length, bos_id, eos_id)
    return {**example, f"{key}_ids": ids, f"{key}_mask": mask}
  return op


def tokenize_and_pad(tokenizer: Tokenizer, texts: tf.Tensor, max_length: int, bos_id: int | None,
                     eos_id: int | None) -> tuple[tf.Tensor, tf.Tensor]:
  """tf.string [...] -> ids int32 [..., L] ([BOS] tokens [EOS], truncated, padded with 0), mask int32 [..., L]."""
  rank = texts.shape.rank
  flat = tf.reshape(texts, [-1])
  tokens = tokenizer.tokenize(flat)
  tokens = tokens[:, :max_length - (bos_id is not None) - (eos_id is not None)]
  rows = tokens.nrows()
  parts = ([tf.fill([rows, 1], bos_id)] if bos_id is not None else []) + [tokens] + (
      [tf.fill([rows, 1], eos_id)] if eos_id is not None else [])
  tokens = tf.concat(parts, axis=1) if len(parts) > 1 else tokens
  ids = tokens.to_tensor(default_value=tokenizer.pad_id, shape=[None, max_length])
  mask = tf.sequence_mask(tokens.row_lengths(), max_length, dtype=tf.int32)
  out_shape = tf.concat([tf.shape(texts), [max_length]], 0)
  ids, mask = tf.reshape(ids, out_shape), tf.reshape(mask, out_shape)
  if rank is not None:
    static = texts.shape.as_list() + [max_length]
    ids, mask = tf.ensure_shape(ids, static), tf.ensure_shape(mask, static)
  return ids, mask


def _special_id(tokenizer: Tokenizer, name: str) -> int:
  attribute = f"{name}_id"
  if name not in ("cls", "sep", "enc", "dec", "mask", "img") or not hasattr(tokenizer, attribute):
    raise ValueError(f"unknown special token {name!r}; use cls, sep, enc, dec, mask or img")
  return getattr(tokenizer, attribute)


# ---------------------------------------------------------------------------------------- objects

@register("pad_objects")
def pad_objects(max_objects: int, box_format: str = "xyxy") -> Op:
  if box_format not in ("xyxy", "cxcywh"):
    raise ValueError(f"box_format must be xyxy or cxcywh, got {box_format!r}")

  def op(example: Example) -> Example:
    boxes = example["boxes"][:max_objects]
    labels = tf.cast(example["labels"][:max_objects], tf.int32)
    if box_format == "cxcywh":
      x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
      boxes = tf.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)
    count = tf.shape(boxes)[0]
    padding = max_objects - count
    padded = {
        **example,
        "boxes": tf.ensure_shape(tf.pad(boxes, [[0, padding], [0, 0]]), [max_objects, 4]),
        "labels": tf.ensure_shape(tf.pad(labels, [[0, padding]]), [max_objects]),
        "box_valid": tf.range(max_objects) < count,
    }
    if "colours" in example:
      colours = tf.cast(example["colours"][:max_objects], tf.int32)
      padded["colours"] = tf.ensure_shape(tf.pad(colours, [[0, padding]], constant_values=-1), [max_objects])
    return padded
  return op
