# Two commands on a fresh machine:
#   make train   -> creates .venv, installs the package, runs the quickstart experiment (SFT then GRPO, CPU)
#   make test    -> creates .venv, installs test extras (torch==2.13.0 CPU first), runs the default test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
RUN_DIR ?= runs/quickstart

PAPER_DIR ?= runs/paper

.PHONY: venv venv-test venv-sweep train test test-slow bench paper clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $@

$(VENV)/.sweep: $(VENV)/.runtime
	$(PIP) install -q -e '.[sweep]'
	touch $@

venv: $(VENV)/.runtime
venv-test: $(VENV)/.test
venv-sweep: $(VENV)/.sweep

train: venv
	$(PY) experiments/train.py +experiment=quickstart run_dir=$(RUN_DIR)

test: venv-test
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q tests

test-slow: venv-test
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -m slow tests

# The paper's three experiments on the CPU default, then one report over all of them:
#   reward weightings (6 cost weights, paper scalarisation, no latency weight), generalisation, preferences
paper: venv
	$(PY) experiments/train.py +experiment=sweep_reward_weights run_dir=$(PAPER_DIR)/reward_weights \
		reward=paper env.pref_latency=0.0
	$(PY) experiments/train.py +experiment=generalisation run_dir=$(PAPER_DIR)/generalisation train.seed=0
	for split in unseen_tools unseen_prices; do \
		$(PY) experiments/evaluate.py +experiment=generalisation run_dir=$(PAPER_DIR)/generalisation/train.seed=0 \
			eval.split=$$split hydra.mode=RUN || exit 1; done
	$(PY) experiments/train.py +experiment=preferences run_dir=$(PAPER_DIR)/preferences train.seed=0
	$(PY) experiments/report.py --combine $(PAPER_DIR)/reward_weights $(PAPER_DIR)/generalisation \
		$(PAPER_DIR)/preferences --out $(PAPER_DIR)

bench: venv-test
	for f in benchmarks/[a-z]*.py; do PYTHONPATH=$$PWD $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs outputs multirun
