# Quick start: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv venv-test demo test test-fast clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[cpu]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

demo: venv
	$(PY) -m vlp_jax.demo --data_dir data --workdir runs/demo --total_steps 1200

# Under tbbmalloc where installed (see vlp_jax/train/host_allocator.py).
test: venv-test
	env $$($(PY) -m vlp_jax.train.host_allocator) $(PY) -m pytest -q -rxX --durations=25 $(PYTEST_ARGS)

test-fast: venv-test
	env $$($(PY) -m vlp_jax.train.host_allocator) $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) data runs
