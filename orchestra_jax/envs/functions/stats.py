"""Per-domain statistics of the function-calling setting: the domains' tables, the scripted routers per
domain and per request kind, and the trade-off checks (``experiments/env_stats.py --setting functions``).

Reward = ToolOrchestra Eq. 2 with each task's preference, the group being the episodes of all compared
policies on that task (min-max normalised features [calls..., outcome, -cost, -latency] . P, 0 if
unsolved): what GRPO would see if these policies were one group. Checks (all measured, none tuned):
- ``strongest_not_best``: always_strongest's mean reward is below the best policy's;
- ``direct_wins_some_kind``: on single-request tasks of some request kind where tools_first calls the
  domain tools itself in most episodes, it has a higher mean reward than every expert-only router;
- ``no_policy_best_everywhere``: the policy with the highest mean reward differs between domains.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from orchestra_jax.envs.functions.policies import make_function_policy

POLICIES = ("always_strongest", "cheapest", "rule_based", "random_router", "tools_first", "tools_first_cheapest",
            "tools_first_strongest", "random")
EXPERT_ONLY = ("always_strongest", "cheapest", "rule_based", "random_router")


@dataclasses.dataclass
class Row:
    policy: str
    group: str              # domain, request kind, or "all"
    n: int
    success: float
    reward: float
    cost_usd: float
    latency_s: float
    turns: float


def group_reward(features_PnF: np.ndarray, solved_Pn: np.ndarray, preference_nF: np.ndarray) -> np.ndarray:
    """Eq. 2 per task over the P policies: [P, n] rewards (numpy; envs must not import rl)."""
    signed = features_PnF.astype(np.float64).copy()
    signed[..., -2:] *= -1.0                                   # -cost, -latency
    lo, hi = signed.min(axis=0, keepdims=True), signed.max(axis=0, keepdims=True)
    span = hi - lo
    norm = np.where(span > 0, (signed - lo) / np.where(span > 0, span, 1.0), 0.0)
    return np.where(solved_Pn, np.einsum("pnf,nf->pn", norm, preference_nF), 0.0)


def domain_tables(env) -> list[dict]:
    """Per domain: rows per table, tools (reads / writes), request kinds of its spec."""
    out = []
    for name, rt in env.runtimes.items():
        out.append({"domain": name, "held_out": name in env.fcfg.heldout_domains,
                    "tables": {t: len(rows) for t, rows in rt.db.items()},
                    "tools": len(rt.domain.functions), "writes": sum(f.write for f in rt.domain.functions),
                    "request_kinds": [r.kind for r in rt.spec.requests]})
    return out


def _rows(name, res, reward, keys, groups) -> list[Row]:
    out = []
    for g in ("all", *groups):
        m = np.ones(len(keys), bool) if g == "all" else np.array([k == g for k in keys])
        if m.any():
            out.append(Row(name, g, int(m.sum()), float(res.solved[m].mean()), float(reward[m].mean()),
                           float(res.cost_usd[m].mean()), float(res.latency_s[m].mean()), float(res.n_turns[m].mean())))
    return out


def compute_function_stats(env, tasks: Sequence, seed: int, policies: Sequence[str] = POLICIES) -> dict:
    from orchestra_jax.envs.baselines import rollout  # envs.baselines imports the QA setting

    results, direct = {}, None
    for p in policies:
        results[p], trajs = rollout(env, make_function_policy(p), tasks, seed)
        if p == "tools_first":  # did the episode call a domain tool itself (not call_expert / respond)?
            direct = np.array([any('"name": "' in a and '"name": "call_expert"' not in a and '"name": "respond"' not in a
                                   for a in t.actions) for t in trajs])
    feats = np.stack([results[p].features for p in policies])
    solved = np.stack([results[p].solved for p in policies])
    pref = results[policies[0]].preference
    reward = dict(zip(policies, group_reward(feats, solved, pref)))
    domains = list(dict.fromkeys(t.domain for t in tasks))
    rows = [r for p in policies for r in _rows(p, results[p], reward[p], [t.domain for t in tasks], domains)]
    single = np.array([len(t.requests) == 1 for t in tasks])
    kinds = [t.requests[0].kind if s else "" for t, s in zip(tasks, single)]
    kind_names = sorted({k for k in kinds if k})
    kind_rows = [r for p in policies for r in _rows(p, results[p], reward[p], kinds, kind_names) if r.group != "all"]
    checks = {}
    mean = {p: float(reward[p].mean()) for p in policies}
    best = max(mean, key=mean.get)
    if "always_strongest" in mean:
        checks["strongest_not_best"] = {"strongest": mean["always_strongest"], "best": best, "best_reward": mean[best],
                                        "pass": mean["always_strongest"] < mean[best]}
    if "tools_first" in results:
        wins = []
        for k in kind_names:
            by = {r.policy: r for r in kind_rows if r.group == k}
            rivals = [by[p].reward for p in EXPERT_ONLY if p in by]
            m = np.array([kk == k for kk in kinds])
            if rivals and direct[m].mean() > 0.5 and by["tools_first"].reward > max(rivals):
                wins.append(k)
        checks["direct_wins_some_kind"] = {"kinds": wins, "pass": bool(wins)}
    best_by_domain = {}
    for d in domains:
        by = {r.policy: r.reward for r in rows if r.group == d}
        best_by_domain[d] = max(by, key=by.get)
    checks["no_policy_best_everywhere"] = {"best_by_domain": best_by_domain,
                                           "pass": len(set(best_by_domain.values())) > 1}
    return {"rows": rows, "kind_rows": kind_rows, "checks": checks, "n_tasks": len(tasks),
            "tables": domain_tables(env)}


def format_rows(rows: Sequence[Row], label: str = "domain") -> str:
    lines = [f"{'policy':18s} {label:16s} {'n':>5s} {'success':>8s} {'reward':>7s} {'mean $':>8s} {'lat s':>6s} {'turns':>6s}"]
    for r in rows:
        lines.append(f"{r.policy:18s} {r.group:16s} {r.n:5d} {100 * r.success:7.1f}% {r.reward:7.3f} {r.cost_usd:8.4f} "
                     f"{r.latency_s:6.1f} {r.turns:6.2f}")
    return "\n".join(lines)


def format_tables(tables: Sequence[dict]) -> str:
    lines = [f"{'domain':14s} {'held out':8s} {'tools':>5s} {'writes':>6s}  tables (rows)"]
    for t in tables:
        lines.append(f"{t['domain']:14s} {str(t['held_out']):8s} {t['tools']:5d} {t['writes']:6d}  "
                     + ", ".join(f"{k} {v}" for k, v in t["tables"].items()))
    return "\n".join(lines)


def format_checks(checks: dict) -> tuple[str, bool]:
    lines, ok = [], True
    c = checks.get("strongest_not_best")
    if c:
        lines.append(f"  [{'PASS' if c['pass'] else 'FAIL'}] always_strongest reward {c['strongest']:.3f} < best "
                     f"({c['best']} {c['best_reward']:.3f})")
        ok &= c["pass"]
    c = checks.get("direct_wins_some_kind")
    if c:
        lines.append(f"  [{'PASS' if c['pass'] else 'FAIL'}] direct tool calls (tools_first) beat every expert-only router "
                     f"on kinds {c['kinds']}")
        ok &= c["pass"]
    c = checks["no_policy_best_everywhere"]
    lines.append(f"  [{'PASS' if c['pass'] else 'FAIL'}] best policy per domain: {c['best_by_domain']}")
    ok &= c["pass"]
    return "\n".join(lines), bool(ok)


def report(env, n_tasks: int, split: str, seed: int) -> tuple[str, dict, bool]:
    """The env_stats text for `split` plus the held-out domains, the stats dict and whether all checks pass."""
    tasks = env.sample_tasks(seed, n_tasks, split)
    if env.fcfg.heldout_domains and split != "heldout_domains":
        tasks += env.sample_tasks(seed, max(1, n_tasks * len(env.fcfg.heldout_domains) // max(1, len(env.train_domains))),
                                  "heldout_domains")
    stats = compute_function_stats(env, tasks, seed)
    checks_text, ok = format_checks(stats["checks"])
    text = "\n".join([
        f"functions split {split} (+ heldout_domains): {len(tasks)} tasks, seed {seed}", "",
        "Domains:", format_tables(stats["tables"]), "",
        "Routers per domain (reward: Eq. 2 over the policies of each task, the task's preference):",
        format_rows(stats["rows"]), "",
        "Per request kind (single-request tasks):", format_rows(stats["kind_rows"], "kind"), "",
        "Checks:", checks_text])
    return text, stats, ok


def main(argv=None) -> int:
    """python -m orchestra_jax.envs.functions.stats [--env functions] [--tasks 1400] [--split test] [--strict]"""
    import argparse
    import json
    import sys

    from omegaconf import OmegaConf

    from orchestra_jax.envs import env_config_from_dict, make_env
    from orchestra_jax.envs.tools import resolve_path

    ap = argparse.ArgumentParser(description="function-calling setting: per-domain tables and trade-off checks")
    ap.add_argument("--env", default="functions", help="conf/env/<name>.yaml or a YAML path")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="env config overrides")
    ap.add_argument("--tasks", type=int, default=1400, help="tasks of --split (plus 3/7 as many held-out)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the stats to this JSON file")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    args = ap.parse_args(argv)
    try:
        p = resolve_path(args.env if args.env.endswith(".yaml") else f"conf/env/{args.env}.yaml")
        d = OmegaConf.load(p)
        if args.set:
            d = OmegaConf.merge(d, OmegaConf.from_dotlist(args.set))
        env = make_env(env_config_from_dict(d))
        if env.setting != "functions":
            raise ValueError(f"{p}: not a functions env config")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text, stats, ok = report(env, args.tasks, args.split, args.seed)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: ([dataclasses.asdict(r) for r in v] if k in ("rows", "kind_rows") else v)
                       for k, v in stats.items()}, f, indent=1)
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    raise SystemExit(main())
