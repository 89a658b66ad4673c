"""TBB's scalable malloc for CPU runs: the environment that preloads it, and re-running under it.

Under glibc, XLA CPU's per-step buffers come from fresh mappings (a worker thread's arena maps
anything over 64 MB anew) that are unmapped after the step, so every step faults its pages
in again: `benchmarks/blip_step.py`'s step faults 339k pages (0.6 s of kernel time per 2.1 s
step on 2 cores); the tiny BLIP trainer spends a quarter of its CPU time in the kernel.
tbbmalloc, told to keep objects over 64 MB cached, reuses them: that step takes 0.89x the
time, the tiny BLIP trainer runs 1.38x the steps per second.

It comes from the `tbb` wheel (the `cpu` and `test` extras, Linux). `python -m vlp_jax.train`,
`vlp_jax.demo` and `make test` run under it when it is installed, `LD_PRELOAD` is not set
already (a TPU VM may preload tcmalloc) and `VLP_MALLOC` is not `glibc`.

  python -m vlp_jax.train.host_allocator   # prints the variables, for `env $(...) cmd`
"""
import os
import sys
from collections.abc import Mapping, Sequence

HUGE_OBJECT_BYTES = 64 * 2**20  # tbbmalloc keeps objects over this size cached
OPT_OUT_VARIABLE = "VLP_MALLOC"  # "glibc": never preload
# The proxy replaces malloc/free; it needs libtbbmalloc loaded first.
_LIBRARIES = ("libtbbmalloc.so.2", "libtbbmalloc_proxy.so.2")


def preload_env(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
  """Variables that make a new process run under tbbmalloc; None where it should not.

  None when the `tbb` wheel's libraries are not in `<sys.prefix>/lib`, when `LD_PRELOAD` is
  already set (tbbmalloc itself, or another allocator) or `VLP_MALLOC=glibc`.
  """
  if environ.get(OPT_OUT_VARIABLE) == "glibc" or environ.get("LD_PRELOAD"):
    return None
  libraries = [os.path.join(sys.prefix, "lib", name) for name in _LIBRARIES]
  if not sys.platform.startswith("linux") or not all(map(os.path.exists, libraries)):
    return None
  return {"LD_PRELOAD": ":".join(libraries),
          "TBB_MALLOC_SET_HUGE_SIZE_THRESHOLD": str(HUGE_OBJECT_BYTES)}


def tbbmalloc_loaded() -> bool:
  """Whether this process runs under tbbmalloc's proxy (Linux: reads /proc/self/maps)."""
  try:
    with open("/proc/self/maps", encoding="utf-8") as maps:
      return _LIBRARIES[1] in maps.read()
  except OSError:
    return False


def reexec_under_tbbmalloc(interpreter_args: Sequence[str]) -> None:
  """Replaces this process with `python *interpreter_args` under tbbmalloc, if `preload_env`.

  Call it first thing (before jax, TensorFlow or torch start threads), e.g.
  `reexec_under_tbbmalloc(["-m", "vlp_jax.train", *sys.argv[1:]])`; otherwise it returns.
  """
  extra = preload_env()
  if extra is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *interpreter_args], {**os.environ, **extra})


if __name__ == "__main__":
  print(" ".join(f"{key}={value}" for key, value in (preload_env() or {}).items()))
