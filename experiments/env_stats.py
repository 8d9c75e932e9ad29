"""Success rate and mean $ cost of the env baselines, per domain and per model, plus the trade-off checks.

    python experiments/env_stats.py                       # conf/env/qa_quickstart.yaml, 2,000 test tasks
    python experiments/env_stats.py --env qa --tasks 4000 --split unseen_prices --set max_turns=4

Prints one table for the routers (always_strongest, cheapest, rule_based, random_router, random), one for
"answer directly with model X" per answer alias, and the checks (exit status 1 with --strict if one fails):
always-strongest >= 15 points above always-cheapest; a cheap specialist within 5 points of the strongest
on its own domain at < 20% of its cost; rule-based within 3 points of always-strongest at <= 50% of its cost.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from orchestra_jax.envs import env_config_from_dict, make_env  # noqa: E402
from orchestra_jax.envs.stats import compute_stats, format_rows  # noqa: E402
from orchestra_jax.envs.tools import resolve_path  # noqa: E402


def load_env_config(name: str, overrides: list[str]):
    """conf/env/<name>.yaml (or a YAML path) with key=value overrides, validated as an EnvConfig."""
    path = name if name.endswith(".yaml") else f"conf/env/{name}.yaml"
    p = resolve_path(path)
    if not p.exists():
        raise ValueError(f"env config not found: {p}")
    with open(p) as f:
        d = OmegaConf.create(yaml.safe_load(f) or {})
    if overrides:
        d = OmegaConf.merge(d, OmegaConf.from_dotlist(overrides))
    return env_config_from_dict(d)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="qa_quickstart", help="conf/env/<name>.yaml or a YAML path")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="env config overrides")
    ap.add_argument("--tasks", type=int, default=2000, help="number of tasks (>= 2000 for the checks)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the stats to this JSON file")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    args = ap.parse_args(argv)
    try:
        cfg = load_env_config(args.env, args.set)
        env = make_env(cfg)
        if not hasattr(env, "menu"):
            raise ValueError(f"env_stats supports the qa setting, got {cfg.setting!r}")
        tasks = env.sample_tasks(args.seed, args.tasks, args.split)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    stats = compute_stats(env, tasks, args.seed)
    print(f"env {args.env} split {args.split}: {len(tasks)} tasks, seed {args.seed} "
          f"({time.perf_counter() - t0:.1f} s)\n")
    print("Routers (same recipe of tools; they differ in the model picked):")
    print(format_rows(stats["rows"]))
    print("\nPer model: answer directly with one alias (no search, no code):")
    print(format_rows(stats["model_rows"]))
    print("\nChecks:")
    c = stats["checks"]
    ok = True
    if "strongest_vs_cheapest" in c:
        x = c["strongest_vs_cheapest"]
        print(f"  [{'PASS' if x['pass'] else 'FAIL'}] always_strongest - cheapest = {x['gap_points']:.1f} points (>= 15)")
        ok &= x["pass"]
    if "specialist" in c:
        x = c["specialist"]
        for s in x["candidates"]:
            print(f"  [{'pass' if s['pass'] else '----'}] specialist {s['alias']} on {s['domain']}: "
                  f"{s['acc_gap_points']:.1f} points below {x['strongest']} (<= 5) at "
                  f"{100 * s['cost_ratio']:.1f}% of its cost (< 20%)")
        print(f"  [{'PASS' if x['pass'] else 'FAIL'}] some cheap specialist matches the strongest on its domain")
        ok &= x["pass"]
    if "rule_based" in c:
        x = c["rule_based"]
        print(f"  [{'PASS' if x['pass'] else 'FAIL'}] rule_based: {x['acc_gap_points']:.1f} points below "
              f"always_strongest (<= 3) at {100 * x['cost_ratio']:.1f}% of its cost (<= 50%)")
        ok &= x["pass"]
    if args.json:
        out = {"rows": [r.__dict__ for r in stats["rows"]], "model_rows": [r.__dict__ for r in stats["model_rows"]],
               "checks": c, "n_tasks": len(tasks), "env": args.env, "split": args.split, "seed": args.seed}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if (ok or not args.strict) else 1


if __name__ == "__main__":
    sys.exit(main())
