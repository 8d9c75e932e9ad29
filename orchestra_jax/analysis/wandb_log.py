"""The report's figures and tables in a wandb run (images, tables, step axes); no service needed offline.

    log_report(run, report)                  # a Report from analysis.report.build_report
    define_step_metrics(run)                 # grpo metrics against grpo/step, sft ones against sft/step
    log_sft_curve(run, sft_rows)             # sft_metrics.jsonl rows on the sft/step axis
"""
from __future__ import annotations

from typing import Any, Sequence

from orchestra_jax.logging import STEP_AXES  # the axes RunLogger declares (grpo/step, sft/step)


def define_step_metrics(run) -> None:
    """Declares the step axes so GRPO and SFT curves each get their own x axis in the wandb UI."""
    for axis, patterns in STEP_AXES.items():
        run.define_metric(axis)
        for p in patterns:
            run.define_metric(p, step_metric=axis)


def log_sft_curve(run, rows: Sequence[dict]) -> int:
    """Logs SFT metric rows (``{"step", "sft/...": v}``) against ``sft/step``; returns how many."""
    n = 0
    for row in rows:
        vals = {k: v for k, v in row.items() if k.startswith("sft/") and isinstance(v, (int, float))}
        if vals:
            run.log({"sft/step": int(row["step"]), **vals})
            n += 1
    return n


def _plain(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)


def log_tables(run, tables: dict, prefix: str = "report") -> list[str]:
    """Each ``analysis.report.Table`` as a wandb.Table named ``<prefix>/<name>``; returns the keys logged."""
    import wandb

    keys = []
    for name, t in tables.items():
        key = f"{prefix}/{name}"
        run.log({key: wandb.Table(columns=list(t.columns), data=[[_plain(v) for v in row] for row in t.rows])})
        keys.append(key)
    return keys


def log_images(run, images: dict[str, str], prefix: str = "report") -> list[str]:
    """Each PNG as a wandb.Image named ``<prefix>/<name>``; returns the keys logged."""
    import wandb

    keys = []
    for name, path in images.items():
        key = f"{prefix}/{name}"
        run.log({key: wandb.Image(path, caption=name)})
        keys.append(key)
    return keys


def log_report(run, report, prefix: str = "report") -> list[str]:
    """Figures and tables of a Report into ``run`` (e.g. from the training loop's RunLogger)."""
    return log_images(run, report.images, prefix) + log_tables(run, report.tables, prefix)
