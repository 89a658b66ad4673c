"""Runs Python (or a command) in a subprocess for the tests: CPU only, quiet TensorFlow, and
one hang guard for all of them."""
import os
import subprocess
import sys

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# Far above any run (the slowest, two training processes, takes 36 s in CI on a 2 GHz AVX2
# EPYC): it only turns a hang into a failure.
HANG_GUARD_S = 900
EIGHT_CPU_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def run_command(command: list[str], *, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess:
  """Runs `command` from the repository root with this environment plus `env`."""
  full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu", **(env or {})}
  return subprocess.run(command, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True,
                        timeout=HANG_GUARD_S, check=False)


def run_python(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  """Runs `python -c code` with this interpreter."""
  return run_command([sys.executable, "-c", code], env=env)


def run_module(module: str, args: list[str], *, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
  """Runs `python -m module args...`."""
  return run_command([sys.executable, "-m", module, *args], env=env)
