"""The [sweep] extra's Hydra plugins drive the real CLI (slow: each trial trains a tiny run)."""
import json
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["train.steps=2", "sft.steps=5", "sft.num_tasks=32", "train.num_tasks=64", "eval.num_tasks=8",
        "train.tasks_per_step=4", "train.progress_bar=false"]


def _train(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "train.py"), *args, *TINY],
                          env=env, cwd=ROOT, timeout=1500, capture_output=True, text=True)


@pytest.mark.slow
def test_optuna_two_trial_study_single_objective(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    study = str(tmp_path / "study")
    out = _train(["--multirun", "+experiment=quickstart", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                  "hydra.sweeper.direction=maximize", "hydra.sweeper.sampler.seed=0",
                  "env.pref_cost=interval(0.1,0.9)", f"run_dir={study}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    res = yaml.safe_load(open(os.path.join(study, "optimization_results.yaml")))
    assert res["name"] == "optuna" and "env.pref_cost" in res["best_params"]
    trials = [d for d in os.listdir(study) if d.startswith("env.pref_cost=")]
    assert len(trials) == 2 and all(os.path.exists(os.path.join(study, d, "summary.json")) for d in trials)


@pytest.mark.slow
def test_optuna_multi_objective_preset(tmp_path):
    """The preset's two-direction study: every trial returns (accuracy, mean $) of grpo from its summary."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    study = str(tmp_path / "mo")
    out = _train(["+experiment=sweep_optuna", "hydra.sweeper.n_trials=2", f"run_dir={study}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    res = yaml.safe_load(open(os.path.join(study, "optimization_results.yaml")))
    trials = {}
    for d in os.listdir(study):
        if os.path.exists(os.path.join(study, d, "summary.json")):
            m = json.load(open(os.path.join(study, d, "summary.json")))["policies"]["grpo"]
            trials[d] = (m["accuracy"], m["mean_cost_usd"])
    assert len(trials) == 2
    # the Pareto set optuna reports is made of the trials' own (accuracy, $) pairs
    assert res["solutions"] and all(tuple(s["values"]) in set(trials.values()) for s in res["solutions"])


@pytest.mark.slow
def test_joblib_launcher_runs_two_points(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = str(tmp_path / "jl")
    out = _train(["--multirun", "+experiment=quickstart", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                  "env.pref_cost=0.1,0.5", f"run_dir={sweep}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    for v in ("0.1", "0.5"):
        assert os.path.exists(os.path.join(sweep, f"env.pref_cost={v}", "summary.json"))
