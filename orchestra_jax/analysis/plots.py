"""PNG figures of a sweep (matplotlib, headless Agg backend). Each function writes one file and returns it.

Inputs are plain data (dicts / lists from summaries and metrics.jsonl), so the figures can be tested and
re-drawn without a run.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from orchestra_jax.analysis.runs import pareto_mask  # noqa: E402

DPI = 110


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _err(point: float, ci: Sequence[float] | None) -> list[float]:
    if not ci:
        return [0.0, 0.0]
    return [max(point - ci[0], 0.0), max(ci[1] - point, 0.0)]


def frontier(trained: Sequence[dict], baselines: Sequence[dict], path: str, title: str = "") -> str:
    """Accuracy vs mean $ with 95% interval bars; the Pareto frontier of the trained points as a line.

    Each point: {"label", "accuracy", "mean_cost_usd", "ci": {"accuracy": [lo, hi], "mean_cost_usd": [lo, hi]}}.
    """
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for pts, marker, color, kind in ((trained, "o", "tab:blue", "trained"), (baselines, "s", "tab:gray", "baseline")):
        for p in pts:
            ci = p.get("ci", {})
            ax.errorbar(p["mean_cost_usd"], p["accuracy"],
                        xerr=np.array(_err(p["mean_cost_usd"], ci.get("mean_cost_usd")))[:, None],
                        yerr=np.array(_err(p["accuracy"], ci.get("accuracy")))[:, None],
                        fmt=marker, color=color, ecolor=color, alpha=0.85, capsize=3, ms=6)
            ax.annotate(p["label"], (p["mean_cost_usd"], p["accuracy"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points", color="black" if kind == "trained" else "dimgray")
    if trained:
        cost = np.array([p["mean_cost_usd"] for p in trained])
        acc = np.array([p["accuracy"] for p in trained])
        m = pareto_mask(cost, acc)
        order = np.argsort(cost[m])
        ax.step(cost[m][order], acc[m][order], where="post", color="tab:blue", lw=1.5,
                label="Pareto frontier (trained)")
    ax.plot([], [], "o", color="tab:blue", label="trained runs")
    ax.plot([], [], "s", color="tab:gray", label="baselines")
    ax.set_xlabel("mean cost per episode ($)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "accuracy vs cost (95% task-bootstrap intervals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


CURVE_KEYS = (("rollout/accuracy", "accuracy"), ("rollout/cost_usd", "cost $ / episode"),
              ("reward/preference_score", "preference score"))


def training_curves(curves: Mapping[str, Sequence[dict]], path: str, keys=CURVE_KEYS) -> str:
    """One panel per metric over GRPO steps, one line per run (``curves[label]`` = metrics.jsonl rows)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    axes = np.atleast_1d(axes)
    for ax, (key, name) in zip(axes, keys):
        for lab, rows in curves.items():
            pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
            if pts:
                s, v = zip(*pts)
                ax.plot(s, v, marker="." if len(pts) < 30 else None, label=lab)
        ax.set_xlabel("GRPO step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def sft_curves(curves: Mapping[str, Sequence[dict]], path: str) -> str:
    """SFT loss over steps, one line per run (``sft_metrics.jsonl`` rows)."""
    return training_curves(curves, path, keys=(("sft/loss", "SFT loss"), ("sft/mean_token_prob", "SFT token prob")))


def tool_mix(mix: Mapping[str, Mapping[str, float]], path: str) -> str:
    """Stacked bars: calls per alias per episode for each run / policy (``mix[label][alias]``)."""
    labels = list(mix)
    aliases = sorted({a for m in mix.values() for a, v in m.items() if v > 0}) or sorted({a for m in mix.values() for a in m})
    fig, ax = plt.subplots(figsize=(8.0, 0.45 * len(labels) + 1.8))
    left = np.zeros(len(labels))
    cmap = plt.get_cmap("tab20")
    for k, a in enumerate(aliases):
        vals = np.array([mix[l].get(a, 0.0) for l in labels])
        ax.barh(labels, vals, left=left, color=cmap(k % 20), label=a)
        left += vals
    ax.set_xlabel("calls per episode")
    ax.set_title("tool-call mix")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    ax.invert_yaxis()
    return _save(fig, path)


def latency_distribution(hists: Mapping[str, Mapping[str, list]], path: str) -> str:
    """Episode-latency histograms (``{"edges", "counts"}`` per label, shared log bins) as step lines."""
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    for lab, h in hists.items():
        edges, counts = np.asarray(h["edges"]), np.asarray(h["counts"], np.float64)
        if counts.sum() > 0:
            ax.stairs(counts / counts.sum(), edges, label=lab)
    ax.set_xscale("log")
    ax.set_xlabel("episode latency (s)")
    ax.set_ylabel("fraction of episodes")
    ax.set_title("latency distribution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def split_bars(values: Mapping[str, Mapping[str, float]], cis: Mapping[str, Mapping[str, Sequence[float]]],
               path: str, ylabel: str = "accuracy", title: str = "") -> str:
    """Grouped bars: ``values[policy][split]`` with interval bars ``cis[policy][split]``."""
    pols = list(values)
    splits = list(dict.fromkeys(s for v in values.values() for s in v))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(pols) * max(len(splits), 1) / 2), 4.0))
    w = 0.8 / max(len(splits), 1)
    x = np.arange(len(pols))
    for k, s in enumerate(splits):
        v = np.array([values[p].get(s, np.nan) for p in pols])
        err = np.array([_err(values[p].get(s, 0.0), cis.get(p, {}).get(s)) for p in pols]).T
        ax.bar(x + (k - (len(splits) - 1) / 2) * w, v, w, yerr=err, capsize=2, label=s)
    ax.set_xticks(x, pols, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} per split")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return _save(fig, path)
