"""Success rate and $ cost of the baselines per domain and per model, and the trade-off checks.

Used by ``experiments/env_stats.py`` and the env tests. The checks say whether the simulated world makes
routing worth learning:
- ``strongest_vs_cheapest``: always-strongest is >= 15 points more accurate than always-cheapest;
- ``specialist``: on its own domain a cheap specialist (answering directly) is within 5 points of the
  strongest model (answering directly) at < 20% of its mean cost;
- ``rule_based``: the rule-based router is within 3 points of always-strongest (or above) at <= 50% of its
  mean cost: the target a trained orchestrator must be able to reach.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from orchestra_jax.envs.base import EpisodeResults
from orchestra_jax.envs.baselines import run_policy

ROUTERS = ("always_strongest", "cheapest", "rule_based", "random_router", "random")


@dataclasses.dataclass
class Row:
    policy: str
    domain: str           # "all" for every domain
    n: int
    success: float
    cost_usd: float
    latency_s: float
    turns: float


def rows_of(name: str, res: EpisodeResults, domains: Sequence[str], keep: np.ndarray | None = None) -> list[Row]:
    """One row for all episodes and one per domain (only episodes with ``keep`` True, when given)."""
    out = []
    doms = np.array(res.domains)
    keep = np.ones(len(doms), bool) if keep is None else keep
    for d in ("all", *domains):
        m = keep & (np.ones(len(doms), bool) if d == "all" else doms == d)
        if m.any():
            out.append(Row(name, d, int(m.sum()), float(res.solved[m].mean()), float(res.cost_usd[m].mean()),
                           float(res.latency_s[m].mean()), float(res.n_turns[m].mean())))
    return out


def compute_stats(env, tasks, seed: int, routers: Sequence[str] = ROUTERS) -> dict:
    """Runs the routers and a direct-answer policy per answer alias; returns rows and the checks."""
    domains = list(dict.fromkeys(t.domain for t in tasks))
    results = {name: run_policy(env, name, tasks, seed) for name in routers}
    answer_aliases = [a.alias for a in env.menu if a.tool == "answer"]
    direct = {a: run_policy(env, f"direct:{a}", tasks, seed) for a in answer_aliases}
    rows = [r for name, res in results.items() for r in rows_of(name, res, domains)]
    # a direct-answer policy falls back to the strongest alias when its own is not offered: count only the
    # tasks that offer it (every task when the menu is not randomised)
    offered = {a: np.array([a in t.available for t in tasks]) for a in answer_aliases}
    model_rows = [r for a, res in direct.items() for r in rows_of(f"direct:{a}", res, domains, offered[a])]
    checks = {}
    if "always_strongest" in results and "cheapest" in results:
        gap = results["always_strongest"].solved.mean() - results["cheapest"].solved.mean()
        checks["strongest_vs_cheapest"] = {"gap_points": 100 * float(gap), "pass": bool(gap >= 0.15)}
    if "always_strongest" in results and "rule_based" in results:
        s, r = results["always_strongest"], results["rule_based"]
        gap = s.solved.mean() - r.solved.mean()
        ratio = r.cost_usd.mean() / s.cost_usd.mean()
        checks["rule_based"] = {"acc_gap_points": 100 * float(gap), "cost_ratio": float(ratio),
                                "pass": bool(gap <= 0.03 and ratio <= 0.5)}
    # specialists: answer aliases whose model tag names a domain ("math", "math-small", "code", ...)
    top = next((a.alias for a in env.menu if a.tool == "answer"
                and env.roster.model(a.model).tag == "general-top"), None)
    spec = []
    if top is not None:
        doms = np.array(direct[top].domains)
        for a in answer_aliases:
            tag = env.roster.model(env._alias[a].model).tag
            dom = tag.split("-")[0]
            if dom not in domains:
                continue
            m = (doms == dom) & offered[a] & offered[top]
            if m.sum() < 50:
                continue
            acc_gap = direct[top].solved[m].mean() - direct[a].solved[m].mean()
            ratio = direct[a].cost_usd[m].mean() / direct[top].cost_usd[m].mean()
            spec.append({"alias": a, "domain": dom, "acc_gap_points": 100 * float(acc_gap),
                         "cost_ratio": float(ratio), "pass": bool(acc_gap <= 0.05 and ratio < 0.2)})
        checks["specialist"] = {"strongest": top, "candidates": spec, "pass": any(c["pass"] for c in spec)}
    return {"rows": rows, "model_rows": model_rows, "checks": checks, "n_tasks": len(tasks)}


def format_rows(rows: Sequence[Row]) -> str:
    lines = [f"{'policy':22s} {'domain':8s} {'n':>5s} {'success':>8s} {'mean $':>9s} {'lat s':>7s} {'turns':>6s}"]
    for r in rows:
        lines.append(f"{r.policy:22s} {r.domain:8s} {r.n:5d} {100 * r.success:7.1f}% {r.cost_usd:9.5f} "
                     f"{r.latency_s:7.1f} {r.turns:6.2f}")
    return "\n".join(lines)
