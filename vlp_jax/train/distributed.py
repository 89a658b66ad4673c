"""Multi-process start-up, the same for local CPU processes, GPU clusters and TPU pods.

- Explicit (local processes, `launch/local_multiprocess.sh`): environment variables
  `VLP_COORDINATOR_ADDRESS` (host:port), `VLP_NUM_PROCESSES`, `VLP_PROCESS_ID`; CPU
  collectives go through gloo.
- Auto (`--distributed`, used by `launch/tpu_pod.sh` and `launch/gpu_slurm.sbatch`):
  `jax.distributed.initialize()` detects TPU pods and SLURM by itself.
- Neither: a single process.
"""
import os

import jax

ENV_COORDINATOR = "VLP_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "VLP_NUM_PROCESSES"
ENV_PROCESS_ID = "VLP_PROCESS_ID"


def initialize_distributed(auto: bool = False) -> None:
  """Joins the job's processes (no-op for a single process); call before any JAX computation."""
  jax.config.update("jax_threefry_partitionable", True)
  coordinator = os.environ.get(ENV_COORDINATOR)
  if coordinator:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(os.environ[ENV_NUM_PROCESSES]),
                               process_id=int(os.environ[ENV_PROCESS_ID]))
  elif auto:
    jax.distributed.initialize()
