"""Evaluate CLI: python -m vlp_jax.evaluate --config=configs/<family>.py:<variant> --workdir=DIR

Restores the latest (or --step) checkpoint of DIR, runs the config's evaluators on their
held-out splits, appends {"step": ..., "<evaluator>/<metric>": ...} to DIR/metrics.jsonl and
prints the results as one JSON object on the last line of stdout.
"""
import json
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from vlp_jax.train.config import ConfigError, validate_config
from vlp_jax.train.distributed import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() with auto-detection.")
flags.mark_flags_as_required(["config", "workdir"])


def evaluate(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
             input_fn: Any = None) -> dict[str, Any]:
  """{"step": step, "<evaluator>/<metric>": value, ...}, also appended to metrics.jsonl."""
  from vlp_jax.models.registry import get_family  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from vlp_jax.train import checkpoint, evaluation, metrics, optim, sharding, state, trainer
  trainer._configure_host()  # pylint: disable=protected-access
  mesh_shape = validate_config(config, num_devices=jax.device_count(),
                               process_count=jax.process_count())
  model = get_family(config.model.family).build(config)
  mesh = sharding.make_mesh(mesh_shape)
  rules = sharding.logical_axis_rules(config.logical_axis_rules)
  tx, _ = optim.make_optimizer(config.optimizer, config.total_steps)
  checkpointer = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints,
                                         async_save=False)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}")
  with nn.logical_axis_rules(rules):  # no global mesh while tracing init (see trainer)
    abstract_state, _ = state.state_shardings(model, tx, mesh, rules)
    params, extra_state, restored_step = checkpointer.restore_model(
        abstract_state.params, abstract_state.extra_state, step)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    results = evaluation.run_evaluators(model, config, params, extra_state, mesh,
                                        input_fn or trainer.default_input_fn)
  checkpointer.close()
  record = {"step": restored_step, **metrics.to_python(results)}
  if jax.process_index() == 0:
    metrics.append_jsonl(os.path.join(workdir, metrics.METRICS_FILENAME), record)
  return record


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  initialize_distributed(auto=_DISTRIBUTED.value)
  try:
    record = evaluate(_CONFIG.value, _WORKDIR.value, _STEP.value)
  except (ConfigError, FileNotFoundError) as error:
    print(f"cannot evaluate: {error}", file=sys.stderr, flush=True)
    sys.exit(2)
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  app.run(main)
