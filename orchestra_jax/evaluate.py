"""Held-out evaluation of learned policies and the env's baselines -> table + ``<run_dir>/summary.json``.

Every policy plays the same held-out tasks with the same episode seeds, ``G`` episodes per task.

Metrics per policy (``summary["policies"][NAME]``):
  accuracy          fraction of episodes solved
  mean_cost_usd     mean $ per episode (tools + orchestrator tokens)
  mean_latency_s    mean seconds per episode
  preference_score  the env's preference-adherence score (``envs.preference_score``), mean over episodes
  mean_reward       the configured reward (cfg.reward) computed over POOLED groups: for each task the
                    episodes of all evaluated policies form one group, so every feature is normalised over
                    the same set of trajectories for all policies and the numbers are comparable across
                    policies. (Normalising within one policy's own G episodes would give a deterministic
                    policy, e.g. always_strongest, reward 0 on every task: its features are constant.)
  n_tasks           number of held-out tasks
"""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from orchestra_jax.rl.rewards import compute_rewards

SUMMARY_KEYS = ("accuracy", "mean_cost_usd", "mean_latency_s", "preference_score", "mean_reward", "n_tasks")


def pooled_rewards(reward_cfg, results: Mapping[str, "EpisodeResults"], n_tasks: int, group_size: int
                   ) -> dict[str, np.ndarray]:
    """Configured reward of every episode, normalised within the pooled group of its task.

    ``results[name]`` holds ``n_tasks * group_size`` episodes, task-major (task i = rows i*G .. i*G+G-1).
    Returns ``{name: rewards [n_tasks, group_size]}``.
    """
    names = list(results)
    per = []
    for name in names:
        r = results[name]
        expected = n_tasks * group_size
        if len(r.solved) != expected:
            raise ValueError(f"policy {name!r} has {len(r.solved)} episodes, expected {n_tasks} x {group_size}")
        F = r.features.shape[-1]
        per.append((r.features.reshape(n_tasks, group_size, F), r.solved.reshape(n_tasks, group_size),
                    r.preference.reshape(n_tasks, group_size, F)[:, 0]))
    features = np.concatenate([p[0] for p in per], axis=1)  # [n_tasks, P*G, F]
    solved = np.concatenate([p[1] for p in per], axis=1)
    preference = per[0][2]
    rewards, _, _ = compute_rewards(reward_cfg, features, solved, preference, None)
    rewards = np.asarray(rewards).reshape(n_tasks, len(names), group_size)
    return {name: rewards[:, i] for i, name in enumerate(names)}


def summarise(reward_cfg, results: Mapping[str, "EpisodeResults"], n_tasks: int, group_size: int,
              preference_score_fn: Callable | None = None) -> dict:
    """Per-policy metrics of ``results`` (task-major, ``n_tasks * group_size`` episodes each).

    ``preference_score_fn(features, solved, preference) -> float``; default ``envs.preferences.preference_score``.
    """
    if preference_score_fn is None:
        from orchestra_jax.envs.preferences import preference_score as preference_score_fn
    rewards = pooled_rewards(reward_cfg, results, n_tasks, group_size)
    policies = {}
    for name, r in results.items():
        pref = float(preference_score_fn(r.features, r.solved, r.preference))
        policies[name] = {
            "accuracy": float(np.mean(r.solved)),
            "mean_cost_usd": float(np.mean(r.cost_usd)),
            "mean_latency_s": float(np.mean(r.latency_s)),
            "preference_score": pref,
            "mean_reward": float(np.mean(rewards[name])),
            "n_tasks": int(n_tasks),
            "episodes": int(len(r.solved)),
            "mean_turns": float(np.mean(r.n_turns)),
            "invalid_turn_rate": float(np.sum(r.n_invalid) / max(np.sum(r.n_turns), 1)),
        }
    return {
        "policies": policies,
        "mean_reward_definition": (
            f"reward kind '{reward_cfg.kind}' per episode, normalised within the pooled group of all "
            f"{len(results)} policies x {group_size} episodes on the same task; mean over episodes"),
    }


def format_table(summary: dict) -> str:
    """A fixed-width table of the summary's policies."""
    head = f"{'policy':<18}{'accuracy':>9}{'cost $':>11}{'latency s':>11}{'pref':>8}{'reward':>9}{'tasks':>7}"
    lines = [head, "-" * len(head)]
    for name, m in summary["policies"].items():
        lines.append(f"{name:<18}{m['accuracy']:>9.3f}{m['mean_cost_usd']:>11.5f}{m['mean_latency_s']:>11.2f}"
                     f"{m['preference_score']:>8.3f}{m['mean_reward']:>9.4f}{m['n_tasks']:>7d}")
    return "\n".join(lines)


def write_summary(run_dir: str, summary: dict) -> str:
    """Writes ``<run_dir>/summary.json`` (atomic) and returns its path."""
    path = os.path.join(run_dir, "summary.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True, allow_nan=True)
    os.replace(tmp, path)
    return path


def check_summary(summary: dict, names: Sequence[str]) -> None:
    """Raises ValueError naming the first missing policy or key of a summary."""
    pols = summary.get("policies")
    if not isinstance(pols, dict):
        raise ValueError("summary has no 'policies' dict")
    for n in names:
        if n not in pols:
            raise ValueError(f"summary lacks policy {n!r}")
        for k in SUMMARY_KEYS:
            if k not in pols[n]:
                raise ValueError(f"summary policy {n!r} lacks {k!r}")


# --------------------------------------------------------------------------- running the policies
# Every policy, learned or scripted, plays the same episodes: task i of the held-out set, episode
# i * G + g, env seed eval.seed (envs' episode randomness depends only on (seed, episode id)).
BASELINE_NAMES = ("always_strongest", "cheapest", "random", "rule_based")


def episode_plan(num_tasks: int, group_size: int) -> list[int]:
    """Episode ids of a task-major evaluation: task i's episodes are i * G .. i * G + G - 1."""
    return [i * group_size + g for i in range(num_tasks) for g in range(group_size)]


def _take(results, n: int):
    """The first n episodes of an EpisodeResults (drops the padding episodes of a last, short batch)."""
    import dataclasses

    return type(results)(**{f.name: (getattr(results, f.name) if f.name == "feature_names"
                                     else getattr(results, f.name)[:n]) for f in dataclasses.fields(results)})


def policy_results(cfg, env, tokenizer, model_cfg, params, tasks):
    """EpisodeResults of a learned policy (process-local params) on ``tasks``, eval.group_size episodes each.

    Rollout batches hold eval.batch_size episodes (default: a training step's), the last one padded with
    repeats, so the sampler's compiled functions are reused; episode ids and env seed follow episode_plan."""
    import dataclasses

    import jax

    from orchestra_jax.envs.base import EpisodeResults
    from orchestra_jax.rl.rollout import rollout

    e, G = cfg.eval, cfg.eval.group_size
    ro_cfg = dataclasses.replace(cfg.rollout, group_size=G,
                                 sampling=dataclasses.replace(cfg.rollout.sampling, greedy=e.greedy))
    episodes = e.batch_size or cfg.train.tasks_per_step * cfg.rollout.group_size
    per_batch = max(1, episodes // G)
    ids = episode_plan(len(tasks), G)
    parts, key = [], jax.random.PRNGKey(e.seed)
    for start in range(0, len(tasks), per_batch):
        chunk = list(tasks[start:start + per_batch])
        n_real = len(chunk)
        chunk_ids = ids[start * G:(start + n_real) * G]
        pad = per_batch - n_real  # repeats of the first task with unused episode ids, dropped below
        chunk += [chunk[0]] * pad
        chunk_ids += [len(ids) + start * G + j for j in range(pad * G)]
        ro = rollout(model_cfg, params, env, tokenizer, chunk, jax.random.fold_in(key, start), ro_cfg,
                     env_seed=e.seed, episode_ids=chunk_ids)
        parts.append(_take(ro.results, n_real * G))
    return EpisodeResults.concatenate(parts)


def baseline_results(cfg, env, tasks, name: str):
    """EpisodeResults of an env baseline on the same tasks and episodes (episode_plan, env seed eval.seed)."""
    from orchestra_jax.envs.baselines import make_policy, run_policy

    episode_tasks = [t for t in tasks for _ in range(cfg.eval.group_size)]
    return run_policy(env, make_policy(name, env), episode_tasks, seed=cfg.eval.seed)


def evaluate_policies(cfg, env, tokenizer, model_cfg, learned: dict, start_policy: str | None = None) -> dict:
    """Evaluates ``learned`` ({name: process-local params}) and the env baselines on held-out tasks; process 0
    writes summary.json. Every process evaluates the same episodes (their summaries are identical)."""
    import jax

    e = cfg.eval
    tasks = env.sample_tasks(e.seed, e.num_tasks, split=e.split)
    results = {name: policy_results(cfg, env, tokenizer, model_cfg, p, tasks) for name, p in learned.items()}
    for name in BASELINE_NAMES:
        results[name] = baseline_results(cfg, env, tasks, name)
    summary = summarise(cfg.reward, results, len(tasks), e.group_size)
    summary["eval"] = {"split": e.split, "num_tasks": e.num_tasks, "group_size": e.group_size, "greedy": e.greedy,
                       "seed": e.seed}
    if start_policy is not None:  # what GRPO started from: sft, random or pretrained
        summary["eval"]["start_policy"] = start_policy
    if jax.process_index() == 0:
        write_summary(cfg.run_dir, summary)
    return summary


def evaluate_run(cfg) -> dict:
    """Evaluates the latest GRPO checkpoint of an existing run_dir and its start (experiments/evaluate.py)."""
    import jax

    from orchestra_jax.checkpoint import Checkpointer
    from orchestra_jax.train import build_mesh, make_setup, restore_state, start_policy, state_to_local

    from etils import epath

    ckpt_dir = str(epath.Path(cfg.run_dir) / "checkpoints")
    ck = Checkpointer(ckpt_dir, keep=cfg.train.checkpoint_keep, async_save=False)
    if ck.latest_step() is None:
        raise ValueError(f"no GRPO checkpoint in {ckpt_dir}: train first (experiments/train.py run_dir={cfg.run_dir})")
    from orchestra_jax.prepare import prepare

    mesh = build_mesh(cfg)
    prep = prepare(cfg)
    setup = make_setup(cfg, prep, mesh)
    start, start_name, start_local = start_policy(cfg, prep, setup)
    state, _ = restore_state(ck, setup, start)
    ck.close()
    summary = evaluate_policies(cfg, prep.env, prep.tokenizer, prep.model_cfg,
                                {"grpo": state_to_local(state, mesh), start_name: start_local},
                                start_policy=start_name)
    summary["eval"]["grpo_step"] = int(state.step)
    if jax.process_index() == 0:
        write_summary(cfg.run_dir, summary)
        print(format_table(summary))
        print(f"summary: {cfg.run_dir}/summary.json (GRPO step {int(state.step)})")
    return summary
