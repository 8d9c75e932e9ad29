"""experiments/report.py on run directories built from real scripted-policy episodes (and, in the slow
suite, on a real 2-point --multirun sweep of experiments/train.py)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from orchestra_jax.analysis.robustness import PerturbedEnv, ROBUSTNESS_SPLITS
from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs.baselines import run_policy
from orchestra_jax.summary import summarise_splits, write_summary
from orchestra_jax.rl.rewards import RewardConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import report as report_cli  # noqa: E402

TRAINED = "router"   # the policy the report treats as trained: a noisy rule_based router (a real policy)
SPLITS = ("test", "unseen_tools", "unseen_prices", "tool_errors")


def make_run(env, run_dir, eps, n_tasks=16, group_size=2):
    """A run dir: config.yaml, summary.json (real episodes on every split), metrics.jsonl (real rollouts)."""
    by_split = {}
    for split in SPLITS:
        base = "test" if split in ROBUSTNESS_SPLITS else split
        tasks = env.sample_tasks(11, n_tasks, split=base)
        episodes = [t for t in tasks for _ in range(group_size)]
        e = PerturbedEnv(env, ROBUSTNESS_SPLITS[split]) if split in ROBUSTNESS_SPLITS else env
        by_split[split] = {TRAINED: run_policy(e, f"rule_based_eps{eps}", episodes, seed=3),
                           **{n: run_policy(e, n, episodes, seed=3) for n in ("cheapest", "always_strongest", "random")}}
    os.makedirs(run_dir, exist_ok=True)
    summary = summarise_splits(RewardConfig(), by_split, group_size, start_policy="random", n_boot=200)
    write_summary(run_dir, summary)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump({"run_dir": run_dir, "router": {"eps": eps}, "train": {"seed": 0}}, f)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for step in (1, 2, 3):
            r = run_policy(env, f"rule_based_eps{eps}", env.sample_tasks(100 + step, 8, split="train"), seed=step)
            f.write(json.dumps({"step": step, "rollout/accuracy": float(r.solved.mean()),
                                "rollout/cost_usd": float(r.cost_usd.mean()),
                                "reward/preference_score": 0.5}) + "\n")
    return summary


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sweep"))
    env = make_env(EnvConfig())
    summaries = {eps: make_run(env, os.path.join(root, f"router.eps={eps}"), eps) for eps in (0.1, 0.5)}
    return root, summaries


def _table(md: str, heading: str) -> list[dict]:
    block = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, [c.strip() for c in ln.strip("|").split("|")])) for ln in lines[2:]]


def _png_ok(path):
    import matplotlib.image as mpimg

    assert os.path.getsize(path) > 1000, path
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and float(np.std(img)) > 0.01, path


def test_report_table_equals_summaries_and_pngs_are_valid(sweep, capsys):
    root, summaries = sweep
    report_cli.main([root, "--policy", TRAINED])
    md = open(os.path.join(root, "report.md")).read()
    rows = _table(md, "runs")
    assert len(rows) == 2
    for row in rows:
        eps = float(row["setting"].split("=")[1])
        m = summaries[eps]["policies"][TRAINED]
        for key, dec in (("accuracy", 3), ("mean_cost_usd", 5), ("latency_p95_s", 1), ("fixed_reward", 3),
                         ("utility_a0.5", 3), ("pref_adherence", 3)):
            lo, hi = m["ci"][key]
            assert row[f"{key} [95% CI]"] == f"{m[key]:.{dec}f} [{lo:.{dec}f}, {hi:.{dec}f}]", key
        assert row["n_tasks"] == str(m["n_tasks"])
    # the Pareto flag: a run is on the front iff the other is not at least as good in both
    a, b = (summaries[e]["policies"][TRAINED] for e in (0.1, 0.5))
    dominated_b = a["accuracy"] >= b["accuracy"] and a["mean_cost_usd"] <= b["mean_cost_usd"] and a != b
    assert {r["setting"]: r["pareto"] for r in rows}["eps=0.5"] == ("" if dominated_b else "yes")
    gen = _table(md, "generalisation")
    assert {r["policy"] for r in gen} >= {"eps=0.1", "eps=0.5", "cheapest", "always_strongest", "random"}
    cheap = next(r for r in gen if r["policy"] == "cheapest")
    assert cheap["unseen_prices/accuracy"] == f"{summaries[0.1]['splits']['unseen_prices']['policies']['cheapest']['accuracy']:.3f}"
    rob = _table(md, "robustness")
    assert len(rob) == 5 and "tool_errors/d_accuracy" in rob[0]
    links = re.findall(r"!\[(\w+)\]\(([^)]+)\)", md)
    assert {n for n, _ in links} >= {"frontier", "training_curves", "tool_mix", "latency", "generalisation", "robustness"}
    for _, rel in links:
        _png_ok(os.path.join(root, rel))


def test_report_logs_to_wandb_offline(sweep, tmp_path):
    import wandb

    from orchestra_jax.analysis.report import build_report
    from orchestra_jax.analysis.wandb_log import define_step_metrics, log_report, log_sft_curve

    root, _ = sweep
    rep = build_report([root], str(tmp_path / "out"), policy=TRAINED)
    run = wandb.init(project="t", mode="offline", dir=str(tmp_path), settings=wandb.Settings(silent=True, console="off"))
    define_step_metrics(run)
    keys = log_report(run, rep)
    assert log_sft_curve(run, [{"step": 1, "sft/loss": 2.0}, {"step": 2, "sft/loss": 1.5}]) == 2
    files_dir = run.dir
    run.finish()
    media = [os.path.join(d, f) for d, _, fs in os.walk(files_dir) for f in fs]
    assert len([m for m in media if m.endswith(".png")]) == len(rep.images)
    assert len([m for m in media if m.endswith(".table.json")]) == len(rep.tables)
    assert len(keys) == len(rep.images) + len(rep.tables)


def test_report_errors_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="no summary.json"):
        report_cli.main([str(tmp_path)])
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "summary.json").write_text("{}")
    with pytest.raises(SystemExit, match="no 'policies'"):
        report_cli.main([str(tmp_path)])


@pytest.mark.slow
def test_tiny_sweep_end_to_end_with_the_real_cli(tmp_path):
    """Two GRPO runs (env.pref_cost 0.1 / 0.5) of the real CLI through Hydra multirun, then the report."""
    sweep_dir = str(tmp_path / "sweep")
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py"), "--multirun", "+experiment=quickstart",
           "train.steps=2", "sft.steps=5", "sft.num_tasks=32", "train.num_tasks=64", "eval.num_tasks=8",
           "train.tasks_per_step=4", "train.progress_bar=false", f"run_dir={sweep_dir}", "env.pref_cost=0.1,0.5"]
    env = {**os.environ, "PYTHONPATH": ROOT, "WANDB_MODE": "offline"}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=1500)
    report_cli.main([sweep_dir])
    md = open(os.path.join(sweep_dir, "report.md")).read()
    rows = _table(md, "runs")
    assert len(rows) == 2
    for row in rows:
        s = json.load(open(os.path.join(sweep_dir, row["run"], "summary.json")))["policies"]["grpo"]
        lo, hi = s["ci"]["accuracy"]
        assert row["accuracy [95% CI]"] == f"{s['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"
        # the QA quickstart's evaluation covers the generalisation splits, every policy in each
        full = json.load(open(os.path.join(sweep_dir, row["run"], "summary.json")))
        assert set(full["splits"]) == {"test", "unseen_tools", "unseen_prices"}  # (json keys sorted)
        assert all(set(sp["policies"]) == set(full["policies"]) for sp in full["splits"].values())
    assert "generalisation" in md.lower()
    for _, rel in re.findall(r"!\[(\w+)\]\(([^)]+)\)", md):
        _png_ok(os.path.join(sweep_dir, rel))


def test_named_reevaluation_becomes_a_split_and_combined_report(sweep, tmp_path):
    import shutil

    root, summaries = sweep
    run = os.path.join(str(tmp_path), "exp", "r1")
    shutil.copytree(os.path.join(root, "router.eps=0.1"), run)
    s = json.load(open(os.path.join(run, "summary.json")))
    s.pop("splits"), s.pop("primary_split")  # a summary of the test split only, as the training run writes
    json.dump(s, open(os.path.join(run, "summary.json"), "w"))
    other = {"policies": summaries[0.1]["splits"]["unseen_tools"]["policies"], "eval": {"split": "unseen_tools"}}
    json.dump(other, open(os.path.join(run, "summary-unseen_tools.json"), "w"))
    report_cli.main(["--combine", os.path.join(str(tmp_path), "exp"), root, "--out", str(tmp_path), "--policy", TRAINED])
    md = open(os.path.join(str(tmp_path), "exp", "report.md")).read()
    gen = _table(md, "generalisation")
    row = next(r for r in gen if r["policy"] == "r1")
    assert row["unseen_tools/accuracy"] == f"{other['policies'][TRAINED]['accuracy']:.3f}"
    combined = open(os.path.join(str(tmp_path), "report.md")).read()
    assert "## exp" in combined and "### exp: generalisation" in combined
    for _, rel in re.findall(r"!\[([\w/]+)\]\(([^)]+)\)", combined):
        _png_ok(os.path.join(str(tmp_path), rel))


def test_seeds_of_one_setting_are_aggregated(sweep, tmp_path):
    import shutil

    root, summaries = sweep
    for seed in (0, 1):
        d = os.path.join(str(tmp_path), f"train.seed={seed}")
        shutil.copytree(os.path.join(root, f"router.eps={0.1 if seed == 0 else 0.5}"), d)
        cfg = yaml.safe_load(open(os.path.join(d, "config.yaml")))
        cfg["router"]["eps"], cfg["train"]["seed"] = 0.1, seed
        yaml.safe_dump(cfg, open(os.path.join(d, "config.yaml"), "w"))
    report_cli.main([str(tmp_path), "--policy", TRAINED])
    row = _table(open(os.path.join(str(tmp_path), "report.md")).read(), "seeds")[0]
    accs = [summaries[e]["policies"][TRAINED]["accuracy"] for e in (0.1, 0.5)]
    assert row["seeds"] == "2" and row["accuracy_mean"] == f"{np.mean(accs):.3f}"
    assert row["accuracy_std"] == f"{np.std(accs, ddof=1):.3f}"
    rewards = [summaries[e]["policies"][TRAINED]["mean_reward"] for e in (0.1, 0.5)]
    assert row["reward_mean"] == f"{np.mean(rewards):.3f}"
    # the start policy is "random": the paired difference is stored as "random - router", read reversed
    diffs = [summaries[e]["paired"][f"random - {TRAINED}"]["mean_reward"] for e in (0.1, 0.5)]
    above, significant = sum(d[0] < 0 for d in diffs), sum(d[2] < 0 for d in diffs)
    assert above == 2  # a rule router beats random on reward (else this check would not test the sign)
    assert row["reward_above_start"] == f"{above}/2 ({significant})"
