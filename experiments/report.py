"""Report of finished runs (e.g. the points of a --multirun sweep) from their run directories alone.

    python experiments/report.py runs/sweep                 # writes runs/sweep/report.md + figures/*.png
    python experiments/report.py runs/a runs/b --out runs/cmp --policy grpo
    python experiments/report.py runs/sweep --wandb offline --wandb-project orchestra_jax
    python experiments/report.py --combine runs/paper/reward_weights runs/paper/generalisation --out runs/paper

Reads every run dir below the paths (summary.json, config.yaml, metrics.jsonl, sft_metrics.jsonl) and
writes report.md: the accuracy-vs-cost frontier of the trained runs and every baseline with 95%
task-bootstrap interval bars, training curves per weighting, the tool-call mix, the latency distribution,
and the runs / baselines / seeds / generalisation / robustness / preference / routing / behaviour tables
(see orchestra_jax.analysis.report). With --wandb the same figures and tables go to one wandb run.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestra_jax.analysis.markdown import markdown_table, write_combined, write_markdown  # noqa: E402
from orchestra_jax.analysis.report import build_report  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="sweep directories or run directories")
    ap.add_argument("--out", default=None, help="where report.md and figures/ go (default: the first path)")
    ap.add_argument("--policy", default="grpo", help="the trained policy's name in summary.json")
    ap.add_argument("--json", default=None, help="also write the tables as JSON here")
    ap.add_argument("--wandb", default="disabled", choices=["disabled", "offline", "online"],
                    help="log the figures and tables to one wandb run")
    ap.add_argument("--wandb-project", default="orchestra_jax")
    ap.add_argument("--wandb-group", default=None)
    ap.add_argument("--combine", action="store_true",
                    help="one report per path (in that path) plus a combined report.md in --out")
    args = ap.parse_args(argv)
    if args.combine:
        if not args.out:
            sys.exit("report: --combine needs --out")
        try:
            sections = [(os.path.basename(os.path.normpath(p)), build_report([p], p, policy=args.policy))
                        for p in args.paths]
        except ValueError as e:
            sys.exit(f"report: {e}")
        for _, rep in sections:
            write_markdown(rep)
        print(f"report: {write_combined(sections, args.out)}")
        return
    try:
        report = build_report(args.paths, args.out or args.paths[0], policy=args.policy)
    except ValueError as e:
        sys.exit(f"report: {e}")
    path = write_markdown(report)
    print(markdown_table(report.tables["runs"]))
    print(f"report: {path} | figures: {', '.join(sorted(report.images))}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: {"columns": t.columns, "rows": t.rows} for k, t in report.tables.items()}, f, indent=2)
    if args.wandb != "disabled":
        import wandb

        from orchestra_jax.analysis.wandb_log import log_report

        run = wandb.init(project=args.wandb_project, group=args.wandb_group, job_type="report",
                         name=f"report-{os.path.basename(os.path.abspath(report.out_dir))}", mode=args.wandb,
                         dir=report.out_dir, settings=wandb.Settings(silent=True, console="off"))
        log_report(run, report)
        run.finish()


if __name__ == "__main__":
    main()
