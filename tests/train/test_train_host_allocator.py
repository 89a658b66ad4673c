"""host_allocator: tbbmalloc is preloaded only where it should be, and keeps XLA's step buffers."""
import json
import os

import pytest

from subprocess_testing import run_python
from vlp_jax.train import host_allocator

_INSTALLED = host_allocator.preload_env({}) is not None
needs_tbbmalloc = pytest.mark.skipif(not _INSTALLED, reason="the tbb wheel is not installed")

# A jitted step with two 96 MB temporaries (the arrays the dot reads), run 8 times; prints
# whether tbbmalloc is loaded and the page faults of each call.
_FAULTS_PER_CALL = """
import json, resource
from vlp_jax.train.host_allocator import tbbmalloc_loaded
import jax, jax.numpy as jnp
step = jax.jit(lambda x: jnp.dot(jnp.sin(x), jnp.cos(x)))
x = jnp.ones((24 * 2**20,), jnp.float32)
faults = []
for _ in range(8):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  step(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tbbmalloc": tbbmalloc_loaded(), "faults": faults}))
"""
_PAGES_PER_TEMPORARY = 24 * 2**20 * 4 // 4096  # 24,576


def _glibc_env() -> dict[str, str]:
  return {"LD_PRELOAD": "", host_allocator.OPT_OUT_VARIABLE: "glibc"}


def _faults(env: dict[str, str]) -> dict:
  process = run_python(_FAULTS_PER_CALL, env=env)
  assert process.returncode == 0, process.stderr[-2000:]
  return json.loads(process.stdout.strip().splitlines()[-1])


def test_no_preload_over_another_allocator_or_when_opted_out():
  assert host_allocator.preload_env({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}) is None
  assert host_allocator.preload_env({host_allocator.OPT_OUT_VARIABLE: "glibc"}) is None


@needs_tbbmalloc
def test_preload_env_names_the_installed_libraries():
  env = host_allocator.preload_env({})
  libraries = env["LD_PRELOAD"].split(":")
  assert [os.path.basename(path) for path in libraries] == [
      "libtbbmalloc.so.2", "libtbbmalloc_proxy.so.2"]
  assert all(os.path.exists(path) for path in libraries)
  assert int(env["TBB_MALLOC_SET_HUGE_SIZE_THRESHOLD"]) == host_allocator.HUGE_OBJECT_BYTES


@needs_tbbmalloc
def test_reexec_runs_the_same_command_under_tbbmalloc():
  code = ("import sys; from vlp_jax.train import host_allocator as h; "
          "h.reexec_under_tbbmalloc(['-c', 'from vlp_jax.train import host_allocator as h; "
          "print(\"loaded\", h.tbbmalloc_loaded())']); print('not re-executed')")
  process = run_python(code, env={"LD_PRELOAD": "", host_allocator.OPT_OUT_VARIABLE: ""})
  assert process.returncode == 0, process.stderr[-2000:]
  assert process.stdout.strip() == "loaded True"
  process = run_python(code, env=_glibc_env())
  assert process.stdout.strip() == "not re-executed"


@needs_tbbmalloc
def test_tbbmalloc_reuses_the_pages_of_large_step_buffers():
  glibc = _faults(_glibc_env())
  tbb = _faults(host_allocator.preload_env({}))
  assert not glibc["tbbmalloc"] and tbb["tbbmalloc"]
  # glibc maps both temporaries afresh on every call: each page faults again ...
  assert min(glibc["faults"][2:]) > _PAGES_PER_TEMPORARY, glibc
  # ... tbbmalloc keeps them cached once the first calls have allocated them. It does re-map
  # them now and then (one later call in one CI run; one benchmark step in 30 took 8 s), so
  # the check is that most later calls fault almost nothing.
  faulting = [f for f in tbb["faults"][2:] if f > _PAGES_PER_TEMPORARY // 20]
  assert len(faulting) <= 2, tbb
