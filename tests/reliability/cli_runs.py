"""The real CLI (experiments/train.py) on a micro config, as a subprocess that can be killed."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 3

# lr 1e-2 on a random start: the tiny policy never solves a task (advantages are 0), but Adam still moves
# the weights by ~lr per step, so entropy, log-prob ratios and the sampled episodes change step to step and
# any resume error (params, opt state, rng, data order) shows in the metrics.
MICRO = ["init=random", "sft.enabled=false", "eval.enabled=false", f"train.steps={STEPS}",
         "train.checkpoint_every=1", "train.wandb_mode=disabled", "train.progress_bar=false",
         "train.tasks_per_step=2", "train.num_tasks=16", "rollout.group_size=2", "rollout.max_turns=2",
         "rollout.max_new_tokens=24", "rollout.max_seq_len=512", "rollout.tools_format=compact",
         "train.row_len=1024", "tokenizer_vocab_size=512", "model.vocab_size=1024",
         "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1",
         "model.head_dim=16", "model.intermediate_size=64", "mesh=cpu", "algo.optim.lr=1e-2",
         "algo.loss.kl_coef=0.01"]

# wall-clock metrics differ between any two runs; everything else must be bit-identical
# Not the run's numbers: wall times, and programs compiled by this process (a resumed process compiles the
# row counts that row compaction reaches again; the first process had compiled some before the crash).
VOLATILE = ("time/", "throughput/", "compiles/")


def train_cli(run_dir, *extra, fault=None, timeout=600):
    """Runs the CLI to completion (or death); returns the CompletedProcess (stdout+stderr in .stdout)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("ORCHESTRA_FAULT", None)
    if fault:
        env["ORCHESTRA_FAULT"] = fault
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py"), f"run_dir={run_dir}", *MICRO, *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def metrics_by_step(run_dir) -> dict[int, dict]:
    """The last metrics line of each step (a step re-run after a crash is logged twice; the rerun wins)."""
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out[row["step"]] = {k: v for k, v in row.items() if not k.startswith(VOLATILE)}
    return out


def assert_same_run(reference_dir, resumed_dir):
    """Every step's metrics equal, exactly, and the final checkpoints hold identical arrays."""
    a, b = metrics_by_step(reference_dir), metrics_by_step(resumed_dir)
    assert sorted(b) == list(range(1, STEPS + 1)), sorted(b)
    for step in a:
        assert a[step].keys() == b[step].keys(), step
        diff = {k: (a[step][k], b[step][k]) for k in a[step] if a[step][k] != b[step][k]}
        assert not diff, (step, diff)
    import orbax.checkpoint as ocp

    states = []
    for d in (reference_dir, resumed_dir):
        with ocp.StandardCheckpointer() as ck:
            states.append(ck.restore(os.path.join(d, "checkpoints", str(STEPS), "state")))
    import jax

    la, lb = jax.tree_util.tree_leaves(states[0]), jax.tree_util.tree_leaves(states[1])
    assert len(la) == len(lb) > 10
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def complete_steps(run_dir) -> list[int]:
    d = os.path.join(run_dir, "checkpoints")
    return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []
