"""tf.data input pipelines over TFDS image-text datasets (the `features.image_text_features` schema).

    iterator = make_pipeline(config.data, split="train", train=True, global_batch_size=256, seed=0)
    batch = next(iterator)            # dict of numpy arrays, this process's share of the batch
    iterator.save(dir); iterator.restore(dir)

`data_config` fields (defaults in `default_data_config()`):
  name: TFDS name incl. config, e.g. "shapes/64px" (required).
  data_dir: TFDS data_dir (None: TFDS default).
  train_split / eval_split: the splits the trainer trains on / evaluates on ("train", "validation").
  tokenizer: tokenizer path (`*.model` SentencePiece or `vocab.txt` WordPiece); needed by `tokenize`.
  tokenizer_lower_case: WordPiece lower-casing + accent stripping (True).
  max_text_length: default length L of `tokenize` (32).
  preprocess: op spec for training, see `preprocess_ops`; a trailing `tokenize` runs once per batch.
  preprocess_eval: op spec for evaluation.
  shuffle_buffer: examples in the training shuffle buffer (10_000; encoded JPEGs, so the
    iterator checkpoint holds up to that many images).
  cache: cache the decoded-from-disk (still JPEG-encoded) examples in memory (False).
  require_captions: skip examples with no non-empty caption (True).
  source_features: which optional TFDS features reach the ops, of "captions", "objects" (boxes,
    labels, colours), "questions" (questions, answers, question_types), "referring"
    (referring_expressions, referring_object_index); default ("captions", "objects").
  prefetch_batches: batches prepared ahead (1); each one is also saved in iterator checkpoints.

Per process: the split is cut in `process_count` even, disjoint, contiguous parts
(`tfds.even_splits`); each process reads its own. Training shuffles files and examples with
`seed`, repeats forever and reshuffles every epoch; random ops get per-example stateless seeds
from (seed, process_index, position in the stream). Same seed -> same batches.

Evaluation is finite, in file order: every process yields the same number of batches
(ceil(largest process part / local batch)); the tail is padded with zero examples and `mask`
bool [B] marks the real ones. Captions: pick one with `pick_caption`, or keep all of them per
image with `all_captions(K)` (text_ids [B, K, L], text_valid [B, K]) - the retrieval layout.

Batch (with the default specs; ops decide): image float32 [B, H, W, 3], image_id int64 [B],
text_ids int32 [B, L], text_mask int32 [B, L] (1 = token), and with `pad_objects(N)` boxes
float32 [B, N, 4] normalised xyxy (or cxcywh), labels int32 [B, N], colours int32 [B, N] (-1
unknown; when the source has them), box_valid bool [B, N];
eval adds mask bool [B]. String features and variable-length source features are dropped.

An iterator checkpoint holds the shuffle buffer (encoded JPEGs), the images in flight in the
parallel map and the prefetched batches: ~85 MB for 224 px, batch 64, a 2,048-example buffer.

Bad records (an undecodable image, or no non-empty caption) are skipped, never fatal (in
eval, an example without captions stays as a masked-out slot so that it is counted). The
iterator counts them exactly (`iterator.skipped`, logged as they appear); the count covers
the stream up to the last batch returned, and the whole split once an eval iterator is
exhausted.
"""
import logging
import math
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import vlp_jax.data.builders  # noqa: F401  (registers the TFDS builders: shapes, coco_format)
from vlp_jax.data import preprocess_ops
from vlp_jax.data.iterator import CheckpointableIterator
from vlp_jax.data.tokenizer import load_tokenizer

Example = dict[str, tf.Tensor]
_INDEX_KEY = "_index"
_HAS_CAPTION_KEY = "_has_caption"
_LAST_INDEX_KEY = "_last_index"
_UNDECODABLE_KEY = "_skipped_undecodable"
_NO_CAPTION_KEY = "_skipped_no_caption"
_COUNTER_KEYS = (_LAST_INDEX_KEY, _UNDECODABLE_KEY, _NO_CAPTION_KEY)
_OPTIONAL_SOURCE_FEATURES = ("captions", "objects", "questions", "referring")
# Source features that may stay variable-length: dropped before batching unless an op made them fixed.
_SOURCE_KEYS = ("captions", "boxes", "labels", "colours", "questions", "answers", "question_types", "referring_expressions",
                "referring_object_index")


def default_data_config() -> ml_collections.ConfigDict:
  """All data_config fields with their defaults (`name` must be set)."""
  return ml_collections.ConfigDict({
      "name": "",
      "data_dir": None,
      "train_split": "train",  # the split the trainer trains on
      "eval_split": "validation",  # the split its evaluators read unless they name one
      "tokenizer": "",
      "tokenizer_lower_case": True,
      "max_text_length": 32,
      "preprocess": "decode|random_resized_crop(224)|pick_caption|flip_lr|normalize('clip')|tokenize",
      "preprocess_eval": "decode|resize(224)|pick_caption|normalize('clip')|tokenize",
      "shuffle_buffer": 10_000,
      "cache": False,
      "require_captions": True,
      "source_features": ("captions", "objects"),
      "prefetch_batches": 1,
  })


def make_pipeline(data_config: ml_collections.ConfigDict, *, split: str, train: bool, global_batch_size: int,
                  seed: int, process_index: int | None = None,
                  process_count: int | None = None) -> "InputIterator":
  """Builds this process's input iterator for a TFDS split (see the module docstring)."""
  hide_gpus_from_tensorflow()
  config = _with_defaults(data_config)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batch_size = local_batch_size(global_batch_size, process_count)
  builder = tfds.builder(config.name, data_dir=config.data_dir)
  process_splits = tfds.even_splits(split, n=process_count, drop_remainder=False)
  process_split = process_splits[process_index]
  read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=16 if train else 1,
                                add_tfds_id=False)
  source = builder.as_dataset(split=process_split, shuffle_files=train, read_config=read_config,
                              decoders={"image": tfds.decode.SkipDecoding()})
  num_examples = builder.info.splits[process_split].num_examples
  eval_batches = None
  if not train:
    largest_part = max(builder.info.splits[s].num_examples for s in process_splits)
    eval_batches = max(1, math.ceil(largest_part / batch_size))
  dataset = build_dataset(source, config, train=train, batch_size=batch_size, seed=seed, seed_salt=process_index,
                          eval_batches=eval_batches)
  return InputIterator(dataset, num_source_examples=None if train else num_examples,
                       description=f"{config.name}:{process_split}")


def hide_gpus_from_tensorflow() -> None:
  """Keeps TensorFlow off accelerators (JAX owns them); a no-op once TF devices are initialised."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    if tf.config.get_visible_devices("GPU"):
      logging.warning("TensorFlow already initialised with GPUs visible; the input pipeline may use one.")


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by {process_count} processes")
  return global_batch_size // process_count


def _with_defaults(data_config: ml_collections.ConfigDict | Mapping, require_name: bool = True
                   ) -> ml_collections.ConfigDict:
  """data_config over `default_data_config()` (plain merge: a list may replace a default tuple)."""
  defaults = default_data_config().to_dict()
  given = data_config.to_dict() if isinstance(data_config, ml_collections.ConfigDict) else dict(data_config)
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    logging.warning("data_config fields not used by the input pipeline: %s", unknown)
  config = ml_collections.ConfigDict({**defaults, **given})
  if require_name and not config.name:
    raise ValueError("data_config.name (TFDS name, e.g. 'shapes/64px') is required")
  return config


def build_dataset(source: tf.data.Dataset, data_config: ml_collections.ConfigDict | Mapping, *, train: bool,
                  batch_size: int, seed: int, seed_salt: int = 0, eval_batches: int | None = None) -> tf.data.Dataset:
  """Source dataset of TFDS dicts (image still JPEG bytes) -> batched, preprocessed dataset.

  `eval_batches`: the number of eval batches to pad to (None: pad only the last batch).
  """
  config = _with_defaults(data_config, require_name=False)
  tokenizer = load_tokenizer(config.tokenizer, lower_case=config.tokenizer_lower_case) if config.tokenizer else None
  context = preprocess_ops.OpContext(tokenizer=tokenizer, max_text_length=config.max_text_length)
  if train:  # Trailing batchable ops run once per batch; eval keeps them per example so padding stays zero.
    preprocess, preprocess_batch = preprocess_ops.parse_ops_batched_suffix(config.preprocess, context)
  else:
    preprocess, preprocess_batch = preprocess_ops.parse_ops(config.preprocess_eval, context), None
  autotune = tf.data.AUTOTUNE
  features_to_keep = tuple(config.source_features)
  unknown = set(features_to_keep) - set(_OPTIONAL_SOURCE_FEATURES)
  if unknown:
    raise ValueError(f"unknown source_features {sorted(unknown)}; choose from {_OPTIONAL_SOURCE_FEATURES}")
  require_captions = config.require_captions and "captions" in features_to_keep

  base_seed = tf.constant([seed, seed_salt], tf.int64)

  def prepare(index: tf.Tensor, features: Mapping) -> Example:
    example = preprocess(_add_index_and_seed(index, source_example(features, features_to_keep, require_captions),
                                             base_seed))
    if not train:  # Examples without captions become masked-out slots, so their count reaches the iterator.
      example["mask"] = example[_HAS_CAPTION_KEY]
    return _batchable_features(example, keep_strings=train)

  dataset = source.cache() if config.cache else source
  if train:
    dataset = dataset.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  dataset = dataset.enumerate().map(prepare, num_parallel_calls=autotune, deterministic=True)
  dataset = dataset.ignore_errors(log_warning=True).scan(_initial_counters(), _count_skipped)
  if train:
    dataset = dataset.filter(lambda example: example[_HAS_CAPTION_KEY])
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(lambda batch: _drop_strings(preprocess_batch(batch)))
  else:
    dataset = _pad_eval(dataset, batch_size, eval_batches)
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  options.experimental_optimization.map_parallelization = True
  options.experimental_optimization.map_fusion = True
  return dataset.with_options(options).prefetch(config.prefetch_batches)


def source_example(features: Mapping, keep: tuple[str, ...] = _OPTIONAL_SOURCE_FEATURES,
                   require_captions: bool = True) -> Example:
  """TFDS image-text features -> the flat example of `preprocess_ops` (boxes as normalised xyxy).

  Keeps the optional features named in `keep` (those present). `_has_caption` is False when
  captions are required and none is non-empty (`captions` is then [""]).
  """
  example = {"image": features["image"], "image_id": tf.cast(features["image_id"], tf.int64),
             _HAS_CAPTION_KEY: tf.constant(True)}
  if "captions" in keep and "captions" in features:
    captions = tf.reshape(features["captions"], [-1])
    captions = tf.boolean_mask(captions, tf.strings.length(tf.strings.strip(captions)) > 0)
    has_caption = tf.size(captions) > 0
    example["captions"] = tf.cond(has_caption, lambda: captions, lambda: tf.constant([""]))
    if require_captions:
      example[_HAS_CAPTION_KEY] = has_caption
  if "objects" in keep and "objects" in features:
    bbox = tf.reshape(tf.cast(features["objects"]["bbox"], tf.float32), [-1, 4])  # ymin, xmin, ymax, xmax
    example["boxes"] = tf.gather(bbox, [1, 0, 3, 2], axis=1)
    example["labels"] = tf.cast(features["objects"]["label"], tf.int64)
    if "colour" in features["objects"]:
      example["colours"] = tf.cast(features["objects"]["colour"], tf.int64)
  if "questions" in keep and "questions" in features:
    example["questions"] = features["questions"]["question"]
    example["answers"] = features["questions"]["answers"]
    example["question_types"] = features["questions"]["type"]
  if "referring" in keep and "referring" in features:
    example["referring_expressions"] = features["referring"]["expression"]
    example["referring_object_index"] = tf.cast(features["referring"]["object_index"], tf.int64)
  return example


def _add_index_and_seed(index: tf.Tensor, example: Example, base_seed: tf.Tensor) -> Example:
  seed = tf.random.experimental.stateless_fold_in(base_seed, index)
  return {**example, _INDEX_KEY: index, preprocess_ops.SEED_KEY: seed}


def _initial_counters() -> dict[str, tf.Tensor]:
  return {_LAST_INDEX_KEY: tf.constant(-1, tf.int64), _UNDECODABLE_KEY: tf.constant(0, tf.int64),
          _NO_CAPTION_KEY: tf.constant(0, tf.int64)}


def _count_skipped(counters: dict[str, tf.Tensor], example: Example) -> tuple[dict[str, tf.Tensor], Example]:
  """Running counts: positions missing since the last example were dropped by `ignore_errors`."""
  index = example[_INDEX_KEY]
  counters = {
      _LAST_INDEX_KEY: index,
      _UNDECODABLE_KEY: counters[_UNDECODABLE_KEY] + index - counters[_LAST_INDEX_KEY] - 1,
      _NO_CAPTION_KEY: counters[_NO_CAPTION_KEY] + tf.cast(tf.logical_not(example[_HAS_CAPTION_KEY]), tf.int64),
  }
  example = {key: value for key, value in example.items() if key != _INDEX_KEY}
  return counters, {**example, **counters}


def _batchable_features(example: Example, keep_strings: bool = False) -> Example:
  """Keeps fixed-shape features (and the bookkeeping keys); checks the rest is droppable."""
  kept = {}
  for key, value in example.items():
    if key in (_INDEX_KEY, _HAS_CAPTION_KEY):
      kept[key] = value
    elif key.startswith("_") or (value.dtype == tf.string and not (keep_strings and value.shape.is_fully_defined())):
      continue
    elif value.shape.is_fully_defined():
      kept[key] = value
    elif key not in _SOURCE_KEYS:
      raise ValueError(f"feature {key!r} has variable shape {value.shape}; "
                       "add a resize / pad op to the preprocess spec")
  if "image" not in kept:
    raise ValueError("the preprocess spec must produce a fixed-size image (e.g. decode|resize(224))")
  return kept


def _drop_strings(batch: Example) -> Example:
  return {key: value for key, value in batch.items() if value.dtype != tf.string and key != _HAS_CAPTION_KEY}


def _pad_eval(dataset: tf.data.Dataset, batch_size: int, num_batches: int | None) -> tf.data.Dataset:
  """Pads with zero examples (`mask` False) to `num_batches` full batches (or to the next full batch)."""
  padding = tf.data.Dataset.from_tensors(
      tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), dataset.element_spec))
  if num_batches is None:
    return dataset.concatenate(padding.repeat(batch_size - 1)).batch(batch_size, drop_remainder=True)
  return dataset.concatenate(padding.repeat()).take(num_batches * batch_size).batch(batch_size, drop_remainder=True)


class InputIterator(CheckpointableIterator):
  """`CheckpointableIterator` over a `build_dataset` pipeline that also counts skipped examples.

  `skipped` = {"undecodable": n, "no_caption": m} for the stream up to the last batch returned;
  once an eval iterator is exhausted, the undecodable count covers the whole split. Batches
  are read-only numpy views of TensorFlow's buffers (no copy).
  """

  def __init__(self, dataset: tf.data.Dataset, num_source_examples: int | None = None, description: str = "input"):
    super().__init__(dataset)
    self.element_spec = {k: v for k, v in dataset.element_spec.items() if not k.startswith("_")}
    self.num_source_examples = num_source_examples
    self.description = description
    self.skipped = {"undecodable": 0, "no_caption": 0}
    self._last_index = -1
    self._finished = False

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      element = next(self._iterator)
    except StopIteration:
      self._finish()
      raise
    # np.asarray views the tensor's buffer (read-only) instead of copying it like `.numpy()`:
    # a 64 x 224 x 224 x 3 float32 batch copy costs ~25 ms of the input thread.
    batch = tf.nest.map_structure(np.asarray, element)
    counters = {key: int(np.max(batch.pop(key))) for key in _COUNTER_KEYS}
    batch.pop(_HAS_CAPTION_KEY, None)
    self._last_index = max(self._last_index, counters[_LAST_INDEX_KEY])
    self._update({"undecodable": counters[_UNDECODABLE_KEY], "no_caption": counters[_NO_CAPTION_KEY]})
    return batch

  def _finish(self) -> None:
    if self._finished or self.num_source_examples is None:
      return
    self._finished = True
    tail = self.num_source_examples - 1 - self._last_index
    self._update({**self.skipped, "undecodable": self.skipped["undecodable"] + tail})

  def _update(self, skipped: dict[str, int]) -> None:
    skipped = {key: max(value, self.skipped[key]) for key, value in skipped.items()}
    if skipped != self.skipped:
      self.skipped = skipped
      logging.warning("%s: skipped %d examples so far (%d undecodable images, %d without a non-empty caption)",
                      self.description, self.num_skipped, skipped["undecodable"], skipped["no_caption"])
