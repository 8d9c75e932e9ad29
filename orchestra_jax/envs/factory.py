"""ToolScale-style task factory: seeded task synthesis, teacher trajectories, pass@k filter, JSONL + grain.

Pipeline (``experiments/factory.py`` is the CLI):
1. ``synthesize_splits``: seeded tasks for every split of the env; the held-out splits ``unseen_tools``
   (tool subsets holding aliases never offered in training) and ``unseen_prices`` (price multipliers
   outside the training range) measure generalisation.
2. ``teacher_trajectories``: every scripted teacher (random, rule-based and noisy variants, see
   ``baselines``) runs k episodes per task.
3. ``pass_at_k_filter``: tasks no teacher solved are dropped; of each remaining task the most efficient
   successful trajectory is kept (lowest $ cost, then fewest turns, then teacher order).
4. Tasks and trajectories are saved as JSONL, one record a line, each with ``"schema": SCHEMA`` and
   ``"kind"``; ``read_records`` validates every line (bad line -> ValueError naming file and line) and
   ``grain_dataset`` serves the records through a grain ``MapDataset``.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import grain

from orchestra_jax.data.tasks import as_path, write_lines_atomically
from orchestra_jax.envs.base import Env
from orchestra_jax.envs.baselines import Trajectory, make_policy, rollout

SCHEMA = "orchestra_jax.factory/1"
KINDS = ("task", "trajectory")
# Default teachers: the rule-based router and a noisy variant. Keeping the *cheapest* successful trajectory
# of many samples favours cheap models that got lucky; the more (and the more random) the samples, the worse
# the routes. Replaying the kept routes on fresh episodes (QA quickstart, 600 tasks, k=4) gave 90% accuracy
# at $0.0067 with these teachers, vs 76% at $0.0025 with rule_based + rule_based_eps0.3 + random_router
# (rule_based itself: 94% at $0.0068). Add "random" / "random_router" for more diverse data.
DEFAULT_TEACHERS = ("rule_based", "rule_based_eps0.1")
TRAJECTORY_FIELDS = {"task": dict, "prompt": dict, "actions": list, "observations": list, "solved": bool,
                     "cost_usd": (int, float), "latency_s": (int, float), "n_turns": int, "end_reason": str,
                     "policy": str}


# ---------------------------------------------------------------- synthesis and teachers


def synthesize_splits(env: Env, seed: int, sizes: dict[str, int]) -> dict[str, list]:
    """{split: tasks} for the requested splits and sizes (each split seeded independently)."""
    out = {}
    for split, n in sizes.items():
        if split not in env.splits:
            raise ValueError(f"unknown split {split!r}; this env has {env.splits}")
        out[split] = env.sample_tasks(seed, n, split)
    return out


def teacher_trajectories(env: Env, tasks: Sequence, seed: int, k: int = 4,
                         teachers: Sequence[str] = DEFAULT_TEACHERS, batch_size: int = 256
                         ) -> list[list[Trajectory]]:
    """For each task, the k episodes of every teacher (k * len(teachers) trajectories, teacher-major).

    Episode ids are distinct across teachers and samples, so the k samples differ (env and policy noise).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not teachers:
        raise ValueError("teacher_trajectories: no teachers")
    tasks = list(tasks)
    per_task: list[list[Trajectory]] = [[] for _ in tasks]
    episodes = [t for t in tasks for _ in range(k)]
    for j, name in enumerate(teachers):
        policy = make_policy(name, env)
        _, trajs = rollout(env, policy, episodes, seed, batch_size=batch_size, episode_offset=j * len(episodes))
        for e, traj in enumerate(trajs):
            per_task[e // k].append(traj)
    return per_task


def _efficiency_key(t: Trajectory, order: int) -> tuple:
    return (t.cost_usd, t.n_turns, order)


def pass_at_k_filter(per_task: Sequence[Sequence[Trajectory]]) -> list[Trajectory]:
    """Keeps, for each task some trajectory solved, its most efficient successful trajectory
    (lowest $ cost, then fewest turns, then earliest); drops tasks nobody solved."""
    kept = []
    for trajs in per_task:
        solved = [(t, i) for i, t in enumerate(trajs) if t.solved]
        if solved:
            kept.append(min(solved, key=lambda ti: _efficiency_key(*ti))[0])
    return kept


def teacher_dataset(env: Env, tasks: Sequence, seed: int, k: int = 4,
                    teachers: Sequence[str] = DEFAULT_TEACHERS) -> list[Trajectory]:
    """The SFT dataset: pass@k-filtered teacher trajectories (one per solved task)."""
    return pass_at_k_filter(teacher_trajectories(env, tasks, seed, k=k, teachers=teachers))


# ---------------------------------------------------------------- JSONL


def write_records(path: str, records: Iterable[dict[str, Any]], kind: str) -> int:
    """Writes records as JSONL (atomically), each tagged with the schema and ``kind``; returns the count."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    def lines():
        for n, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise ValueError(f"{path}: record {n} is a {type(rec).__name__}, expected dict")
            yield json.dumps({"schema": SCHEMA, "kind": kind, **rec}, sort_keys=True, allow_nan=False)

    return write_lines_atomically(path, lines())


def _check_trajectory(rec: dict[str, Any], where: str) -> None:
    for key, typ in TRAJECTORY_FIELDS.items():
        if key not in rec:
            raise ValueError(f"{where}: trajectory is missing field {key!r}")
        if not isinstance(rec[key], typ) or (typ is int and isinstance(rec[key], bool)):
            raise ValueError(f"{where}: trajectory field {key!r} has type {type(rec[key]).__name__}")
    if len(rec["actions"]) != len(rec["observations"]):
        raise ValueError(f"{where}: {len(rec['actions'])} actions but {len(rec['observations'])} observations")
    if not all(isinstance(x, str) for x in rec["actions"] + rec["observations"]):
        raise ValueError(f"{where}: actions and observations must be strings")
    if not isinstance(rec["prompt"].get("messages"), list):
        raise ValueError(f"{where}: trajectory prompt has no 'messages' list")


def read_records(path: str, kind: str) -> list[dict[str, Any]]:
    """Reads and validates a factory JSONL file; any bad line raises ValueError naming file and line."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not as_path(path).exists():
        raise ValueError(f"{path}: file not found")
    out = []
    with as_path(path).open("r") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            if rec.pop("schema", None) != SCHEMA:
                raise ValueError(f"{where}: missing or unknown schema (this code reads {SCHEMA!r})")
            got = rec.pop("kind", None)
            if got != kind:
                raise ValueError(f"{where}: record kind {got!r}, expected {kind!r}")
            if kind == "trajectory":
                _check_trajectory(rec, where)
            out.append(rec)
    if not out:
        raise ValueError(f"{path}: no records")
    return out


def write_tasks(path: str, tasks: Sequence) -> int:
    return write_records(path, (t.to_dict() for t in tasks), "task")


def read_tasks(path: str, env: Env) -> list:
    """Tasks of ``env`` from a factory task file (a bad record raises ValueError naming file and line)."""
    out = []
    for lineno, rec in enumerate(read_records(path, "task"), 1):
        try:
            out.append(env.task_from_dict(rec))
        except ValueError as e:
            raise ValueError(f"{path}: record {lineno}: {e}") from None
    return out


def write_trajectories(path: str, trajectories: Sequence[Trajectory]) -> int:
    return write_records(path, (t.to_dict() for t in trajectories), "trajectory")


def read_trajectories(path: str) -> list[Trajectory]:
    return [Trajectory(**rec) for rec in read_records(path, "trajectory")]


def grain_dataset(path: str, kind: str, shuffle_seed: int | None = None) -> grain.MapDataset:
    """A grain MapDataset over the validated records of a factory file (optionally shuffled with a seed)."""
    ds = grain.MapDataset.source(read_records(path, kind))
    return ds.shuffle(seed=shuffle_seed) if shuffle_seed is not None else ds
