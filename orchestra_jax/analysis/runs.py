"""Run directories as data: config.yaml, summary*.json, metrics.jsonl, sft_metrics.jsonl.

    runs = load_runs(["runs/sweep"])          # every directory below with a summary.json
    keys = varying_keys(runs)                 # config keys whose value differs between runs
    label(run, keys)                          # "env.pref_cost=0.25,reward.kind=paper"
    groups = group_by_setting(runs, keys)     # runs that differ only in a seed key, together
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Sequence

import numpy as np

SEED_KEYS = ("train.seed", "sft.seed", "seed")   # runs differing only in these are seeds of one setting
IGNORED_KEYS = ("run_dir", "train.wandb_name", "train.wandb_group", "train.wandb_tags")


@dataclasses.dataclass
class Run:
    path: str
    name: str                         # path relative to the report root
    config: dict                      # flattened config.yaml ({} if absent)
    summary: dict                     # summary.json
    metrics: list[dict]               # metrics.jsonl lines (GRPO steps)
    sft_metrics: list[dict]           # sft_metrics.jsonl lines
    reevaluations: dict[str, dict]    # summary-<name>.json files: name -> summary


def flatten(d: dict | None, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def find_run_dirs(paths: Sequence[str]) -> list[str]:
    """Every directory at or below ``paths`` holding a summary.json (sorted)."""
    found = set()
    for p in paths:
        if not os.path.isdir(p):
            raise ValueError(f"not a directory: {p}")
        for root, _, files in os.walk(p):
            if "summary.json" in files:
                found.add(os.path.normpath(root))
    return sorted(found)


def load_run(path: str, root: str | None = None) -> Run:
    """One run directory; a summary.json without a ``policies`` dict is an error naming the file."""
    spath = os.path.join(path, "summary.json")
    with open(spath) as f:
        summary = json.load(f)
    if not isinstance(summary.get("policies"), dict):
        raise ValueError(f"{spath}: no 'policies' dict")
    cpath = os.path.join(path, "config.yaml")
    config = {}
    if os.path.exists(cpath):
        import yaml

        with open(cpath) as f:
            config = flatten(yaml.safe_load(f))
    re_evals = {}
    for p in sorted(glob.glob(os.path.join(path, "summary-*.json"))):
        with open(p) as f:
            re_evals[os.path.basename(p)[len("summary-"):-len(".json")]] = json.load(f)
    merge_reevaluations(summary, re_evals)
    name = os.path.relpath(path, root) if root else os.path.basename(os.path.normpath(path))
    return Run(path, name, config, summary, read_jsonl(os.path.join(path, "metrics.jsonl")),
               read_jsonl(os.path.join(path, "sft_metrics.jsonl")), re_evals)


def _split_name(summary: dict, default: str) -> str:
    return summary.get("primary_split") or summary.get("eval", {}).get("split") or default


def merge_reevaluations(summary: dict, re_evals: dict[str, dict]) -> dict:
    """Adds each named re-evaluation (``summary-<name>.json``) as a split of ``summary`` (in place): the
    split is the re-evaluation's own eval split (else its file name). Splits already present are kept."""
    if not re_evals:
        return summary
    splits = summary.setdefault("splits", {_split_name(summary, "test"): {"policies": summary["policies"]}})
    for name, other in re_evals.items():
        for split, s in (other.get("splits") or {_split_name(other, name): {"policies": other.get("policies", {})}}).items():
            splits.setdefault(split, {"policies": s["policies"]})
    return summary


def load_runs(paths: Sequence[str]) -> list[Run]:
    dirs = find_run_dirs(paths)
    if not dirs:
        raise ValueError(f"no summary.json under {list(paths)}")
    root = os.path.commonpath([os.path.abspath(p) for p in paths]) if len(paths) > 1 else os.path.abspath(paths[0])
    return [load_run(d, root) for d in dirs]


def varying_keys(runs: Sequence[Run], ignore: Sequence[str] = IGNORED_KEYS) -> list[str]:
    """Config keys whose value differs between runs (sorted), without the ignored ones."""
    keys = sorted({k for r in runs for k in r.config if k not in ignore})
    return [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1]


def label(run: Run, keys: Sequence[str]) -> str:
    """``k=v,...`` over ``keys`` (short key names: the last component); the run name if no key varies."""
    if not keys:
        return run.name
    return ",".join(f"{k.split('.')[-1]}={run.config.get(k)}" for k in keys)


def group_by_setting(runs: Sequence[Run], keys: Sequence[str], seed_keys: Sequence[str] = SEED_KEYS
                     ) -> dict[str, list[Run]]:
    """Runs grouped by their values of ``keys`` other than the seed keys (label -> runs, in run order)."""
    setting = [k for k in keys if k not in seed_keys]
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(label(r, setting) if setting else "", []).append(r)
    return groups


def pareto_mask(cost: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """[N] bool: not dominated (another point at least as accurate and at most as costly, one strictly)."""
    c, a = np.asarray(cost, np.float64), np.asarray(accuracy, np.float64)
    out = np.ones(len(c), bool)
    for i in range(len(c)):
        dom = (a >= a[i]) & (c <= c[i]) & ((a > a[i]) | (c < c[i]))
        out[i] = not dom.any()
    return out


def split_policies(summary: dict, split: str | None = None) -> dict:
    """The policies dict of a split (None = the primary one)."""
    if split is None:
        return summary["policies"]
    return summary.get("splits", {}).get(split, {}).get("policies", {})


def splits_of(summary: dict) -> list[str]:
    return list(summary.get("splits", {})) or [summary.get("primary_split", summary.get("eval", {}).get("split", "test"))]


def monotone_cost(weights: Sequence[float], cost: Sequence[float], cost_ci: Sequence[Sequence[float]]
                  ) -> tuple[bool, bool, list[tuple[float, float]]]:
    """Does mean $ fall as the cost weight grows? Returns (monotone in the point estimates,
    monotone within the intervals, violating weight pairs). Within the intervals: for every pair of
    weights w_i < w_j, the costlier-weighted run is not significantly dearer: lo_j <= hi_i."""
    order = np.argsort(np.asarray(weights, np.float64), kind="stable")
    w = [float(weights[k]) for k in order]
    c = [float(cost[k]) for k in order]
    ci = [cost_ci[k] for k in order]
    points = all(c[j] <= c[i] for i in range(len(c)) for j in range(i + 1, len(c)))
    bad = [(w[i], w[j]) for i in range(len(c)) for j in range(i + 1, len(c)) if ci[j][0] > ci[i][1]]
    return points, not bad, bad
