"""Train CLI: python -m vlp_jax.train --config=configs/<family>.py:<variant> --workdir=DIR

Flags: --config (ml_collections config file with variant, plus --config.<field>=<value>
overrides), --workdir (checkpoints, metrics.jsonl, tensorboard/; an existing run resumes),
--distributed (jax.distributed.initialize() auto-detection on TPU pods / SLURM; local
processes use the VLP_* variables, see vlp_jax.train.distributed).
Exit codes: 0 done or preempted (SIGTERM/SIGINT: checkpoint saved, rerun to resume),
2 invalid config, 3 non-finite loss (last good checkpoint kept).
"""
import sys

if __name__ == "__main__":  # before jax and TensorFlow load: see vlp_jax.train.host_allocator
  from vlp_jax.train.host_allocator import reexec_under_tbbmalloc
  reexec_under_tbbmalloc(["-m", "vlp_jax.train", *sys.argv[1:]])

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags

from vlp_jax.train.config import ConfigError
from vlp_jax.train.distributed import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (resumes when it has one).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() with auto-detection.")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_INVALID_CONFIG = 2
EXIT_NON_FINITE = 3


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  initialize_distributed(auto=_DISTRIBUTED.value)
  from vlp_jax.train import trainer  # pylint: disable=g-import-not-at-top
  try:
    result = trainer.train(_CONFIG.value, _WORKDIR.value)
  except ConfigError as error:
    print(f"invalid config: {error}", file=sys.stderr, flush=True)
    sys.exit(EXIT_INVALID_CONFIG)
  except trainer.NonFiniteLossError as error:
    print(f"stopped: {error}", file=sys.stderr, flush=True)
    sys.exit(EXIT_NON_FINITE)
  if result.status == "preempted":
    print(f"preempted at step {result.step}: checkpoint saved; rerun the same command to "
          "resume", file=sys.stderr, flush=True)
  print(trainer.result_summary(result), flush=True)


if __name__ == "__main__":
  app.run(main)
