"""Run logger: metrics.jsonl lines, resume truncation, offline wandb files, non-main processes silent."""
import json
import math
import os

import numpy as np
import pytest

from orchestra_jax.logging import RunLogger, read_metrics, to_python


def test_to_python_converts_and_nulls_nonfinite():
    assert to_python({"a": np.float32(1.5), "b": np.int64(3), "c": float("nan"), "d": np.array([1, 2])}) == {
        "a": 1.5, "b": 3, "c": None, "d": [1, 2]}


def test_metrics_jsonl_and_wandb_offline(tmp_path):
    run = str(tmp_path / "run")
    lg = RunLogger(run, config={"lr": 1e-3}, wandb_mode="offline", total_steps=3,
                   console_keys=("reward/mean",), progress_bar=True, is_main=True)
    for s in (1, 2, 3):
        lg.log(s, {"reward/mean": np.float32(0.1 * s), "loss": float(s)})
    lg.log_table(3, "samples", ["task", "text", "reward"], [["t0", "<tool_call>..", 0.5]])
    lg.close()
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert math.isclose(rows[2]["reward/mean"], 0.3, rel_tol=1e-6)
    samples = [json.loads(l) for l in open(os.path.join(run, "samples.jsonl"))]
    assert samples == [{"step": 3, "table": "samples", "task": "t0", "text": "<tool_call>..", "reward": 0.5}]
    assert os.path.isdir(os.path.join(run, "wandb"))  # offline files inside the run dir
    assert os.path.exists(os.path.join(run, "wandb_id.txt"))


def test_resume_drops_lines_after_checkpoint(tmp_path):
    run = str(tmp_path / "run")
    lg = RunLogger(run, wandb_mode="disabled", progress_bar=False, is_main=True)
    for s in range(1, 6):
        lg.log(s, {"x": s})
    lg.close()
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write('{"step": 6, "x"')  # a line cut by kill -9
    lg = RunLogger(run, wandb_mode="disabled", progress_bar=False, initial_step=3, is_main=True)
    lg.log(4, {"x": 40})
    lg.close()
    assert [(r["step"], r["x"]) for r in read_metrics(run)] == [(1, 1), (2, 2), (3, 3), (4, 40)]


def test_non_main_process_writes_nothing(tmp_path):
    run = str(tmp_path / "run")
    lg = RunLogger(run, wandb_mode="offline", is_main=False)
    lg.log(1, {"x": 1})
    lg.close()
    assert not os.path.exists(run)


def test_bad_wandb_mode():
    with pytest.raises(ValueError, match="wandb mode"):
        RunLogger("/tmp/x", wandb_mode="cloud", is_main=True)


def test_report_compares_runs_and_marks_pareto(tmp_path, capsys):
    """experiments/report.py: one row per run with the swept key, Pareto flag on (accuracy up, cost down)."""
    import importlib.util
    import yaml

    spec = importlib.util.spec_from_file_location(
        "report", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "report.py"))
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    points = {"a": (0.1, 0.90, 0.010), "b": (0.2, 0.80, 0.020), "c": (0.3, 0.95, 0.030)}
    for name, (lr, acc, cost) in points.items():
        d = tmp_path / "sweep" / name
        d.mkdir(parents=True)
        yaml.safe_dump({"run_dir": str(d), "algo": {"optim": {"lr": lr}}, "train": {"steps": 5}}, open(d / "config.yaml", "w"))
        json.dump({"policies": {"grpo": {"accuracy": acc, "mean_cost_usd": cost, "mean_latency_s": 1.0,
                                         "preference_score": 0.5, "mean_reward": acc, "n_tasks": 10}}},
                  open(d / "summary.json", "w"))
        (d / "metrics.jsonl").write_text(json.dumps({"step": 5, "reward/mean": lr}) + "\n")
    out_json = tmp_path / "r.json"
    report.main([str(tmp_path / "sweep"), "--json", str(out_json)])
    rows = {os.path.basename(r["run"]): r for r in json.load(open(out_json))}
    assert rows["a"]["algo.optim.lr"] == 0.1 and "train.steps" not in rows["a"]  # only varying keys
    assert rows["a"]["pareto"] and rows["c"]["pareto"] and not rows["b"]["pareto"]  # b: worse and pricier than a
    assert rows["b"]["train_reward_last"] == 0.2
    assert "algo.optim.lr" in capsys.readouterr().out
