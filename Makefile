# Two commands on a fresh machine:
#   make train   -> creates .venv, installs the package, runs the quickstart experiment (SFT then GRPO, CPU)
#   make test    -> creates .venv, installs test extras (torch==2.13.0 CPU first), runs the default test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
RUN_DIR ?= runs/quickstart

.PHONY: venv venv-test train test test-slow bench clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.runtime
venv-test: $(VENV)/.test

train: venv
	$(PY) experiments/train.py +experiment=quickstart run_dir=$(RUN_DIR)

test: venv-test
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q tests

test-slow: venv-test
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -m slow tests

bench: venv
	for f in benchmarks/*.py; do $(PY) $$f; done

clean:
	rm -rf $(VENV) runs outputs multirun
