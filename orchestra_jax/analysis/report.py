"""The sweep report: tables and PNG figures from run directories alone (no wandb service).

    report = build_report(["runs/sweep"], out_dir="runs/sweep", policy="grpo")
    analysis.markdown.write_markdown(report)   # <out_dir>/report.md; figures in <out_dir>/figures/*.png

Tables (``report.tables[name]``: columns + rows of plain values, the same in report.md and in wandb):
  runs            the trained policy of every run: accuracy, $, latency, scores, utilities, intervals, Pareto
  baselines       every other evaluated policy (deduplicated: identical results of several runs once)
  seeds           runs that differ only in a seed key: mean and spread (when there are such groups)
  generalisation  accuracy and $ per split (test / unseen_tools / unseen_prices / ...)
  robustness      change of accuracy, $ and latency on each robustness split against test
  preferences     preference_score, pref_adherence (vs the start policy), fixed_reward
  routing         per domain: accuracy, $, most-called aliases of the trained policy
  behaviours      frequencies from call logs (when the summaries carry them)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from orchestra_jax.analysis import plots
from orchestra_jax.analysis.aggregate import aggregate_values
from orchestra_jax.analysis.behaviours import BEHAVIOURS
from orchestra_jax.analysis.robustness import ROBUSTNESS_SPLITS
from orchestra_jax.analysis.runs import (Run, group_by_setting, label, load_runs, monotone_cost, pareto_mask,
                                         varying_keys)

COST_WEIGHT_KEY = "env.pref_cost"   # the swept cost weight whose frontier should fall in $

GENERALISATION_SPLITS = ("test", "unseen_tools", "unseen_prices")
# (column, metric key, decimals) of the runs / baselines tables; each metric with its interval columns
RUN_COLUMNS = (("accuracy", 3), ("mean_cost_usd", 5), ("latency_mean_s", 1), ("latency_p95_s", 1),
               ("preference_score", 3), ("fixed_reward", 3), ("utility_a0.25", 3), ("utility_a0.5", 3),
               ("utility_a0.75", 3), ("pref_adherence", 3))


def _paired_reward(summary: dict, a: str, b: str | None):
    """(A - B, lo, hi) of mean_reward from summary["paired"], stored either way round; None if absent."""
    paired = summary.get("paired", {})
    if f"{a} - {b}" in paired:
        return paired[f"{a} - {b}"]["mean_reward"]
    if f"{b} - {a}" in paired:
        d, lo, hi = paired[f"{b} - {a}"]["mean_reward"]
        return [-d, -hi, -lo]
    return None


def _above_start(runs: Sequence[Run], policy: str) -> str:
    """'k/n (m)': of n runs, k where ``policy`` beats its start policy on mean_reward, m of them with the
    paired interval (summary["paired"]) above 0; '-' when the summaries carry no paired differences."""
    diffs = [_paired_reward(r.summary, policy, r.summary.get("start_policy")) for r in runs]
    if any(d is None for d in diffs):
        return "-"
    return f"{sum(d[0] > 0 for d in diffs)}/{len(diffs)} ({sum(d[1] > 0 for d in diffs)})"


@dataclasses.dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclasses.dataclass
class Report:
    out_dir: str
    runs: list[Run]
    keys: list[str]
    tables: dict[str, Table]
    images: dict[str, str]                 # name -> PNG path
    policy: str


def _metric_cells(m: dict, key: str) -> list:
    v = m.get(key)
    ci = m.get("ci", {}).get(key)
    return [v, ci[0] if ci else None, ci[1] if ci else None]


def _metric_columns(key: str) -> list[str]:
    return [key, f"{key}_lo", f"{key}_hi"]


def _point(lab: str, m: dict) -> dict:
    return {"label": lab, "accuracy": m["accuracy"], "mean_cost_usd": m["mean_cost_usd"], "ci": m.get("ci", {})}


def _primary(summary: dict) -> str:
    return summary.get("primary_split") or summary.get("eval", {}).get("split", "test")


def _split_pols(summary: dict) -> dict[str, dict]:
    splits = summary.get("splits")
    return {k: v["policies"] for k, v in splits.items()} if splits else {_primary(summary): summary["policies"]}


def build_report(paths: Sequence[str], out_dir: str, policy: str = "grpo") -> Report:
    """Loads every run below ``paths`` and builds the tables and figures (written under out_dir/figures)."""
    runs = load_runs(paths)
    keys = varying_keys(runs)
    labels = {r.path: label(r, keys) for r in runs}
    trained = [r for r in runs if policy in r.summary["policies"]]
    fig_dir = os.path.join(out_dir, "figures")
    tables: dict[str, Table] = {}
    images: dict[str, str] = {}

    # ---- runs (the trained policy of each) and the Pareto flag over them
    cols = ["run", "setting"] + [c for k, _ in RUN_COLUMNS for c in _metric_columns(k)] + ["n_tasks", "pareto"]
    rows = []
    for r in trained:
        m = r.summary["policies"][policy]
        rows.append([r.name, labels[r.path]] + [c for k, _ in RUN_COLUMNS for c in _metric_cells(m, k)]
                    + [m.get("n_tasks"), False])
    if rows:
        mask = pareto_mask([row[cols.index("mean_cost_usd")] for row in rows],
                           [row[cols.index("accuracy")] for row in rows])
        for row, p in zip(rows, mask):
            row[-1] = bool(p)
    tables["runs"] = Table(f"Trained policy `{policy}` of every run (primary split, 95% task-bootstrap intervals)",
                           cols, rows, "pareto: no other trained run is at least as accurate and at most as costly")

    # ---- baselines (and the start policy), deduplicated over runs
    seen, brows, bpoints = {}, [], []
    for r in runs:
        for name, m in r.summary["policies"].items():
            if name == policy:
                continue
            key = (name, round(m["accuracy"], 6), round(m["mean_cost_usd"], 9))
            if key in seen:
                continue
            shown = name if name not in {k[0] for k in seen} else f"{name} ({labels[r.path]})"
            seen[key] = shown
            brows.append([shown, r.name] + [c for k, _ in RUN_COLUMNS for c in _metric_cells(m, k)] + [m.get("n_tasks")])
            bpoints.append(_point(shown, m))
    tables["baselines"] = Table("Other evaluated policies (baselines, start policy)",
                                ["policy", "from run"] + cols[2:-1], brows)

    # ---- does $ fall as the cost weight grows (per setting of the other swept keys)?
    if COST_WEIGHT_KEY in keys:
        others = [k for k in keys if k != COST_WEIGHT_KEY]
        mrows = []
        for lab, rs in group_by_setting(trained, others).items():
            if len(rs) < 2:
                continue
            ms = [r.summary["policies"][policy] for r in rs]
            ws = [float(r.config[COST_WEIGHT_KEY]) for r in rs]
            pts, within, bad = monotone_cost(ws, [m["mean_cost_usd"] for m in ms],
                                             [m.get("ci", {}).get("mean_cost_usd", [m["mean_cost_usd"]] * 2) for m in ms])
            order = sorted(range(len(ws)), key=lambda k: ws[k])
            mrows.append([lab or "(all)", ", ".join(f"{ws[k]:g}" for k in order),
                          ", ".join(f"{ms[k]['mean_cost_usd']:.5f}" for k in order), pts, within,
                          "; ".join(f"{a:g}<{b:g}" for a, b in bad) or "-"])
        tables["cost_monotonicity"] = Table(
            f"Mean $ of `{policy}` against the cost weight {COST_WEIGHT_KEY} (more weight should cost less)",
            ["setting", "cost weights", "mean_cost_usd", "monotone", "monotone_within_ci", "significant violations"],
            mrows, "within_ci: no pair w_i < w_j with cost_lo(w_j) > cost_hi(w_i)")

    # ---- seeds: settings with several runs
    groups = group_by_setting(trained, keys)
    srows = []
    for lab, rs in groups.items():
        if len(rs) < 2:
            continue
        acc = aggregate_values([r.summary["policies"][policy]["accuracy"] for r in rs])
        cost = aggregate_values([r.summary["policies"][policy]["mean_cost_usd"] for r in rs])
        reward = aggregate_values([r.summary["policies"][policy].get("mean_reward", float("nan")) for r in rs])
        srows.append([lab, acc["n"], acc["mean"], acc["std"], cost["mean"], cost["std"], reward["mean"],
                      reward["std"], _above_start(rs, policy)])
    if srows:
        tables["seeds"] = Table("Seeds of one setting: mean and standard deviation over runs",
                                ["setting", "seeds", "accuracy_mean", "accuracy_std", "cost_mean", "cost_std",
                                 "reward_mean", "reward_std", "reward_above_start"], srows,
                                "reward_above_start: seeds whose trained policy has a higher pooled mean_reward "
                                "than its start policy (in parentheses: with the paired 95% interval above 0)")

    # ---- generalisation and robustness over splits
    def per_split(r: Run, name: str) -> dict[str, dict]:
        return {s: p[name] for s, p in _split_pols(r.summary).items() if name in p}

    entries = [(labels[r.path], per_split(r, policy)) for r in trained]
    first = runs[0]
    entries += [(name, per_split(first, name)) for name in first.summary["policies"] if name != policy]
    all_splits = list(dict.fromkeys(s for _, d in entries for s in d))
    gen_splits = [s for s in all_splits if s not in ROBUSTNESS_SPLITS and not s.endswith("]")]
    if gen_splits:
        gcols = ["policy"] + [f"{s}/{k}" for s in gen_splits for k in ("accuracy", "mean_cost_usd")]
        grows = [[lab] + [d.get(s, {}).get(k) for s in gen_splits for k in ("accuracy", "mean_cost_usd")]
                 for lab, d in entries]
        tables["generalisation"] = Table("Generalisation: accuracy and $ per split (paper Tables 2 and 4 in "
                                         "simulation)", gcols, grows)
        if len(gen_splits) > 1:
            images["generalisation"] = plots.split_bars(
                {lab: {s: d[s]["accuracy"] for s in gen_splits if s in d} for lab, d in entries},
                {lab: {s: d[s].get("ci", {}).get("accuracy") for s in gen_splits if s in d} for lab, d in entries},
                os.path.join(fig_dir, "generalisation.png"), title="accuracy per split")
    rob = [s for s in all_splits if s in ROBUSTNESS_SPLITS]
    if rob:
        refs = [s for s in all_splits if s.endswith("]") and "[:" in s]   # evaluate.reference_split
        base = refs[0] if refs else ("test" if "test" in all_splits else all_splits[0])
        rcols = ["policy"] + [f"{s}/{k}" for s in rob for k in ("accuracy", "d_accuracy", "d_cost_usd", "d_latency_s")]
        rrows = []
        for lab, d in entries:
            if base not in d:
                continue
            row = [lab]
            for s in rob:
                m, b = d.get(s), d[base]
                row += [m["accuracy"], m["accuracy"] - b["accuracy"], m["mean_cost_usd"] - b["mean_cost_usd"],
                        m["latency_mean_s"] - b["latency_mean_s"]] if m else [None] * 4
            rrows.append(row)
        tables["robustness"] = Table(f"Robustness: each split and its change against `{base}`", rcols, rrows)
        images["robustness"] = plots.split_bars(
            {lab: {s: d[s]["accuracy"] for s in [base, *rob] if s in d} for lab, d in entries},
            {lab: {s: d[s].get("ci", {}).get("accuracy") for s in [base, *rob] if s in d} for lab, d in entries},
            os.path.join(fig_dir, "robustness.png"), title="accuracy under perturbations")

    # ---- preferences
    prows = []
    for r in trained:
        for name in (policy, r.summary.get("start_policy")):
            m = r.summary["policies"].get(name) if name else None
            if m is None:
                continue
            prows.append([labels[r.path], name] + _metric_cells(m, "preference_score")
                         + _metric_cells(m, "pref_adherence") + [m.get("pref_adherence_start"), m.get("fixed_reward")])
    tables["preferences"] = Table(
        "Preference adherence (paper Table 3 in simulation; pref_adherence normalised against the start policy)",
        ["setting", "policy", *_metric_columns("preference_score"), *_metric_columns("pref_adherence"),
         "pref_adherence_start", "fixed_reward"], prows)

    # ---- routing per domain
    orows = []
    for r in trained:
        for dom, d in sorted(r.summary["policies"][policy].get("per_domain", {}).items()):
            top = sorted(d.get("calls", {}).items(), key=lambda kv: -kv[1])[:3]
            orows.append([labels[r.path], dom, d["accuracy"], d["mean_cost_usd"], d["mean_turns"],
                          ", ".join(f"{a} {v:.2f}" for a, v in top if v > 0)])
    tables["routing"] = Table(f"Routing of `{policy}` per task domain (calls per episode of the top aliases)",
                              ["setting", "domain", "accuracy", "mean_cost_usd", "mean_turns", "top aliases"], orows)

    # ---- behaviours
    bhrows = []
    for r in runs:
        for name, m in r.summary["policies"].items():
            if "behaviours" in m and (name == policy or r is first):
                bhrows.append([labels[r.path] if name == policy else name, name]
                              + [m["behaviours"].get(b) for b in BEHAVIOURS])
    if bhrows:
        tables["behaviours"] = Table("Behaviour frequencies from call logs (fraction of episodes)",
                                     ["setting", "policy", *BEHAVIOURS], bhrows)

    # ---- figures
    tpoints = [_point(labels[r.path], r.summary["policies"][policy]) for r in trained]
    images["frontier"] = plots.frontier(tpoints, bpoints, os.path.join(fig_dir, "frontier.png"))
    curves = {labels[r.path]: r.metrics for r in runs if r.metrics}
    if curves:
        images["training_curves"] = plots.training_curves(curves, os.path.join(fig_dir, "training_curves.png"))
    sft = {labels[r.path]: r.sft_metrics for r in runs if r.sft_metrics}
    if sft:
        images["sft_curves"] = plots.sft_curves(sft, os.path.join(fig_dir, "sft_curves.png"))
    mix = {labels[r.path]: _calls(r.summary["policies"][policy]) for r in trained}
    mix.update({name: _calls(m) for name, m in first.summary["policies"].items() if name != policy})
    images["tool_mix"] = plots.tool_mix(mix, os.path.join(fig_dir, "tool_mix.png"))
    hists = {labels[r.path]: r.summary["policies"][policy]["latency_hist"] for r in trained
             if "latency_hist" in r.summary["policies"][policy]}
    hists.update({n: m["latency_hist"] for n, m in first.summary["policies"].items()
                  if n != policy and "latency_hist" in m})
    if hists:
        images["latency"] = plots.latency_distribution(hists, os.path.join(fig_dir, "latency.png"))
    return Report(out_dir, runs, keys, tables, images, policy)


def _calls(m: dict) -> dict[str, float]:
    return {k[len("calls/"):]: v for k, v in m.items() if k.startswith("calls/")}
