"""report.md: markdown tables (metric + interval columns merged into ``v [lo, hi]`` cells, fixed decimals)
and figure links, for one report or several experiments' reports combined."""
from __future__ import annotations

import os
from typing import Any, Sequence

from orchestra_jax.analysis.report import RUN_COLUMNS, Report, Table


def _cell(col: str, v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        base = col.split("/")[-1].removesuffix("_lo").removesuffix("_hi").removesuffix("_mean").removesuffix("_std")
        for key, dec in RUN_COLUMNS:
            if base == key or base == f"d_{key}":
                return f"{v:.{dec}f}"
        if "cost" in base:
            return f"{v:.5f}"
        if "latency" in base:
            return f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


def _merged_columns(columns: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Header cells of the markdown table: a metric and its ``_lo`` / ``_hi`` columns become one cell."""
    out, i = [], 0
    while i < len(columns):
        c = columns[i]
        if columns[i + 1:i + 3] == [f"{c}_lo", f"{c}_hi"]:
            out.append((f"{c} [95% CI]", [i, i + 1, i + 2]))
            i += 3
        else:
            out.append((c, [i]))
            i += 1
    return out


def markdown_table(t: Table) -> str:
    """The table in markdown; ``v [lo, hi]`` cells for metrics with intervals, numbers at fixed decimals."""
    merged = _merged_columns(t.columns)
    lines = [f"| {' | '.join(h for h, _ in merged)} |", f"|{'|'.join('---' for _ in merged)}|"]
    for row in t.rows:
        cells = []
        for _, idx in merged:
            c = t.columns[idx[0]]
            if len(idx) == 3 and row[idx[1]] is not None:
                cells.append(f"{_cell(c, row[idx[0]])} [{_cell(c, row[idx[1]])}, {_cell(c, row[idx[2]])}]")
            else:
                cells.append(_cell(c, row[idx[0]]))
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)


def write_markdown(report: Report) -> str:
    """Writes ``<out_dir>/report.md`` (tables + figure links) and returns its path."""
    out = [f"# Sweep report: {len(report.runs)} runs", "",
           f"Varying config keys: {', '.join(report.keys) or '(none)'}. Trained policy: `{report.policy}`. "
           "Intervals: 95% percentile bootstrap over tasks. Definitions: each run's summary.json "
           "(`definitions`).", ""]
    for name in ("frontier", "training_curves", "sft_curves", "tool_mix", "latency", "generalisation", "robustness"):
        if name in report.images:
            out += [f"![{name}]({os.path.relpath(report.images[name], report.out_dir)})", ""]
    for name, t in report.tables.items():
        out += [f"## {name}", "", t.title + ("" if not t.note else f" ({t.note})"), "", markdown_table(t), ""]
    path = os.path.join(report.out_dir, "report.md")
    os.makedirs(report.out_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(out))
    return path


def write_combined(sections: Sequence[tuple[str, Report]], out_dir: str, title: str = "Paper experiments") -> str:
    """One report.md over several experiments' reports (each written in its own directory): every
    section's figures (linked relative to out_dir) and tables under the experiment's heading."""
    out = [f"# {title}", ""]
    for name, rep in sections:
        out += [f"## {name}", "", f"{len(rep.runs)} runs; varying keys: {', '.join(rep.keys) or '(none)'}.", ""]
        for fig, path in rep.images.items():
            out += [f"![{name}/{fig}]({os.path.relpath(path, out_dir)})", ""]
        for tname, t in rep.tables.items():
            out += [f"### {name}: {tname}", "", t.title, "", markdown_table(t), ""]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(out))
    return path
