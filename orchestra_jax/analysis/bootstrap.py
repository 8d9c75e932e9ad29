"""Percentile bootstrap intervals that resample TASKS (clusters of episodes), not episodes.

Episodes of one task share its difficulty, so they are correlated; resampling episodes would treat a
task's G episodes as independent draws and give intervals that are too narrow. Here every replicate draws
``n_tasks`` tasks with replacement and keeps all episodes of each drawn task (a cluster bootstrap):

    groups = task_groups(task_ids)                       # task index of every episode
    W = bootstrap_counts(groups.n_tasks, n_boot, seed)   # [n_boot, n_tasks] how often each task was drawn
    point, lo, hi = mean_ci(values, groups, W)           # or quantile_ci(values, q, groups, W)

Using one ``W`` for several metrics (and for several policies that played the same tasks) makes their
intervals come from the same replicates, so differences can be bootstrapped pairwise (``diff_ci``).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

ALPHA = 0.05  # 95% intervals


@dataclasses.dataclass(frozen=True)
class TaskGroups:
    """Which task every episode belongs to: ``index[i]`` in 0..n_tasks-1, tasks in first-seen order."""

    task_ids: tuple[str, ...]       # [n_tasks] unique ids
    index: np.ndarray               # [N] int64

    @property
    def n_tasks(self) -> int:
        return len(self.task_ids)


def task_groups(task_ids: Sequence[str]) -> TaskGroups:
    """Groups episodes by task id (first-seen order, so the result does not depend on id sorting)."""
    if len(task_ids) == 0:
        raise ValueError("task_groups: no episodes")
    order: dict[str, int] = {}
    index = np.array([order.setdefault(str(t), len(order)) for t in task_ids], np.int64)
    return TaskGroups(tuple(order), index)


def bootstrap_counts(n_tasks: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_tasks] float64: times each task is drawn in each replicate (each row sums to n_tasks)."""
    if n_tasks < 1 or n_boot < 1:
        raise ValueError(f"bootstrap_counts: need n_tasks >= 1 and n_boot >= 1, got {n_tasks}, {n_boot}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xB007]))
    draws = rng.integers(n_tasks, size=(n_boot, n_tasks))
    counts = np.zeros((n_boot, n_tasks), np.float64)
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    return counts


def _check(values: np.ndarray, groups: TaskGroups, W: np.ndarray) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or v.shape[0] != groups.index.shape[0]:
        raise ValueError(f"bootstrap: values shape {v.shape} does not match {groups.index.shape[0]} episodes")
    if W.ndim != 2 or W.shape[1] != groups.n_tasks:
        raise ValueError(f"bootstrap: counts shape {W.shape} does not match {groups.n_tasks} tasks")
    return v


def mean_replicates(values, groups: TaskGroups, W: np.ndarray) -> np.ndarray:
    """[n_boot] mean over the episodes of each replicate (a task drawn k times counts k times)."""
    v = _check(values, groups, W)
    sums = np.bincount(groups.index, weights=v, minlength=groups.n_tasks)
    counts = np.bincount(groups.index, minlength=groups.n_tasks).astype(np.float64)
    return (W @ sums) / (W @ counts)


def _interval(point: float, reps: np.ndarray, alpha: float) -> tuple[float, float, float]:
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(point), float(lo), float(hi)


def mean_ci(values, groups: TaskGroups, W: np.ndarray, alpha: float = ALPHA) -> tuple[float, float, float]:
    """(mean, lo, hi): the episode mean and its percentile interval over task-resampled replicates."""
    v = _check(values, groups, W)
    return _interval(float(v.mean()), mean_replicates(v, groups, W), alpha)


def weighted_quantile(sorted_values: np.ndarray, weights_RN: np.ndarray, q: float) -> np.ndarray:
    """[R] inverted-CDF quantile (numpy's ``method="inverted_cdf"``) of sorted values under R weightings."""
    cum = np.cumsum(weights_RN, axis=1)
    target = q * cum[:, -1:]
    idx = np.argmax(cum >= target - 1e-9 * np.maximum(cum[:, -1:], 1.0), axis=1)
    return sorted_values[idx]


def quantile_ci(values, q: float, groups: TaskGroups, W: np.ndarray, alpha: float = ALPHA
                ) -> tuple[float, float, float]:
    """(quantile, lo, hi) of the episode values (inverted-CDF quantile; e.g. q=0.95 for p95 latency)."""
    if not 0 < q < 1:
        raise ValueError(f"quantile_ci: q must be in (0, 1), got {q}")
    v = _check(values, groups, W)
    order = np.argsort(v, kind="stable")
    per_episode = W[:, groups.index][:, order]             # [n_boot, N] weight of each episode
    reps = weighted_quantile(v[order], per_episode, q)
    point = float(np.quantile(v, q, method="inverted_cdf"))
    return _interval(point, reps, alpha)


def diff_ci(values_a, values_b, groups: TaskGroups, W: np.ndarray, alpha: float = ALPHA
            ) -> tuple[float, float, float]:
    """(mean_a - mean_b, lo, hi), paired: both policies played the same episodes (same task grouping)."""
    a, b = _check(values_a, groups, W), _check(values_b, groups, W)
    reps = mean_replicates(a, groups, W) - mean_replicates(b, groups, W)
    return _interval(float(a.mean() - b.mean()), reps, alpha)
