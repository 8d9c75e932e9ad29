"""Held-out evaluation of learned policies and the env's baselines -> table + ``<run_dir>/summary.json``.

Every policy plays the same held-out tasks with the same episode seeds, ``G`` episodes per task. What the
summary holds, and how its metrics are defined, is ``orchestra_jax.summary``.
"""
from __future__ import annotations

import json

from orchestra_jax.summary import format_table, summarise_splits, write_summary


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


def split_results(cfg, env, tokenizer, model_cfg, learned: dict, tasks) -> dict:
    """{policy: EpisodeResults} of the learned policies and every baseline on ``tasks`` through ``env``
    (the same episode plan and env seed for all)."""
    results = {name: policy_results(cfg, env, tokenizer, model_cfg, p, tasks) for name, p in learned.items()}
    for name in BASELINE_NAMES:
        results[name] = baseline_results(cfg, env, tasks, name)
    return results


def reference_split(split: str, n_tasks: int) -> str:
    """Name of the primary split's first ``n_tasks`` tasks (what the robustness splits are compared with)."""
    return f"{split}[:{n_tasks}]"


def evaluation_plan(cfg) -> list[tuple[str, str, str | None]]:
    """(name, env split, robustness perturbation or None) of every evaluated split, the primary one first:
    eval.split (eval.num_tasks tasks), then eval.splits (the first eval.split_tasks of each), then each
    eval.robustness wrapper on the first eval.robustness_tasks of the primary split's tasks."""
    e = cfg.eval
    plan = [(e.split, e.split, None)] + [(s, s, None) for s in e.splits if s != e.split]
    return plan + [(r, e.split, r) for r in e.robustness]


def reevaluation_name(cfg) -> str | None:
    """None when ``cfg`` equals the run's recorded config (config.yaml) or there is none; else the differing
    keys as ``k=v,...`` (file-name safe): a re-evaluation with other settings goes to summary-<name>.json."""
    import re

    from orchestra_jax.config import to_dict
    from orchestra_jax.run_dir import config_diff, read_record

    record = read_record(cfg.run_dir)
    if record is None:
        return None
    diff = {k: v for k, v in config_diff(record, json.loads(json.dumps(to_dict(cfg), default=str))).items()
            if not k.startswith(("train.wandb_", "train.progress_bar"))}   # display-only keys
    if not diff:
        return None
    return re.sub(r"[^\w.=,+-]", "_", ",".join(f"{k}={v}" for k, (_, v) in sorted(diff.items())))[:120]


def evaluate_policies(cfg, env, tokenizer, model_cfg, learned: dict, start_policy: str | None = None,
                      summary_name: str | None = None) -> dict:
    """Evaluates ``learned`` ({name: process-local params}) and the env baselines on held-out tasks of every
    split of ``evaluation_plan``; process 0 writes summary.json. Every policy plays the same episodes in a
    split; every process evaluates the same episodes (their summaries are identical)."""
    import jax

    from orchestra_jax.analysis.robustness import ROBUSTNESS_SPLITS, PerturbedEnv

    e = cfg.eval
    by_split, tasks_of = {}, {}
    for name, split, perturbation in evaluation_plan(cfg):
        if split not in tasks_of:
            tasks_of[split] = env.sample_tasks(e.seed, e.num_tasks, split=split)
        tasks, split_env = tasks_of[split], env
        if perturbation is not None:
            tasks = tasks[:e.robustness_tasks or len(tasks)]
            split_env = PerturbedEnv(env, ROBUSTNESS_SPLITS[perturbation])
        elif name != e.split:
            tasks = tasks[:e.split_tasks or len(tasks)]
        by_split[name] = split_results(cfg, split_env, tokenizer, model_cfg, learned, tasks)
    n_rob = min(e.robustness_tasks or e.num_tasks, len(tasks_of[e.split]))
    if e.robustness and n_rob < len(tasks_of[e.split]):  # the unperturbed reference on the same tasks
        by_split[reference_split(e.split, n_rob)] = {k: _take(r, n_rob * e.group_size)
                                                     for k, r in by_split[e.split].items()}
    summary = summarise_splits(cfg.reward, by_split, e.group_size, primary=e.split)
    summary["eval"] = {"split": e.split, "splits": list(by_split), "num_tasks": e.num_tasks,
                       "split_tasks": e.split_tasks, "robustness_tasks": e.robustness_tasks, "group_size": e.group_size, "greedy": e.greedy,
                       "seed": e.seed}
    if start_policy is not None:  # what GRPO started from: sft, random or pretrained
        summary["eval"]["start_policy"] = start_policy
    if jax.process_index() == 0:
        write_summary(cfg.run_dir, summary, summary_name)
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

    name = reevaluation_name(cfg)
    mesh = build_mesh(cfg)
    prep = prepare(cfg, record=False)  # the run's config.yaml stays as training wrote it
    setup = make_setup(cfg, prep, mesh)
    start, start_name, start_local = start_policy(cfg, prep, setup)
    state, _ = restore_state(ck, setup, start)
    ck.close()
    summary = evaluate_policies(cfg, prep.env, prep.tokenizer, prep.model_cfg,
                                {"grpo": state_to_local(state, mesh), start_name: start_local},
                                start_policy=start_name, summary_name=name)
    summary["eval"]["grpo_step"] = int(state.step)
    if jax.process_index() == 0:
        path = write_summary(cfg.run_dir, summary, name)
        print(format_table(summary))
        print(f"summary: {path} (GRPO step {int(state.step)})")
    return summary
