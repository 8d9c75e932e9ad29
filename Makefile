# Two commands on a fresh machine:
#   make train   -> creates .venv, installs the package, runs the quickstart experiment (SFT then GRPO, CPU)
#   make test    -> creates .venv, installs test extras (torch==2.13.0 CPU first), runs the default test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
RUN_DIR ?= runs/quickstart
SEED ?= 0

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
	$(PY) experiments/train.py +experiment=quickstart run_dir=$(RUN_DIR) train.seed=$(SEED)

test: venv-test
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q tests

test-slow: venv-test
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -m slow tests

# The paper's three experiments on the CPU default, then one report over all of them. Affordable on 2 cores:
# one SFT warm start (the quickstart's, random stated preferences) and one tokenizer shared by every run
# (sft.checkpoint_dir / tokenizer; created first, so parallel launchers may be used for the sweep), short
# GRPO (PAPER_STEPS), PAPER_EVAL_TASKS held-out tasks x 2 episodes, 1 seed per point.
#   1. reward weightings: 5 cost weights, paper scalarisation, no latency weight (test split)
#   2. generalisation: fixed P (cost weight 0.25) on test, unseen_tools, unseen_prices + 5 robustness wrappers
#   3. preferences: a random stated P per task (the report's preference table)
PAPER_STEPS ?= 5
PAPER_EVAL_TASKS ?= 100
PAPER_COMMON = sft.checkpoint_dir=$(PAPER_DIR)/sft/sft tokenizer=$(PAPER_DIR)/sft/tokenizer \
	train.steps=$(PAPER_STEPS) eval.num_tasks=$(PAPER_EVAL_TASKS) train.progress_bar=false
paper: venv
	$(PY) experiments/sft.py +experiment=quickstart run_dir=$(PAPER_DIR)/sft train.progress_bar=false
	$(PY) experiments/train.py --multirun +experiment=sweep_reward_weights run_dir=$(PAPER_DIR)/reward_weights \
		reward=paper env.pref_latency=0.0 env.pref_cost=0.0,0.25,0.5,0.75,1.0 eval.splits=[] $(PAPER_COMMON)
	$(PY) experiments/train.py +experiment=generalisation run_dir=$(PAPER_DIR)/generalisation train.seed=0 \
		env=qa_quickstart eval.splits=[unseen_tools,unseen_prices] \
		eval.robustness=[tool_errors,tool_timeouts,schema_drift,latency_spikes,noisy_search] \
		eval.robustness_tasks=50 $(PAPER_COMMON)
	$(PY) experiments/train.py +experiment=preferences run_dir=$(PAPER_DIR)/preferences train.seed=0 \
		env=qa_quickstart $(PAPER_COMMON)
	$(PY) experiments/report.py --combine $(PAPER_DIR)/reward_weights $(PAPER_DIR)/generalisation \
		$(PAPER_DIR)/preferences --out $(PAPER_DIR)

bench: venv-test
	for f in benchmarks/[a-z]*.py; do PYTHONPATH=$$PWD $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs outputs multirun
