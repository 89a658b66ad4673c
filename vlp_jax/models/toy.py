"""A minimal example family: an MLP classifier on synthetic features, for tests and as a template.

Data: `toy_synthetic`, an in-graph tf.data source. Example `i` of a split has features
`x ~ N(0, 1)` [F] drawn from a stateless seed `(split, i)` and label `argmax(x @ W)` for a
fixed teacher `W` [F, C], so the task is learnable and every batch is reproducible.
Model: input projection, `num_layers` pre-LN residual MLP blocks (scanned and/or
rematerialised by config), LayerNorm, linear head. `extra_state` keeps a running mean of the
input features, standing in for the statistics / momentum encoders of real families.
"""
from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from vlp_jax.data.iterator import CheckpointableIterator
from vlp_jax.models.registry import Evaluator, ModelFamily, TrainableModel
from vlp_jax.train.memory import remat_policy, uses_remat

_VARIANTS = {
    "tiny": dict(width=32, mlp_dim=64, num_layers=2),
    "small": dict(width=256, mlp_dim=1024, num_layers=4),
}
_TEACHER_SEED = (1234, 5678)
_SPLIT_SEEDS = {"train": 1, "test": 2}


def default_config(variant: str) -> ml_collections.ConfigDict:
  """`model` and `data` sections of the toy family for `variant` in {tiny, small}."""
  if variant not in _VARIANTS:
    raise ValueError(f"unknown toy variant {variant!r}; known: {sorted(_VARIANTS)}")
  model = ml_collections.ConfigDict(dict(family="toy", variant=variant, **_VARIANTS[variant],
                                         feature_mean_momentum=0.99))
  data = ml_collections.ConfigDict(dict(
      name="toy_synthetic", num_features=16, num_classes=4, train_examples=4096,
      eval_examples=200, train_split="train", eval_split="test", shuffle_buffer=1024))
  return ml_collections.ConfigDict(dict(model=model, data=data))


# ----------------------------------------------------------------------------- data
def make_toy_pipeline(data_config: ml_collections.ConfigDict, *, split: str, train: bool,
                      global_batch_size: int, seed: int, process_index: int | None = None,
                      process_count: int | None = None) -> CheckpointableIterator:
  """This process's share of `toy_synthetic` batches: {"features" [b, F], "label" [b], "mask" [b]}.

  Same signature as `vlp_jax.data.pipeline.make_pipeline`. Training iterates forever in an
  order shuffled by `seed`; evaluation covers the split once, padded to whole global batches
  (padding has `mask` 0), with the same number of batches on every process.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} does not divide over "
                     f"{process_count} processes")
  local_batch = global_batch_size // process_count
  split_seed = _SPLIT_SEEDS[split]
  num_examples = data_config.train_examples if train else data_config.eval_examples

  def make_example(index: tf.Tensor) -> dict[str, tf.Tensor]:
    return _toy_example(index, split_seed, data_config.num_features, data_config.num_classes)

  if train:
    indices = tf.data.Dataset.range(num_examples).shuffle(
        min(data_config.shuffle_buffer, num_examples), seed=seed,
        reshuffle_each_iteration=True).repeat()
    dataset = indices.shard(process_count, process_index).map(
        make_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(local_batch, drop_remainder=True)
  else:
    num_batches = -(-num_examples // global_batch_size)
    own = len(range(process_index, num_examples, process_count))
    padding = tf.data.Dataset.range(num_batches * local_batch - own).map(
        lambda _: tf.constant(-1, tf.int64))
    dataset = tf.data.Dataset.range(num_examples).shard(process_count, process_index)
    dataset = dataset.concatenate(padding).map(make_example).batch(local_batch)
  return CheckpointableIterator(dataset.prefetch(2))


def _toy_example(index: tf.Tensor, split_seed: int, num_features: int,
                 num_classes: int) -> dict[str, tf.Tensor]:
  """One example; `index` -1 gives a padding example (zeros, mask 0)."""
  seed = tf.stack([tf.constant(split_seed, tf.int64), tf.maximum(index, 0)])
  features = tf.random.stateless_normal([num_features], seed=seed)
  teacher = tf.random.stateless_normal([num_features, num_classes], seed=_TEACHER_SEED)
  label = tf.argmax(tf.linalg.matvec(teacher, features, transpose_a=True), output_type=tf.int32)
  real = index >= 0
  return {"features": tf.where(real, features, tf.zeros_like(features)),
          "label": tf.where(real, label, 0),
          "mask": tf.cast(real, tf.float32)}


# ---------------------------------------------------------------------------- model
class ResidualMlpBlock(nn.Module):
  """Pre-LN residual MLP: x + W2 gelu(W1 LN(x)). [B, D] -> [B, D]."""
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
    y = nn.LayerNorm(dtype=jnp.float32, scale_init=nn.with_logical_partitioning(
        nn.initializers.ones, ("embed",)), bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("embed",)))(x)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("embed", "mlp")), bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("mlp",)))(y)
    y = nn.gelu(y)
    y = nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("mlp", "embed")), bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("embed",)))(y)
    x = x + y.astype(x.dtype)
    return nn.with_logical_constraint(x, ("activation_batch", "activation_embed")), None


class ToyClassifier(nn.Module):
  """MLP classifier: features [B, F] -> logits [B, C] (float32)."""
  num_classes: int
  width: int
  mlp_dim: int
  num_layers: int
  dtype: Any = jnp.float32
  remat_policy: str = "none"
  scan_layers: bool = False

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    x = nn.Dense(self.width, dtype=self.dtype, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), (None, "embed")), bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("embed",)))(features).astype(jnp.float32)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_embed"))
    block = ResidualMlpBlock
    if uses_remat(self.remat_policy):
      block = nn.remat(block, policy=remat_policy(self.remat_policy),
                       prevent_cse=not self.scan_layers)
    if self.scan_layers:
      blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = blocks(self.mlp_dim, self.dtype, name="blocks")(x, None)
    else:
      for i in range(self.num_layers):
        x, _ = block(self.mlp_dim, self.dtype, name=f"block_{i}")(x, None)
    x = nn.LayerNorm(dtype=jnp.float32, scale_init=nn.with_logical_partitioning(
        nn.initializers.ones, ("embed",)), bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("embed",)))(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("embed", "vocab")), bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("vocab",)))(x)
    return logits.astype(jnp.float32)


def classification_terms(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example cross-entropy and correctness (float32 [B] each) for logits [B, C]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  cross_entropy = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return cross_entropy, correct


def build(config: ml_collections.ConfigDict) -> TrainableModel:
  """The toy `TrainableModel` for a full run config."""
  module = ToyClassifier(num_classes=config.data.num_classes, width=config.model.width,
                         mlp_dim=config.model.mlp_dim, num_layers=config.model.num_layers,
                         dtype=jnp.dtype(config.dtype), remat_policy=config.remat_policy,
                         scan_layers=config.scan_layers)
  num_features = config.data.num_features
  momentum = config.model.feature_mean_momentum

  def init(rng: jax.Array) -> tuple[Any, Any]:
    params = module.init(rng, jnp.zeros((1, num_features), jnp.float32))["params"]
    return params, {"feature_mean": jnp.zeros((num_features,), jnp.float32)}

  def loss_fn(params: Any, extra_state: Any, batch: dict[str, jax.Array],
              rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array], Any]:
    del rng  # deterministic model
    logits = module.apply({"params": params}, batch["features"])
    cross_entropy, correct = classification_terms(logits, batch["label"])
    loss = jnp.mean(cross_entropy)
    batch_mean = jnp.mean(batch["features"], axis=0)
    feature_mean = momentum * extra_state["feature_mean"] + (1 - momentum) * batch_mean
    metrics = {"cross_entropy": loss, "accuracy": jnp.mean(correct),
               "batch_checksum": jnp.sum(batch["features"]) + jnp.sum(batch["label"])}
    return loss, metrics, {"feature_mean": feature_mean}

  @jax.jit
  def eval_sums(params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    logits = module.apply({"params": params}, batch["features"])
    cross_entropy, correct = classification_terms(logits, batch["label"])
    mask = batch["mask"]
    return {"cross_entropy": jnp.sum(cross_entropy * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}

  def run_classification_eval(params: Any, extra_state: Any,
                              batches: Iterable[dict[str, jax.Array]]) -> dict[str, float]:
    del extra_state
    totals = {"cross_entropy": 0.0, "correct": 0.0, "count": 0.0}
    for batch in batches:
      for name, value in jax.device_get(eval_sums(params, batch)).items():
        totals[name] += float(value)
    count = max(totals["count"], 1.0)
    return {"accuracy": totals["correct"] / count,
            "cross_entropy": totals["cross_entropy"] / count,
            "num_examples": totals["count"]}

  return TrainableModel(init=init, loss_fn=loss_fn,
                        evaluators={"classification": Evaluator(run=run_classification_eval)})


def toy_param_count(config: ml_collections.ConfigDict) -> int:
  """Number of trainable parameters of the toy model for `config`."""
  params, _ = jax.eval_shape(build(config).init, jax.random.key(0))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(params)))


FAMILY = ModelFamily(name="toy", default_config=default_config, build=build)
