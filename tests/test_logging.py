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


