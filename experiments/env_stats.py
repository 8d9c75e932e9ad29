"""Properties of the QA setting measured with scripted policies (no training), and the checks.

    python experiments/env_stats.py                       # conf/env/qa_quickstart.yaml, 2,000 tasks per split
    python experiments/env_stats.py --env qa --strict     # the full setting; exit 1 when a check fails
    python experiments/env_stats.py --setting functions --strict   # per-domain table of the function-calling setting
    python experiments/env_stats.py --env qa --tasks 500 --splits test --set qa.menu_size=4

Every scripted policy (oracle, rule_based and its open-loop / price-blind / preference-blind copies,
always_strongest, cheapest, random_router, blind, random) plays the same tasks of each split; the reward is
the configured one (``--reward``, conf/reward/<name>.yaml), pooled over all policies per task as
``evaluate.py`` does. See ``orchestra_jax/envs/stats.py`` for the checks.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402

import yaml  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from orchestra_jax.envs import env_config_from_dict, make_env  # noqa: E402
from orchestra_jax.envs.stats import SPLITS, compute_stats, format_checks, format_rows  # noqa: E402
from orchestra_jax.envs.tools import resolve_path  # noqa: E402
from orchestra_jax.summary import pooled_rewards  # noqa: E402
from orchestra_jax.rl.rewards import RewardConfig  # noqa: E402


def load_yaml(path: str, overrides=()):
    p = resolve_path(path)
    if not p.exists():
        raise ValueError(f"config not found: {p}")
    with open(p) as f:
        d = OmegaConf.create(yaml.safe_load(f) or {})
    return OmegaConf.merge(d, OmegaConf.from_dotlist(list(overrides))) if overrides else d


def load_env_config(name: str, overrides: list[str]):
    """conf/env/<name>.yaml (or a YAML path) with key=value overrides, validated as an EnvConfig."""
    return env_config_from_dict(load_yaml(name if name.endswith(".yaml") else f"conf/env/{name}.yaml", overrides))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="qa_quickstart", help="conf/env/<name>.yaml or a YAML path")
    ap.add_argument("--setting", choices=("qa", "functions"), default=None,
                    help="shorthand: functions = --env functions (per-domain table of the function-calling setting)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="env config overrides")
    ap.add_argument("--reward", default="paper", help="conf/reward/<name>.yaml")
    ap.add_argument("--tasks", type=int, default=2000, help="tasks per split")
    ap.add_argument("--splits", nargs="*", default=list(SPLITS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the stats to this JSON file")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    args = ap.parse_args(argv)
    if args.setting == "functions" and args.env == "qa_quickstart":
        args.env = "functions"
    try:
        cfg = load_env_config(args.env, args.set)
        if cfg.setting == "functions":  # the function-calling setting has its own per-domain table
            from orchestra_jax.envs.functions.stats import report

            text, _, ok = report(make_env(cfg), args.tasks, "test", args.seed)
            print(text)
            return 0 if (ok or not args.strict) else 1
        if cfg.setting != "qa":
            raise ValueError(f"env_stats measures the qa setting, got {cfg.setting!r}")
        env = make_env(cfg)
        rd = OmegaConf.to_container(load_yaml(f"conf/reward/{args.reward}.yaml"))
        reward_cfg = RewardConfig(**rd)
        bad = sorted(set(args.splits) - set(SPLITS))
        if bad or "test" not in args.splits:
            raise ValueError(f"--splits must include test and be among {SPLITS}, got {args.splits}")
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def reward_fn(results):
        return {k: v[:, 0] for k, v in pooled_rewards(reward_cfg, results, len(next(iter(results.values())).solved), 1).items()}

    t0 = time.perf_counter()
    stats = compute_stats(env, args.seed, args.tasks, reward_fn, args.splits)
    print(f"env {args.env} {' '.join(args.set)}: {args.tasks} tasks per split, seed {args.seed}, reward "
          f"{args.reward} pooled over {len(stats['rows']) // len(args.splits)} policies "
          f"({time.perf_counter() - t0:.0f} s)\n")
    print(format_rows(stats["rows"]))
    print("\nChecks:")
    print(format_checks(stats["checks"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [dataclasses.asdict(r) for r in stats["rows"]], "checks": stats["checks"],
                       "env": args.env, "set": args.set, "tasks": args.tasks, "seed": args.seed}, f, indent=1)
    ok = all(x["pass"] for x in stats["checks"].values())
    return 0 if (ok or not args.strict) else 1


if __name__ == "__main__":
    sys.exit(main())
