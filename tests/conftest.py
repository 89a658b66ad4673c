"""Shared pytest setup: quiet TensorFlow, keep it off accelerators, fixed random streams."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")
jax.config.update("jax_threefry_partitionable", True)


import pytest  # noqa: E402

SHAPES_FIXTURE_SIZES = {"train_size": 256, "validation_size": 64, "test_size": 64}


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """A tiny `shapes` build (64px, 256 train / 64 validation / 64 test), once per session.

  Returns the TFDS data_dir. Load it with
    `tfds.load("shapes/64px_train256_validation64_test64", split="train", data_dir=shapes_data_dir)`
  or `tfds.builder("shapes", config="64px", train_size=256, validation_size=64, test_size=64,
  data_dir=shapes_data_dir)` (after `import vlp_jax.data.builders`, which registers `shapes`).
  """
  import tensorflow_datasets as tfds

  import vlp_jax.data.builders  # noqa: F401  (registers the builders)

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder("shapes", config="64px", data_dir=data_dir, **SHAPES_FIXTURE_SIZES).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


@pytest.fixture(scope="session")
def shapes_tokenizer(shapes_data_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
  """A 200-piece SentencePiece model trained on the `shapes_data_dir` captions, once per
  session. Returns its path."""
  from vlp_jax.data.tokenizer import dataset_captions, train_sentencepiece

  path = str(tmp_path_factory.mktemp("tokenizer") / "shapes.model")
  captions = dataset_captions("shapes/64px_train256_validation64_test64", shapes_data_dir)
  train_sentencepiece(captions, vocab_size=200, output=path)
  return path


@pytest.fixture(scope="session")
def random_blip_run():
  """Factory: `make(workdir, vocab, noise, **model_fields)` writes a BLIP `tiny` run there
  (WordPiece `vocab`, the model fields overridden) whose params are random plus `noise` x
  N(0, 1) on every weight (zero biases and LayerNorms too), saved as step 1. Returns workdir."""

  def make(workdir: str, vocab: list[str], noise: float, **model_fields) -> str:
    import numpy as np
    from flax import linen as nn

    from vlp_jax.models import blip_family
    from vlp_jax.train import checkpoint
    from vlp_jax.train.config import run_config
    from vlp_jax.train.state import TrainState

    vocab_path = os.path.join(workdir, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as stream:
      stream.write("".join(token + "\n" for token in vocab))
    config = run_config("blip", "tiny")
    config.model.update(**model_fields)
    config.data.update(tokenizer=vocab_path, max_text_length=config.model.max_text_length)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as stream:
      stream.write(config.to_json_best_effort(indent=2))
    init = jax.jit(lambda rng: nn.meta.unbox(blip_family.build(config).init(rng)))
    params, extra_state = jax.device_get(init(jax.random.key(0)))
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: (x + noise * rng.normal(size=x.shape)).astype(np.float32),
                          params)
    saver = checkpoint.Checkpointer(workdir, async_save=False)
    saver.save(1, TrainState(step=jax.numpy.int32(1), params=params,
                             opt_state={"count": jax.numpy.zeros(())}, extra_state=extra_state))
    saver.close()
    return workdir

  return make
