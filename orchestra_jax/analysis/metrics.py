"""Per-policy evaluation metrics with 95% task-bootstrap intervals, from ``envs.base.EpisodeResults``.

Every metric is a per-episode value aggregated over episodes (a mean, or a latency quantile); its
interval resamples tasks (``analysis.bootstrap``). Definitions (all in ``METRIC_DEFINITIONS``):

  accuracy                fraction of episodes solved
  mean_cost_usd           $ per episode (tools + orchestrator tokens)
  latency_mean_s, latency_p50_s, latency_p95_s, latency_p99_s   seconds per episode (inverted-CDF quantiles)
  mean_turns              assistant turns per episode
  calls/<alias>           calls of that alias per episode (from the feature columns)
  utility_a<a>            a * 1[solved] - (1 - a) * cost / cost_scale_usd, a in UTILITY_ALPHAS; fixed scale
  preference_score        the env's fixed-scale adherence to the episode's own P (envs.preferences)
  fixed_reward            the same formula with ONE reference preference P_ref for every run (default:
                          outcome 1, cost 0.5, latency 0.5, no tool weight): a reward on one fixed scale,
                          comparable across runs trained and evaluated with different P
  pref_adherence          paper App. L style (Eq. 5-6 as reconstructed here): per task, the features of
                          this policy's and the START policy's episodes are min-max normalised together
                          (signed: calls, outcome, -cost, -latency), dotted with P / sum(P), 0 if unsolved;
                          mean over this policy's episodes. ``pref_adherence_start`` is the start policy's
                          value in the same pools, so the pair says how far training moved adherence.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from orchestra_jax.analysis.bootstrap import (ALPHA, TaskGroups, bootstrap_counts, mean_ci, quantile_ci,
                                              task_groups)

UTILITY_ALPHAS = (0.25, 0.5, 0.75)
LATENCY_QUANTILES = (("latency_p50_s", 0.50), ("latency_p95_s", 0.95), ("latency_p99_s", 0.99))
DEFAULT_COST_SCALE_USD = 0.05        # = envs.preferences.ScoreScales.cost_usd: one fixed $ scale for all runs
DEFAULT_REFERENCE_PREFERENCE = (1.0, 0.5, 0.5)   # (outcome, cost, latency) weights of fixed_reward
DEFAULT_N_BOOT = 1000

METRIC_DEFINITIONS = {
    "accuracy": "fraction of episodes solved",
    "mean_cost_usd": "$ per episode (tools + orchestrator tokens)",
    "latency_mean_s": "seconds per episode, mean",
    "latency_p50_s": "seconds per episode, median (inverted-CDF quantile)",
    "latency_p95_s": "seconds per episode, 95th percentile (inverted-CDF quantile)",
    "latency_p99_s": "seconds per episode, 99th percentile (inverted-CDF quantile)",
    "mean_turns": "assistant turns per episode",
    "utility_a{a}": "a * 1[solved] - (1 - a) * cost_usd / cost_scale_usd (fixed scale)",
    "preference_score": "envs.preferences.preference_score per episode (the episode's own P, fixed scales)",
    "fixed_reward": "preference_score with the reference preference P_ref for every episode (comparable "
                    "across runs with different P)",
    "pref_adherence": "App. L Eq. 5-6 (reconstruction): per-task min-max over this policy's and the start "
                      "policy's episodes, . P / sum(P), 0 if unsolved",
    "pref_adherence_start": "the start policy's pref_adherence in the same per-task pools",
    "calls/<alias>": "calls of the alias per episode",
    "intervals": "95% percentile bootstrap over tasks (all episodes of a drawn task kept)",
}


def per_episode_preference_score(features, solved, preference, score_fn=None) -> np.ndarray:
    """[N] ``score_fn(features, solved, preference)`` (default ``envs.preferences.preference_score``, a
    mean over episodes) of each episode alone, so its mean is the score of all of them."""
    if score_fn is None:
        from orchestra_jax.envs.preferences import preference_score as score_fn
    f, s, p = np.asarray(features), np.asarray(solved, bool), np.asarray(preference)
    return np.array([float(score_fn(f[i:i + 1], s[i:i + 1], p[i:i + 1])) for i in range(len(s))])


def reference_preference(num_features: int, outcome_cost_latency=DEFAULT_REFERENCE_PREFERENCE) -> np.ndarray:
    """[F] P_ref: no weight on any alias, the given outcome / cost / latency weights."""
    o, c, l = (float(x) for x in outcome_cost_latency)
    return np.array([0.0] * (num_features - 3) + [o, c, l], np.float64)


def utility(solved, cost_usd, a: float, cost_scale_usd: float = DEFAULT_COST_SCALE_USD) -> np.ndarray:
    """[N] u = a * 1[solved] - (1 - a) * cost / cost_scale_usd."""
    if not 0 <= a <= 1 or cost_scale_usd <= 0:
        raise ValueError(f"utility: need a in [0, 1] and cost_scale_usd > 0, got a={a}, {cost_scale_usd}")
    return a * np.asarray(solved, np.float64) - (1 - a) * np.asarray(cost_usd, np.float64) / cost_scale_usd


def _signed(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, np.float64).copy()
    f[:, -2:] *= -1.0
    return f


def pooled_adherence(results, start, groups: TaskGroups | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode App. L scores of ``results`` and of ``start`` (both EpisodeResults on the same tasks).

    For each task, the signed features of both policies' episodes on it are min-max normalised together
    (a constant feature gives 0, as in the paper's Eq. 2), dotted with that task's P / sum(P), 0 if unsolved.
    Returns ([N_results], [N_start]).
    """
    ids_a, ids_b = [str(t) for t in results.task_ids], [str(t) for t in start.task_ids]
    if set(ids_a) != set(ids_b):
        missing = sorted(set(ids_a) ^ set(ids_b))[:3]
        raise ValueError(f"pref_adherence: the start policy played other tasks (e.g. {missing})")
    fa, fb = _signed(results.features), _signed(start.features)
    out_a, out_b = np.zeros(len(ids_a)), np.zeros(len(ids_b))
    ia, ib = np.array(ids_a), np.array(ids_b)
    for tid in dict.fromkeys(ids_a):
        ma, mb = ia == tid, ib == tid
        pool = np.concatenate([fa[ma], fb[mb]])
        lo, hi = pool.min(0), pool.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        p = np.asarray(results.preference, np.float64)[ma][0]
        total = p.sum()
        for mask, f, s, out in ((ma, fa, results.solved, out_a), (mb, fb, start.solved, out_b)):
            norm = np.where(hi > lo, (f[mask] - lo) / span, 0.0)
            score = norm @ p / total if total > 0 else np.zeros(int(mask.sum()))
            out[mask] = score * np.asarray(s, bool)[mask]
    return out_a, out_b


def episode_values(results, *, cost_scale_usd: float = DEFAULT_COST_SCALE_USD,
                   reference_pref=DEFAULT_REFERENCE_PREFERENCE, start=None, preference_score_fn=None
                   ) -> dict[str, np.ndarray]:
    """Every per-episode quantity whose mean is a metric: name -> [N]."""
    f = np.asarray(results.features, np.float64)
    solved = np.asarray(results.solved, bool)
    cost, lat = np.asarray(results.cost_usd, np.float64), np.asarray(results.latency_s, np.float64)
    vals = {
        "accuracy": solved.astype(np.float64),
        "mean_cost_usd": cost,
        "latency_mean_s": lat,
        "mean_turns": np.asarray(results.n_turns, np.float64),
        "preference_score": per_episode_preference_score(f, solved, results.preference, preference_score_fn),
        "fixed_reward": per_episode_preference_score(
            f, solved, np.tile(reference_preference(f.shape[1], reference_pref), (len(solved), 1)),
            preference_score_fn),
    }
    for a in UTILITY_ALPHAS:
        vals[f"utility_a{a:g}"] = utility(solved, cost, a, cost_scale_usd)
    if start is not None:
        vals["pref_adherence"], start_vals = pooled_adherence(results, start)
        vals["_pref_adherence_start"] = start_vals
    for j, name in enumerate(results.feature_names[:-3]):
        vals[name.replace("calls:", "calls/")] = f[:, j]
    return vals


def policy_metrics(results, *, start=None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                   cost_scale_usd: float = DEFAULT_COST_SCALE_USD, reference_pref=DEFAULT_REFERENCE_PREFERENCE,
                   alpha: float = ALPHA, preference_score_fn=None, extra_values=None) -> dict:
    """Metrics of one policy's EpisodeResults: ``{name: point, ..., "ci": {name: [lo, hi]}}``.

    ``start``: the start policy's EpisodeResults on the same tasks (for pref_adherence; None = skipped).
    ``extra_values``: more per-episode arrays {name: [N]} to report with intervals (e.g. a pooled reward).
    The bootstrap replicates depend only on (seed, the task ids), so policies that played the same tasks
    share them and the same seed reproduces the same numbers.
    """
    if len(results.solved) == 0:
        raise ValueError("policy_metrics: no episodes")
    groups = task_groups(results.task_ids)
    W = bootstrap_counts(groups.n_tasks, n_boot, seed)
    vals = episode_values(results, cost_scale_usd=cost_scale_usd, reference_pref=reference_pref, start=start,
                          preference_score_fn=preference_score_fn)
    vals.update(extra_values or {})
    out: dict = {"n_tasks": groups.n_tasks, "episodes": int(len(results.solved)), "ci": {}}
    for name, v in vals.items():
        if name.startswith("_"):
            continue
        point, lo, hi = mean_ci(v, groups, W, alpha)
        out[name], out["ci"][name] = point, [lo, hi]
    for name, q in LATENCY_QUANTILES:
        point, lo, hi = quantile_ci(results.latency_s, q, groups, W, alpha)
        out[name], out["ci"][name] = point, [lo, hi]
    if start is not None:
        sg = task_groups(start.task_ids)
        point, lo, hi = mean_ci(vals["_pref_adherence_start"], sg, bootstrap_counts(sg.n_tasks, n_boot, seed), alpha)
        out["pref_adherence_start"], out["ci"]["pref_adherence_start"] = point, [lo, hi]
    out["invalid_turn_rate"] = float(np.sum(results.n_invalid) / max(int(np.sum(results.n_turns)), 1))
    out["budget_exceeded_rate"] = float(np.mean(results.budget_exceeded))
    return out


def per_domain(results, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> dict[str, dict]:
    """Routing per task domain: accuracy (with interval), $ cost, turns and calls per alias."""
    domains = np.array([str(d) for d in results.domains])
    f = np.asarray(results.features, np.float64)
    out = {}
    for d in sorted(set(domains)):
        m = domains == d
        ids = [t for t, keep in zip(results.task_ids, m) if keep]
        groups = task_groups(ids)
        acc, lo, hi = mean_ci(np.asarray(results.solved, np.float64)[m], groups,
                              bootstrap_counts(groups.n_tasks, n_boot, seed))
        out[str(d)] = {"episodes": int(m.sum()), "accuracy": acc, "accuracy_ci": [lo, hi],
                  "mean_cost_usd": float(np.mean(np.asarray(results.cost_usd)[m])),
                  "mean_turns": float(np.mean(np.asarray(results.n_turns)[m])),
                  "calls": {n.replace("calls:", ""): float(f[m, j].mean())
                            for j, n in enumerate(results.feature_names[:-3])}}
    return out


def latency_histogram(latency_s, bins: Sequence[float] | None = None) -> dict[str, list]:
    """Counts of episode latencies in fixed log-spaced bins (so runs' histograms can be overlaid)."""
    lat = np.asarray(latency_s, np.float64)
    edges = np.asarray(bins if bins is not None else np.geomspace(0.1, 1000.0, 41))
    counts, _ = np.histogram(np.clip(lat, edges[0], edges[-1]), bins=edges)
    return {"edges": edges.tolist(), "counts": counts.astype(int).tolist()}


def summarise_policies(results: Mapping[str, object], *, start_policy: str | None = None, **kw) -> dict[str, dict]:
    """``policy_metrics`` of every policy (with the start policy's episodes for pref_adherence if given)."""
    if start_policy is not None and start_policy not in results:
        raise ValueError(f"start policy {start_policy!r} is not among the evaluated {sorted(results)}")
    start = results[start_policy] if start_policy is not None else None
    return {name: policy_metrics(r, start=start, **kw) for name, r in results.items()}
