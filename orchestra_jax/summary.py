"""The evaluation summary: per-policy metrics with intervals from EpisodeResults, its tables, and its file.

``orchestra_jax.evaluate`` runs the policies; this module turns their EpisodeResults into ``summary.json``.

Metrics per policy (``summary["policies"][NAME]``, the primary split; ``summary["splits"][SPLIT]["policies"]``
for every evaluated split): the per-policy metrics of ``analysis.metrics`` (accuracy, mean $, latency mean
and p50 / p95 / p99, turns, calls per alias, utilities u_a, preference_score, fixed_reward, pref_adherence
against the start policy), each with a 95% bootstrap interval over tasks in ``["ci"][metric]``, plus
  mean_reward       the configured reward (cfg.reward) computed over POOLED groups: for each task the
                    episodes of all evaluated policies form one group, so every feature is normalised over
                    the same set of trajectories for all policies and the numbers are comparable across
                    policies of ONE evaluation (not across runs with different P: use ``fixed_reward``).
                    (Normalising within one policy's own G episodes would give a deterministic
                    policy, e.g. always_strongest, reward 0 on every task: its features are constant.)
  per_domain        accuracy (with interval), $ and calls per alias for every task domain
  behaviours        frequencies of escalation, double checking, repeated calls, ... (when a call log exists)
  latency_hist      episode latencies in fixed log-spaced bins
  n_tasks           number of held-out tasks
and ``summary["paired"]["A - B"]``: the difference of mean_reward, accuracy and mean $ of A minus B with a
paired 95% task-bootstrap interval (both played the same episodes, so it is narrower than two separate
intervals), for A = the trained policy (``compare``, default "grpo") and the start policy against every
other evaluated policy.
The definitions are written into the summary (``summary["definitions"]``).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from orchestra_jax.analysis.behaviours import behaviour_frequencies, call_log_of
from orchestra_jax.analysis.bootstrap import bootstrap_counts, diff_ci, task_groups
from orchestra_jax.analysis.metrics import (DEFAULT_COST_SCALE_USD, DEFAULT_N_BOOT, DEFAULT_REFERENCE_PREFERENCE,
                                            METRIC_DEFINITIONS, UTILITY_ALPHAS, latency_histogram, per_domain,
                                            policy_metrics)
from orchestra_jax.rl.rewards import compute_rewards

SUMMARY_KEYS = ("accuracy", "mean_cost_usd", "mean_latency_s", "preference_score", "mean_reward", "n_tasks")
PAIRED_METRICS = ("mean_reward", "accuracy", "mean_cost_usd")
START_POLICY_NAMES = ("sft", "start", "init")   # "auto": the first of these that was evaluated


def pooled_rewards(reward_cfg, results: Mapping[str, "EpisodeResults"], n_tasks: int, group_size: int
                   ) -> dict[str, np.ndarray]:
    """Configured reward of every episode, normalised within the pooled group of its task.

    ``results[name]`` holds ``n_tasks * group_size`` episodes, task-major (task i = rows i*G .. i*G+G-1).
    Returns ``{name: rewards [n_tasks, group_size]}``.
    """
    names = list(results)
    per = []
    first_ids = list(map(str, results[names[0]].task_ids)) if names else []
    for name in names:
        r = results[name]
        if list(map(str, r.task_ids)) != first_ids:
            raise ValueError(f"policy {name!r} played other tasks (or another order) than {names[0]!r}: "
                             "pooled rewards need every policy on the same episodes")
        expected = n_tasks * group_size
        if len(r.solved) != expected:
            raise ValueError(f"policy {name!r} has {len(r.solved)} episodes, expected {n_tasks} x {group_size}")
        F = r.features.shape[-1]
        per.append((r.features.reshape(n_tasks, group_size, F), r.solved.reshape(n_tasks, group_size),
                    r.preference.reshape(n_tasks, group_size, F)[:, 0]))
    features = np.concatenate([p[0] for p in per], axis=1)  # [n_tasks, P*G, F]
    solved = np.concatenate([p[1] for p in per], axis=1)
    preference = per[0][2]
    rewards, _, _ = compute_rewards(reward_cfg, features, solved, preference, None)
    rewards = np.asarray(rewards).reshape(n_tasks, len(names), group_size)
    return {name: rewards[:, i] for i, name in enumerate(names)}


def _start_policy(results: Mapping[str, object], start_policy: str | None) -> str | None:
    if start_policy == "auto":
        return next((n for n in START_POLICY_NAMES if n in results), None)
    if start_policy is not None and start_policy not in results:
        raise ValueError(f"start policy {start_policy!r} is not among the evaluated policies {sorted(results)}")
    return start_policy


def summarise(reward_cfg, results: Mapping[str, "EpisodeResults"], n_tasks: int, group_size: int,
              preference_score_fn: Callable | None = None, *, start_policy: str | None = "auto",
              n_boot: int = DEFAULT_N_BOOT, seed: int = 0, cost_scale_usd: float = DEFAULT_COST_SCALE_USD,
              reference_pref: Sequence[float] = DEFAULT_REFERENCE_PREFERENCE,
              final_tools: Sequence[str] = ("answer",), compare: Sequence[str] = ("grpo",)) -> dict:
    """Per-policy metrics of ``results`` (task-major, ``n_tasks * group_size`` episodes each) with intervals.

    ``preference_score_fn(features, solved, preference) -> float`` (a mean over episodes); default
    ``envs.preferences.preference_score``. ``start_policy``: the policy pref_adherence is normalised against
    ("auto" = sft / start / init if evaluated, None = skip). The intervals resample tasks with
    ``seed``; the same results and seed give the same summary.
    """
    start_name = _start_policy(results, start_policy)
    rewards = pooled_rewards(reward_cfg, results, n_tasks, group_size)
    start = results[start_name] if start_name is not None else None
    policies = {}
    for name, r in results.items():
        m = policy_metrics(r, start=start, n_boot=n_boot, seed=seed, cost_scale_usd=cost_scale_usd,
                           reference_pref=reference_pref, preference_score_fn=preference_score_fn,
                           extra_values={"mean_reward": rewards[name].reshape(-1)})
        m["mean_latency_s"] = m["latency_mean_s"]             # the name earlier summaries used
        m["ci"]["mean_latency_s"] = m["ci"]["latency_mean_s"]
        m["per_domain"] = per_domain(r, n_boot=n_boot, seed=seed)
        m["latency_hist"] = latency_histogram(r.latency_s)
        log = call_log_of(r)
        if log is not None:
            m["behaviours"] = behaviour_frequencies(log, final_tools)
        policies[name] = m
    return {
        "policies": policies,
        "paired": paired_differences(results, rewards, [*compare, start_name], n_boot=n_boot, seed=seed),
        "start_policy": start_name,
        "mean_reward_definition": (
            f"reward kind '{reward_cfg.kind}' per episode, normalised within the pooled group of all "
            f"{len(results)} policies x {group_size} episodes on the same task; mean over episodes"),
        "definitions": {**METRIC_DEFINITIONS, "utility_alphas": list(UTILITY_ALPHAS)},
        "settings": {"n_boot": int(n_boot), "bootstrap_seed": int(seed), "cost_scale_usd": float(cost_scale_usd),
                     "reference_preference": {"outcome": reference_pref[0], "cost": reference_pref[1],
                                              "latency": reference_pref[2]}},
    }


def paired_differences(results: Mapping[str, "EpisodeResults"], rewards: Mapping[str, np.ndarray],
                       anchors: Sequence[str | None], n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> dict:
    """``{"A - B": {metric: (A - B, lo, hi)}}`` for each evaluated anchor A against every other policy B
    (each unordered pair once), paired task bootstrap over the same episodes; ``rewards``: pooled_rewards."""
    names = list(results)
    if not names:
        return {}
    groups = task_groups(results[names[0]].task_ids)
    W = bootstrap_counts(groups.n_tasks, n_boot, seed)
    values = {n: {"mean_reward": np.asarray(rewards[n], np.float64).reshape(-1),
                  "accuracy": np.asarray(results[n].solved, np.float64),
                  "mean_cost_usd": np.asarray(results[n].cost_usd, np.float64)} for n in names}
    out, done = {}, set()
    for a in dict.fromkeys(x for x in anchors if x in results):
        for b in names:
            if b != a and frozenset((a, b)) not in done:
                done.add(frozenset((a, b)))
                out[f"{a} - {b}"] = {k: list(diff_ci(values[a][k], values[b][k], groups, W)) for k in PAIRED_METRICS}
    return out


def format_paired(summary: dict, split: str | None = None) -> str:
    """One line per paired difference: mean_reward, accuracy and $ of A - B with their 95% intervals."""
    paired = summary.get("paired", {}) if split is None else summary["splits"][split].get("paired", {})
    lines = []
    for pair, m in paired.items():
        cells = [f"{k} {v[0]:+.4f} [{v[1]:+.4f},{v[2]:+.4f}]" for k, v in m.items()]
        lines.append(f"{pair:<30}" + "   ".join(cells))
    return "\n".join(lines)


def summarise_splits(reward_cfg, results_by_split: Mapping[str, Mapping[str, "EpisodeResults"]], group_size: int,
                     primary: str = "test", **kw) -> dict:
    """``summarise`` for every split ({split: {policy: EpisodeResults}}); ``policies`` = the primary split's."""
    if primary not in results_by_split:
        raise ValueError(f"primary split {primary!r} is not among the evaluated splits {sorted(results_by_split)}")
    splits = {}
    for split, results in results_by_split.items():
        n_episodes = {len(r.solved) for r in results.values()}
        if len(n_episodes) != 1 or next(iter(n_episodes)) % group_size:
            raise ValueError(f"split {split!r}: policies have {sorted(n_episodes)} episodes; expected one count "
                             f"that is a multiple of group_size={group_size}")
        splits[split] = summarise(reward_cfg, results, next(iter(n_episodes)) // group_size, group_size, **kw)
    out = dict(splits[primary])
    out["primary_split"] = primary
    out["splits"] = {k: {"policies": v["policies"], "paired": v["paired"]} for k, v in splits.items()}
    return out


def paired_difference(results_a, results_b, metric: str = "accuracy", n_boot: int = DEFAULT_N_BOOT, seed: int = 0
                      ) -> tuple[float, float, float]:
    """(mean_a - mean_b, lo, hi) of a per-episode metric (accuracy | mean_cost_usd | latency_mean_s) for two
    policies that played the same episodes, with a paired task bootstrap (narrower than two separate CIs)."""
    from orchestra_jax.analysis.bootstrap import diff_ci

    if list(map(str, results_a.task_ids)) != list(map(str, results_b.task_ids)):
        raise ValueError("paired_difference: the two policies did not play the same episodes (task ids differ)")
    get = {"accuracy": lambda r: np.asarray(r.solved, np.float64), "mean_cost_usd": lambda r: r.cost_usd,
           "latency_mean_s": lambda r: r.latency_s}
    if metric not in get:
        raise ValueError(f"paired_difference: metric must be one of {sorted(get)}, got {metric!r}")
    groups = task_groups(results_a.task_ids)
    return diff_ci(get[metric](results_a), get[metric](results_b), groups,
                   bootstrap_counts(groups.n_tasks, n_boot, seed))


def _ci(m: dict, key: str, fmt: str) -> str:
    lo, hi = m.get("ci", {}).get(key, (float("nan"), float("nan")))
    return f"{m[key]:{fmt}} [{lo:{fmt}},{hi:{fmt}}]"


def format_table(summary: dict, split: str | None = None) -> str:
    """A fixed-width table of the summary's policies (the primary split, or ``split``), with 95% intervals."""
    pols = summary["policies"] if split is None else summary["splits"][split]["policies"]
    head = (f"{'policy':<18}{'accuracy [95% CI]':>22}{'cost $ [95% CI]':>28}{'lat s':>8}{'p95 s':>8}"
            f"{'pref':>7}{'fixed_r':>8}{'u0.5':>8}{'reward':>8}{'tasks':>6}")
    lines = [head, "-" * len(head)]
    for name, m in pols.items():
        lines.append(f"{name:<18}{_ci(m, 'accuracy', '.3f'):>22}{_ci(m, 'mean_cost_usd', '.5f'):>28}"
                     f"{m['latency_mean_s']:>8.1f}{m.get('latency_p95_s', float('nan')):>8.1f}"
                     f"{m['preference_score']:>7.3f}{m.get('fixed_reward', float('nan')):>8.3f}"
                     f"{m.get('utility_a0.5', float('nan')):>8.3f}{m['mean_reward']:>8.4f}{m['n_tasks']:>6d}")
    paired = format_paired(summary, split)
    if paired:
        lines += ["", "paired differences A - B (same episodes; 95% paired task-bootstrap interval):", paired]
    return "\n".join(lines)


def flat_metrics(summary: dict, prefix: str = "eval") -> dict[str, float]:
    """``{prefix/split/policy/metric: value}`` of every scalar metric (for wandb summaries / define_metric)."""
    out = {}
    splits = summary.get("splits") or {summary.get("primary_split", "test"): {"policies": summary["policies"]}}
    for split, s in splits.items():
        for name, m in s["policies"].items():
            for k, v in m.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{prefix}/{split}/{name}/{k}"] = float(v)
    return out


EVAL_TABLE_COLUMNS = ("accuracy", "mean_cost_usd", "latency_mean_s", "latency_p95_s", "preference_score",
                      "fixed_reward", "utility_a0.5", "mean_reward", "n_tasks")


def eval_tables(summary: dict) -> dict[str, tuple[list[str], list[list]]]:
    """``{split: (columns, rows)}``: one row per policy with each metric and its 95% interval (wandb tables)."""
    cols = ["policy"] + [c for k in EVAL_TABLE_COLUMNS for c in ((k, f"{k}_lo", f"{k}_hi") if k != "n_tasks" else (k,))]
    splits = summary.get("splits") or {summary.get("primary_split", "test"): {"policies": summary["policies"]}}
    out = {}
    for split, s in splits.items():
        rows = []
        for name, m in s["policies"].items():
            row = [name]
            for k in EVAL_TABLE_COLUMNS:
                row.append(m.get(k))
                if k != "n_tasks":
                    row += list(m.get("ci", {}).get(k, (None, None)))
            rows.append(row)
        out[split] = (cols, rows)
    return out


def sweep_objective(summary: dict, n_objectives: int = 1, policy: str = "grpo"):
    """What a Hydra sweeper optimises for one run: ``(accuracy, mean_cost_usd)`` of ``policy`` on the primary
    split when the sweeper has two directions (optuna multi-objective: [maximize, minimize]), else its
    ``fixed_reward`` (one fixed reference preference, comparable across runs with different P; NaN without
    an evaluation)."""
    m = summary.get("policies", {}).get(policy, {})
    if n_objectives == 2:
        return float(m.get("accuracy", float("nan"))), float(m.get("mean_cost_usd", float("nan")))
    if n_objectives != 1:
        raise ValueError(f"sweep objective: {n_objectives} directions; expected 1 or 2 (accuracy, mean $)")
    return float(m.get("fixed_reward", float("nan")))


def summary_filename(name: str | None = None) -> str:
    """``summary.json``, or ``summary-<name>.json`` for a named re-evaluation written beside it."""
    if name is None:
        return "summary.json"
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ValueError(f"summary name must be a plain non-empty file-name part, got {name!r}")
    return f"summary-{name}.json"


def write_summary(run_dir: str, summary: dict, name: str | None = None) -> str:
    """Writes ``<run_dir>/summary.json`` (or ``summary-<name>.json``; atomic) and returns its path."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, summary_filename(name))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True, allow_nan=True)
    os.replace(tmp, path)
    return path


def check_summary(summary: dict, names: Sequence[str]) -> None:
    """Raises ValueError naming the first missing policy or key of a summary."""
    pols = summary.get("policies")
    if not isinstance(pols, dict):
        raise ValueError("summary has no 'policies' dict")
    for n in names:
        if n not in pols:
            raise ValueError(f"summary lacks policy {n!r}")
        for k in SUMMARY_KEYS:
            if k not in pols[n]:
                raise ValueError(f"summary policy {n!r} lacks {k!r}")
