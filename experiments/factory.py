"""Task factory CLI: seeded tasks for every split, teacher trajectories, pass@k filter, JSONL out.

    python experiments/factory.py --out data/qa_quickstart               # conf/env/qa_quickstart.yaml
    python experiments/factory.py --env qa --out data/qa --train 4000 --eval 500 --k 4 \
        --teachers rule_based rule_based_eps0.1 random_router random

Writes <out>/tasks_<split>.jsonl for train, val, test, unseen_tools, unseen_prices, and
<out>/sft_trajectories.jsonl (the most efficient successful teacher trajectory per solved train task),
then reads everything back through grain and prints counts, teacher success rates and mean $ cost.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from experiments.env_stats import load_env_config  # noqa: E402
from orchestra_jax.envs import make_env  # noqa: E402
from orchestra_jax.envs import factory  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="qa_quickstart", help="conf/env/<name>.yaml or a YAML path")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="env config overrides")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=1000, help="train tasks (teachers run on these)")
    ap.add_argument("--eval", type=int, default=200, help="tasks in each of the other splits")
    ap.add_argument("--k", type=int, default=4, help="episodes per teacher per task (pass@k)")
    ap.add_argument("--teachers", nargs="+", default=list(factory.DEFAULT_TEACHERS))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        env = make_env(load_env_config(args.env, args.set))
        sizes = {s: (args.train if s == "train" else args.eval) for s in env.splits}
        splits = factory.synthesize_splits(env, args.seed, sizes)
        for split, tasks in splits.items():
            factory.write_tasks(os.path.join(args.out, f"tasks_{split}.jsonl"), tasks)
        per_task = factory.teacher_trajectories(env, splits["train"], args.seed, k=args.k, teachers=args.teachers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kept = factory.pass_at_k_filter(per_task)
    traj_path = os.path.join(args.out, "sft_trajectories.jsonl")
    factory.write_trajectories(traj_path, kept)

    print(f"env {args.env}: seed {args.seed}, k={args.k}, teachers {args.teachers}")
    for split in splits:
        ds = factory.grain_dataset(os.path.join(args.out, f"tasks_{split}.jsonl"), "task")
        print(f"  tasks_{split}.jsonl: {len(ds)} tasks")
    for j, name in enumerate(args.teachers):
        trajs = [t for ts in per_task for t in ts[j * args.k:(j + 1) * args.k]]
        print(f"  teacher {name:22s} success {100 * np.mean([t.solved for t in trajs]):5.1f}%  "
              f"mean $ {np.mean([t.cost_usd for t in trajs]):.5f}  turns {np.mean([t.n_turns for t in trajs]):.2f}")
    ds = factory.grain_dataset(traj_path, "trajectory")
    by = {}
    for rec in ds:
        by[rec["policy"]] = by.get(rec["policy"], 0) + 1
    print(f"  pass@{args.k * len(args.teachers)}: kept {len(ds)} of {len(per_task)} train tasks "
          f"({100 * len(ds) / max(1, len(per_task)):.1f}%), mean $ {np.mean([t.cost_usd for t in kept]):.5f}, "
          f"turns {np.mean([t.n_turns for t in kept]):.2f}; by teacher {by}")
    print(f"  wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
