"""Rollout throughput: episodes/s and where the time goes (prefill, decode, env), row compaction off vs on.

    python benchmarks/rollout.py [--steps 3] [--tasks 8] [--group 8] [--sft-from RUN_DIR] [--compare FIELD=VALUE]
                                 [KEY=VALUE ...]

Runs the quickstart's rollout (its model, env and rollout config, plus KEY=VALUE overrides) on the same
tasks, keys and weights with rollout.compact_rows false and true, alternating the two each step after
--warmup untimed steps (compilation: compaction compiles a decode and a prefill per row count it reaches;
programs_compiled_while_timed says whether the warm-up reached them all). --sft-from: a finished quickstart run directory (its
tokenizer and SFT checkpoint RUN_DIR/sft), so the episodes have their real lengths and turn counts (random
weights run every episode to the turn or length limit, where no row ever finishes early).

--compare FIELD=VALUE: the two sides are the rollout config as is and with that field changed (speedup =
base / changed) instead of compaction off and on.

Prints one JSON object: per side, rollout seconds per step, episodes/s, the share of time in the prompt
phase (env.reset, tokenizing, prompt prefill), decode, observation prefills and env.step, and
decode_row_utilisation = sampled tokens / (rows x decode loop steps): the part of the decode's row-steps that sampled a running episode's token (the rest is
rows of finished episodes and rows that stopped early in a turn).
"""
import argparse
import dataclasses
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, load_policy  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compaction compiles per row count)")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--sft-from", default="", help="a quickstart run dir: its tokenizer and SFT params")
    ap.add_argument("--compare", default="", metavar="FIELD=VALUE",
                    help="time the rollout config as is vs with this rollout field changed (e.g. prefill_window=32), "
                         "instead of compact_rows off vs on")
    ap.add_argument("overrides", nargs="*", help="config overrides (KEY=VALUE) on top of the quickstart")
    args = ap.parse_args(argv)

    import jax
    import numpy as np
    from hydra import compose, initialize_config_dir

    from orchestra_jax.config import to_config
    from orchestra_jax.envs import make_env
    from orchestra_jax.rl.rollout import RolloutProfile, rollout

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        raw = compose(config_name="config", overrides=[
            "+experiment=quickstart", f"run_dir={tempfile.mkdtemp()}", f"rollout.group_size={args.group}",
            *args.overrides])
    cfg = to_config(raw)
    env = make_env(cfg.env)
    tok, model_cfg, params = load_policy(cfg, env, args.sft_from)
    from orchestra_jax.model.sampling import compile_counts

    tasks = env.sample_tasks(0, args.tasks * (args.steps + args.warmup))
    if args.compare:
        field, _, value = args.compare.partition("=")
        if field not in {f.name for f in dataclasses.fields(cfg.rollout)}:
            raise SystemExit(f"--compare: rollout has no field {field!r}")
        kind = type(getattr(cfg.rollout, field))
        value = value.lower() == "true" if kind is bool else kind(value)
        sides = {"base": cfg.rollout, args.compare: dataclasses.replace(cfg.rollout, **{field: value})}
    else:
        sides = {"compact_off": dataclasses.replace(cfg.rollout, compact_rows=False),
                 "compact_on": dataclasses.replace(cfg.rollout, compact_rows=True)}
    profiles = {name: RolloutProfile() for name in sides}
    turns = {name: [] for name in sides}
    compiled = {}
    for step in range(args.steps + args.warmup):
        chunk = tasks[step * args.tasks:(step + 1) * args.tasks]
        timed = step >= args.warmup  # the warm-up steps compile (one program per row count), not counted
        if step == args.warmup:
            compiled = compile_counts()
        for name, rcfg in (sides.items() if step % 2 else reversed(sides.items())):
            profile = profiles[name] if timed else RolloutProfile()
            ro = rollout(model_cfg, params, env, tok, chunk, jax.random.PRNGKey(step), rcfg, env_seed=step,
                         profile=profile)
            if timed:
                turns[name] += ro.n_turns.tolist()
    out = {"benchmark": "rollout", "episodes_per_step": args.tasks * args.group, "steps": args.steps, "overrides": args.overrides,
           "weights": f"sft from {args.sft_from}" if args.sft_from else "random",
           "max_turns": cfg.rollout.max_turns, "max_new_tokens": cfg.rollout.max_new_tokens}
    for name in sides:
        d = profiles[name].as_dict()
        d["rollout_s_per_step"] = d["rollout_s"] / args.steps
        d["mean_turns"] = float(np.mean(turns[name]))
        out[name] = d
    out["programs_compiled_while_timed"] = {k: n - compiled.get(k, 0) for k, n in compile_counts().items()}
    first, second = list(sides)
    out["speedup_compact" if not args.compare else "speedup"] = out[first]["rollout_s"] / out[second]["rollout_s"]
    emit(out)


if __name__ == "__main__":
    main()
