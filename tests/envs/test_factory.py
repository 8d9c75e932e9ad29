"""Factory: JSONL round trip through grain, pass@k filter, replayable trajectories, bad-file errors."""
import json

import numpy as np
import pytest

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs import factory
from orchestra_jax.envs.baselines import Trajectory
from orchestra_jax.envs.qa import QATask

TEACHERS = ("rule_based", "rule_based_eps0.3", "random")


@pytest.fixture(scope="module")
def env():
    return make_env(EnvConfig(preference_mode="random"))


@pytest.fixture(scope="module")
def per_task(env):
    tasks = env.sample_tasks(0, 40)
    return tasks, factory.teacher_trajectories(env, tasks, seed=3, k=2, teachers=TEACHERS)


def _traj(cost, turns, solved, policy="p"):
    return Trajectory(task={"task_id": "t"}, prompt={"messages": [], "tools": []}, actions=["a"] * turns,
                      observations=["o"] * turns, solved=solved, cost_usd=cost, latency_s=1.0, n_turns=turns,
                      end_reason="answer", policy=policy)


def test_pass_at_k_keeps_cheapest_successful_then_fewest_turns():
    a = [_traj(0.01, 1, True, "x"), _traj(0.001, 1, False, "cheap-fail"), _traj(0.005, 3, True, "y"),
         _traj(0.005, 2, True, "z"), _traj(0.005, 2, True, "z2")]
    b = [_traj(0.001, 1, False), _traj(0.002, 2, False)]
    kept = factory.pass_at_k_filter([a, b])
    assert [t.policy for t in kept] == ["z"]


def test_teacher_trajectories_and_filter_on_the_env(env, per_task):
    tasks, per = per_task
    assert len(per) == len(tasks) and all(len(ts) == 2 * len(TEACHERS) for ts in per)
    kept = factory.pass_at_k_filter(per)
    solved_tasks = [ts for ts in per if any(t.solved for t in ts)]
    assert len(kept) == len(solved_tasks) > 30
    for k, ts in zip(kept, solved_tasks):
        assert k.solved and k.task["task_id"] == ts[0].task["task_id"]
        assert k.cost_usd == min(t.cost_usd for t in ts if t.solved)
    # the samples of one teacher on one task are different episodes (distinct ids)
    ids = [t.episode_id for ts in per for t in ts]
    assert len(set(ids)) == len(ids)


def test_trajectories_replay_exactly(env, per_task):
    tasks, per = per_task
    for traj in [ts[j] for ts in per[:10] for j in (0, 3, 5)]:
        task = env.task_from_dict(traj.task)
        state, prompts = env.reset([task], traj.seed, episode_ids=[traj.episode_id])
        assert prompts[0] == traj.prompt
        for action, obs in zip(traj.actions, traj.observations):
            state, out = env.step(state, [action])
            assert out.observations[0] == obs
        assert bool(env.results(state).solved[0]) == traj.solved


def test_jsonl_round_trip_through_grain(env, per_task, tmp_path):
    tasks, per = per_task
    kept = factory.pass_at_k_filter(per)
    tp, jp = str(tmp_path / "tasks.jsonl"), str(tmp_path / "trajs.jsonl")
    assert factory.write_tasks(tp, tasks) == len(tasks)
    assert factory.write_trajectories(jp, kept) == len(kept)
    ds = factory.grain_dataset(tp, "task")
    assert [env.task_from_dict(r) for r in ds] == tasks
    assert factory.read_tasks(tp, env) == tasks
    ds = factory.grain_dataset(jp, "trajectory")
    assert len(ds) == len(kept) and [Trajectory(**r) for r in ds] == kept
    assert factory.read_trajectories(jp) == kept
    shuffled = [r["task"]["task_id"] for r in factory.grain_dataset(jp, "trajectory", shuffle_seed=1)]
    assert sorted(shuffled) == sorted(t.task["task_id"] for t in kept) and shuffled != [t.task["task_id"] for t in kept]
    first = json.loads(open(jp).readline())
    assert first["schema"] == factory.SCHEMA and first["kind"] == "trajectory"


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_bad_files_name_file_and_line(env, per_task, tmp_path):
    tasks, per = per_task
    good = str(tmp_path / "good.jsonl")
    factory.write_trajectories(good, factory.pass_at_k_filter(per)[:3])
    lines = open(good).read().splitlines()
    bad = _write_lines(tmp_path / "corrupt.jsonl", lines[:2] + ['{"schema": "orch' + "ooops"] + lines[2:])
    with pytest.raises(ValueError, match=r"corrupt\.jsonl:3: not valid JSON"):
        factory.read_trajectories(bad)
    rec = json.loads(lines[1])
    del rec["actions"]
    bad = _write_lines(tmp_path / "missing.jsonl", [lines[0], json.dumps(rec)])
    with pytest.raises(ValueError, match=r"missing\.jsonl:2: .*'actions'"):
        factory.grain_dataset(bad, "trajectory")
    rec = json.loads(lines[0])
    rec["schema"] = "other/9"
    bad = _write_lines(tmp_path / "schema.jsonl", [json.dumps(rec)])
    with pytest.raises(ValueError, match=r"schema\.jsonl:1: .*schema"):
        factory.read_trajectories(bad)
    with pytest.raises(ValueError, match=r"good\.jsonl:1: record kind 'trajectory', expected 'task'"):
        factory.read_records(good, "task")
    tp = str(tmp_path / "tasks.jsonl")
    factory.write_tasks(tp, tasks[:3])
    rec = json.loads(open(tp).read().splitlines()[1])
    rec["steps"] = "hard"
    bad = _write_lines(tmp_path / "badtask.jsonl", [json.dumps(rec)])
    with pytest.raises(ValueError, match=r"badtask\.jsonl: record 1: .*bad field value"):
        factory.read_tasks(bad, env)
    with pytest.raises(ValueError, match="not found"):
        factory.read_records(str(tmp_path / "nope.jsonl"), "task")


def test_synthesize_splits_and_teacher_dataset(env):
    splits = factory.synthesize_splits(env, 1, {"train": 20, "unseen_tools": 10})
    assert [len(v) for v in splits.values()] == [20, 10]
    assert all(isinstance(t, QATask) and t.split == s for s, ts in splits.items() for t in ts)
    with pytest.raises(ValueError, match="unknown split"):
        factory.synthesize_splits(env, 1, {"dev": 3})
    data = factory.teacher_dataset(env, splits["train"], seed=0, k=1, teachers=["rule_based"])
    assert all(t.solved and t.policy == "rule_based" for t in data) and len(data) >= 15
    assert set(data[0].to_dict()) >= set(factory.TRAJECTORY_FIELDS)
