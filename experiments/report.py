"""Compares finished runs (e.g. the points of a --multirun sweep) from their summary.json files.

    python experiments/report.py runs/sweep            # every run dir below runs/sweep
    python experiments/report.py runs/a runs/b --policy grpo --json report.json

Prints one row per run: the run's overrides (from its config.yaml, differing keys only), and the chosen
policy's accuracy, $ cost, latency, preference score and mean reward, plus the last GRPO step's training
reward; marks the runs on the accuracy-vs-cost Pareto front (no other run is at least as accurate and at
most as expensive, one of them strictly). Writes the rows as JSON with --json.
"""
import argparse
import json
import os
import sys

import yaml


def find_runs(paths):
    runs = []
    for p in paths:
        for root, _, files in os.walk(p):
            if "summary.json" in files:
                runs.append(root)
    return sorted(set(runs))


def flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def last_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    last = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                last = json.loads(line)
    return last


def pareto(rows):
    """Marks rows not dominated in (accuracy up, cost down)."""
    for r in rows:
        r["pareto"] = not any(
            o is not r and o["accuracy"] >= r["accuracy"] and o["mean_cost_usd"] <= r["mean_cost_usd"]
            and (o["accuracy"] > r["accuracy"] or o["mean_cost_usd"] < r["mean_cost_usd"]) for o in rows)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--policy", default="grpo")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    runs = find_runs(args.paths)
    if not runs:
        sys.exit(f"no summary.json under {args.paths}")
    configs = {r: flatten(yaml.safe_load(open(os.path.join(r, "config.yaml")))) if os.path.exists(
        os.path.join(r, "config.yaml")) else {} for r in runs}
    keys = sorted({k for c in configs.values() for k in c if k != "run_dir"})
    varying = [k for k in keys if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    rows = []
    for r in runs:
        summary = json.load(open(os.path.join(r, "summary.json")))
        pol = summary["policies"].get(args.policy)
        if pol is None:
            continue
        rows.append({"run": r, **{k: configs[r].get(k) for k in varying}, **pol,
                     "train_reward_last": last_metrics(r).get("reward/mean")})
    pareto(rows)
    head = ["run", *varying, "accuracy", "mean_cost_usd", "mean_latency_s", "preference_score", "mean_reward",
            "train_reward_last", "pareto"]
    print("\t".join(head))
    for row in rows:
        print("\t".join(f"{row[h]:.4g}" if isinstance(row[h], float) else str(row[h]) for h in head))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
