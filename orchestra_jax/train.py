"""The main job: tokenizer -> SFT warm start -> GRPO -> held-out evaluation, all inside ``cfg.run_dir``.

Run directory layout::

    <run_dir>/config.yaml            resolved config of the run
    <run_dir>/tokenizer/             tokenizer.json (trained on the env's own text unless cfg.tokenizer)
    <run_dir>/data/*.jsonl           training / held-out tasks, SFT teacher trajectories
    <run_dir>/sft/                   SFT checkpoint (the GRPO start; skipped when it exists)
    <run_dir>/checkpoints/<step>/    GRPO checkpoints (params, opt state, reference, rng, reward state, data iterator)
    <run_dir>/metrics.jsonl          one JSON line per GRPO step; sft_metrics.jsonl for SFT
    <run_dir>/samples.jsonl          sample trajectories (also a wandb table)
    <run_dir>/wandb/                 offline wandb run (`wandb sync` it to compare runs online)
    <run_dir>/summary.json           held-out evaluation of grpo, sft and the env's baselines

One GRPO step: a batch of tasks from the grain iterator -> G rollouts per task -> rewards -> group
advantages (zero-variance groups counted, filtered if configured) -> per-token fields -> pack ->
old log-probs (recomputed once, fixed over algo.ppo_epochs) and reference log-probs -> update(s) ->
metrics -> checkpoint. Rerunning with the same run_dir resumes from the last checkpoint and reproduces
the uninterrupted run exactly (data order, rng, reward state and parameters are all restored).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from orchestra_jax.checkpoint import Checkpointer, latest_step_in
from orchestra_jax.config import Config, to_dict
from orchestra_jax.data.packing import pack
from orchestra_jax.divergence import DivergenceBounds, DivergenceMonitor
from orchestra_jax.faults import maybe_fault
from orchestra_jax.data.tasks import read_jsonl, read_trajectories, task_iterator, write_jsonl
from orchestra_jax.logging import RunLogger
from orchestra_jax.model import ModelConfig, init_params
from orchestra_jax.parallel.distributed import initialize as initialize_distributed
from orchestra_jax.rl.advantages import group_advantages
from orchestra_jax.rl.optim import make_optimizer
from orchestra_jax.rl.rewards import compute_rewards, init_reward_state
from orchestra_jax.preemption import Preempted, PreemptionGuard
from orchestra_jax.rl.step import make_update_fn, token_logprobs
from orchestra_jax.run_dir import check_resume

CONSOLE_KEYS = ("reward/mean", "reward/preference_score", "rollout/accuracy", "rollout/cost_usd", "loss")


# ----------------------------------------------------------------------------------------------- helpers
def step_seed(seed: int, step: int, stream: int) -> int:
    """A per-step, per-stream integer seed (env episodes, host-side sampling) independent of history."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0] % (2**31 - 1))


def round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def _save_config(cfg: Config) -> None:
    """Records the config; a run_dir made with a different training config is refused (run_dir.check_resume)."""
    check_resume(cfg.run_dir, to_dict(cfg), allow_change=cfg.train.allow_config_change,
                 write=jax.process_index() == 0)


# ------------------------------------------------------------------------------------------------ stages
def prepare_tokenizer(cfg: Config, env, texts_fn):
    """The run's tokenizer: ``cfg.tokenizer`` if given, else the one in ``<run_dir>/tokenizer``, else a BPE
    trained deterministically on ``texts_fn()`` (the env's own text) and saved there."""
    from orchestra_jax.text.tokenizer import load_tokenizer, train_tokenizer

    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    folder = os.path.join(cfg.run_dir, "tokenizer")
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return load_tokenizer(folder)
    tok = train_tokenizer(texts_fn(), vocab_size=cfg.tokenizer_vocab_size)
    tok.save(folder)
    return tok


def init_model(cfg: Config, tokenizer) -> tuple[ModelConfig, Any]:
    """(model_cfg, params) the run starts from before SFT: random init, or a local HF checkpoint."""
    if cfg.init.startswith("hf:"):
        from orchestra_jax.model.hf import load_hf_checkpoint

        model_cfg, params = load_hf_checkpoint(cfg.init[3:])
        if model_cfg.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"init {cfg.init}: checkpoint vocab {model_cfg.vocab_size} < tokenizer vocab "
                             f"{tokenizer.vocab_size}")
        return model_cfg, params
    model_cfg = cfg.model
    if model_cfg.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"config error at model.vocab_size: {model_cfg.vocab_size} < tokenizer vocab "
                         f"{tokenizer.vocab_size} ({tokenizer.source})")
    # jitted: eager flax init dispatches hundreds of small ops (tens of seconds on a busy CPU)
    return model_cfg, jax.jit(init_params, static_argnums=0)(model_cfg, jax.random.PRNGKey(cfg.train.seed))


def _update_fns(cfg: Config, model_cfg: ModelConfig):
    """(update, logprob_fn, place_params, init_opt_state) for the configured mesh: the plain jitted
    functions on one device, the sharded ones from orchestra_jax.parallel when the mesh has > 1 device."""
    optimizer = make_optimizer(cfg.algo.optim)
    sizes = [s for s in cfg.mesh.axis_sizes()]
    n_devices = jax.device_count() if -1 in sizes else int(np.prod(sizes))
    if n_devices <= 1:
        update = make_update_fn(model_cfg, cfg.algo, optimizer)
        logp_jit = jax.jit(lambda p, t, pos, seg: token_logprobs(model_cfg, p, t, pos, seg))

        def logprob_fn(params, batch):
            return logp_jit(params, batch["tokens"], batch["positions"], batch["segment_ids"])

        return update, logprob_fn, (lambda p: p), optimizer.init, 1
    from orchestra_jax.parallel import make_mesh, make_rules, make_sharded_logprob_fn, make_sharded_update_fn
    from orchestra_jax.parallel.sharding import batch_row_multiple

    devices = None if -1 in sizes else jax.devices()[:n_devices]
    mesh = make_mesh(cfg.mesh, devices)
    rules = make_rules(cfg.mesh)
    sharded = make_sharded_update_fn(model_cfg, cfg.algo, optimizer, mesh, rules)
    logprob_fn = make_sharded_logprob_fn(model_cfg, mesh, rules)
    return sharded, logprob_fn, sharded.shard_params, sharded.init_opt_state, batch_row_multiple(mesh, rules)


def build_batch(ro, advantages_gG: np.ndarray, keep_gG: np.ndarray, row_len: int, rows_multiple: int):
    """Packed GRPO batch of the kept episodes: loss_mask = assistant mask, advantages broadcast per token.

    Returns (PackedBatch or None if nothing is kept, indices of the kept episodes)."""
    adv = np.asarray(advantages_gG, np.float32).reshape(-1)
    keep = np.asarray(keep_gG, bool).reshape(-1) & (ro.lengths > 1)
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        return None, idx
    seqs = [ro.tokens[i] for i in idx]
    masks = [ro.assistant_mask[i].astype(np.float32) for i in idx]
    advs = [np.full(len(ro.tokens[i]), adv[i], np.float32) for i in idx]
    fields = {"loss_mask": masks, "advantages": advs}
    packed = pack(seqs, row_len, fields=fields, truncate=True)
    rows = round_up(packed.num_rows, rows_multiple)
    if rows != packed.num_rows:
        packed = pack(seqs, row_len, fields=fields, num_rows=rows, truncate=True)
    return packed, idx


def rollout_metrics(ro, env) -> dict[str, float]:
    """Accuracy, $ cost, latency, turns, calls per tool, validity and end reasons of a rollout batch."""
    res = ro.results
    n_tools = len(env.tool_aliases)
    m = {
        "rollout/accuracy": float(np.mean(res.solved)),
        "rollout/cost_usd": float(np.mean(res.cost_usd)),
        "rollout/latency_s": float(np.mean(res.latency_s)),
        "rollout/turns": float(np.mean(ro.n_turns)),
        "rollout/invalid_turn_rate": float(np.sum(res.n_invalid) / max(int(np.sum(ro.n_turns)), 1)),
        "rollout/tokens_per_episode": float(np.mean(ro.lengths)),
        "rollout/sampled_tokens": float(np.sum(ro.turn_new_tokens)),
    }
    from orchestra_jax.envs.preferences import preference_score

    # comparable across steps (fixed scales), unlike the group-normalised training reward whose batch mean
    # falls when more groups solve every episode (a constant outcome feature normalises to 0)
    m["reward/preference_score"] = float(preference_score(res.features, res.solved, res.preference))
    calls = np.asarray(res.features)[:, :n_tools]
    for j, alias in enumerate(env.tool_aliases):
        m[f"calls/{alias}"] = float(np.mean(calls[:, j]))
    for reason in sorted(set(ro.done_reason)):
        m[f"done/{reason}"] = float(np.mean([r == reason for r in ro.done_reason]))
    return m


def sample_rows(ro, tokenizer, rewards_gG, step: int, n: int) -> list[list]:
    """Rows (task_id, episode, solved, reward, cost, turns, transcript) of the first n episodes."""
    rewards = np.asarray(rewards_gG).reshape(-1)
    rows = []
    for i in range(min(n, ro.num_episodes)):
        transcript = tokenizer.decode(ro.tokens[i][int(ro.prompt_len[i]):].tolist())
        rows.append([ro.results.task_ids[i], i, bool(ro.results.solved[i]), float(rewards[i]),
                     float(ro.results.cost_usd[i]), int(ro.n_turns[i]), transcript[:2000]])
    return rows


SAMPLE_COLUMNS = ["task_id", "episode", "solved", "reward", "cost_usd", "turns", "transcript"]


def train_grpo(cfg: Config, env, tokenizer, model_cfg: ModelConfig, start_params, train_tasks_path: str,
               logger: RunLogger | None = None):
    """The GRPO loop over ``cfg.train.steps`` steps, resuming from ``<run_dir>/checkpoints`` if present.

    Returns (final params, list of the per-step metric dicts of this invocation).
    """
    from orchestra_jax.rl.rollout import rollout

    t, algo = cfg.train, cfg.algo
    update, logprob_fn, place_params, init_opt_state, row_multiple = _update_fns(cfg, model_cfg)
    rows_multiple = int(np.lcm.reduce([t.rows_multiple, algo.micro_batches, row_multiple]))
    needs_ref = algo.loss.kl_coef != 0.0

    params = place_params(jax.tree_util.tree_map(jnp.copy, start_params))  # the sharded update donates its inputs
    state = {
        "params": params,
        "opt_state": init_opt_state(params),
        "rng": jax.random.PRNGKey(t.seed + 1),
        "step": jnp.zeros((), jnp.int32),
        "reward_state": init_reward_state(),
    }
    if needs_ref:
        state["ref_params"] = jax.tree_util.tree_map(jnp.copy, params)
    ckpt = Checkpointer(os.path.join(cfg.run_dir, "checkpoints"), keep=t.checkpoint_keep,
                        async_save=t.async_checkpoint, save_every=t.checkpoint_every)
    monitor = DivergenceMonitor(DivergenceBounds(t.max_consecutive_skips, t.alert_kl_max, t.alert_entropy_min,
                                                 t.alert_entropy_max))
    guard = PreemptionGuard().__enter__()
    data_state = None
    if ckpt.latest_step() is not None:
        state, data_state = ckpt.restore(None, state)
        # host-side small leaves back to uncommitted arrays (as freshly created ones are), so they mix
        # with params on any mesh
        for k in ("rng", "step", "reward_state"):
            state[k] = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)), state[k])
    start_step = int(state["step"])
    tasks_it = task_iterator(train_tasks_path, t.tasks_per_step, t.seed, state=data_state or None,
                             shard_index=jax.process_index(), shard_count=jax.process_count())
    own_logger = logger is None
    if own_logger:
        logger = make_logger(cfg, start_step)
    if start_step:
        logger.write(f"resumed GRPO from {ckpt.directory}/{start_step}")
    history = []
    for step in range(start_step + 1, t.steps + 1):
        t0 = time.perf_counter()
        records = next(tasks_it)
        tasks = env.tasks_from_dicts(records)
        rng, roll_key = jax.random.split(state["rng"])
        ro = rollout(model_cfg, state["params"], env, tokenizer, tasks, roll_key, cfg.rollout,
                     env_seed=step_seed(t.seed, step, 1))
        t_roll = time.perf_counter() - t0
        maybe_fault("rollout", step)
        rewards, reward_state, reward_m = compute_rewards(cfg.reward, ro.features, ro.solved, ro.preference,
                                                          state["reward_state"])
        adv, keep, adv_m = group_advantages(np.asarray(rewards), algo.advantage)
        packed, kept = build_batch(ro, np.asarray(adv), np.asarray(keep), t.row_len, rows_multiple)
        metrics = {**{k: float(v) for k, v in reward_m.items()}, **{k: float(v) for k, v in adv_m.items()},
                   **rollout_metrics(ro, env)}
        t1 = time.perf_counter()
        params, opt_state = state["params"], state["opt_state"]
        if packed is not None:
            batch = {k: jnp.asarray(v) for k, v in packed.as_dict().items()}
            old_logp, _ = logprob_fn(params, batch)
            batch["old_logp"] = old_logp
            if needs_ref:
                batch["ref_logp"], _ = logprob_fn(state["ref_params"], batch)
            if algo.micro_batches > 1:
                from orchestra_jax.rl.step import split_micro_batches

                batch = split_micro_batches({k: np.asarray(v) for k, v in batch.items()}, algo.micro_batches)
            upd_ms = []
            for _ in range(algo.ppo_epochs):
                params, opt_state, upd_m = update(params, opt_state, batch)
                upd_ms.append(upd_m)
            upd_m = {k: float(np.mean([float(m[k]) for m in jax.device_get(upd_ms)])) for k in upd_ms[0]}
            metrics.update(upd_m)
            metrics["packing/utilisation"] = float(packed.utilisation)
            metrics["packing/rows"] = float(packed.num_rows)
            metrics["update/tokens"] = float(packed.num_tokens)
        else:
            metrics["update/skipped_no_data"] = 1.0
        t_upd = time.perf_counter() - t1
        maybe_fault("update", step)
        new_state = {"params": params, "opt_state": opt_state, "rng": rng,
                     "step": jnp.asarray(step, jnp.int32), "reward_state": reward_state}
        if needs_ref:
            refresh = algo.ref_refresh_interval and step % algo.ref_refresh_interval == 0
            new_state["ref_params"] = jax.tree_util.tree_map(jnp.copy, params) if refresh else state["ref_params"]
        state = new_state
        dt = time.perf_counter() - t0
        metrics.update({
            "time/step_s": dt, "time/rollout_s": t_roll, "time/update_s": t_upd,
            "throughput/rollout_tokens_per_s": metrics["rollout/sampled_tokens"] / max(t_roll, 1e-9),
            "throughput/update_tokens_per_s": metrics.get("update/tokens", 0.0) * algo.ppo_epochs / max(t_upd, 1e-9),
        })
        try:
            metrics.update(monitor.observe(step, metrics))  # N skipped updates in a row: stop before saving
        except Exception:
            guard.__exit__()
            ckpt.close()
            raise
        if step % t.log_every == 0 or step == t.steps:
            logger.log(step, metrics)
        if t.samples_every and (step % t.samples_every == 0 or step == t.steps):
            logger.log_table(step, "samples", SAMPLE_COLUMNS,
                             sample_rows(ro, tokenizer, rewards, step, t.num_samples))
        history.append({"step": step, **metrics})
        stop = guard.stop_requested() or ckpt.reached_preemption(step)
        ckpt.save(step, state, tasks_it.get_state(), force=stop or step == t.steps)
        maybe_fault("save", step)
        if stop:
            guard.__exit__()
            ckpt.close()
            err = Preempted(guard.signum or 15, step, ckpt.step_path(step))
            logger.write(str(err))
            if own_logger:
                logger.close()
            raise err
    guard.__exit__()
    ckpt.close()
    if own_logger:
        logger.close()
    return state["params"], history


def make_logger(cfg: Config, initial_step: int, desc: str = "grpo") -> RunLogger:
    t = cfg.train
    return RunLogger(cfg.run_dir, config=to_dict(cfg), wandb_mode=t.wandb_mode, wandb_project=t.wandb_project,
                     wandb_name=t.wandb_name, wandb_group=t.wandb_group, total_steps=t.steps,
                     initial_step=initial_step, desc=desc, console_keys=CONSOLE_KEYS,
                     progress_bar=t.progress_bar)


# ------------------------------------------------------------------------------------------- SFT stage
def teacher_trajectories(cfg: Config, env) -> list[dict]:
    """The SFT dataset: pass@k-filtered teacher trajectories on ``sft.num_tasks`` training tasks, cached as
    ``<run_dir>/data/sft_trajectories.jsonl`` (dicts with prompt, actions, observations)."""
    path = os.path.join(cfg.run_dir, "data", "sft_trajectories.jsonl")
    if os.path.exists(path):
        return read_trajectories(path)
    tasks = env.sample_tasks(cfg.sft.seed + 10_000, cfg.sft.num_tasks, split="train")
    records = pass_at_k_teacher_data(env, tasks, seed=cfg.sft.seed, k=cfg.sft.teacher_samples,
                                     teachers=cfg.sft.teachers)
    write_jsonl(path, records)
    return records


def pass_at_k_teacher_data(env, tasks, seed: int, k: int, teachers) -> list[dict]:
    """k episodes of every teacher on every task (scripted routers from envs.baselines, seeded); per task the
    solved trajectory with the lowest $ cost (then fewest turns) is kept, tasks nobody solves are dropped."""
    from orchestra_jax.envs.baselines import make_policy, rollout as scripted_rollout

    best: dict[int, tuple] = {}
    for t_i, name in enumerate(teachers):
        for rep in range(k):
            _, trajs = scripted_rollout(env, make_policy(name, env), tasks, seed=seed * 1000 + t_i * 100 + rep)
            for i, tr in enumerate(trajs):
                if tr.solved:
                    key = (tr.cost_usd, tr.n_turns)
                    if i not in best or key < best[i][0]:
                        best[i] = (key, tr)
    return [best[i][1].to_dict() for i in sorted(best)]


def _as_sft_trajectory(rec: dict):
    from orchestra_jax.sft import Trajectory

    prompt = rec["prompt"]
    return Trajectory(messages=tuple(prompt["messages"]), tools=tuple(prompt.get("tools") or ()),
                      actions=tuple(rec["actions"]), observations=tuple(rec["observations"]))


def run_sft(cfg: Config, model_cfg: ModelConfig, params, tokenizer, records: list[dict]):
    """Behaviour cloning from ``params``; saves and returns the params (``<run_dir>/sft`` checkpoint).
    If that checkpoint exists it is restored instead (the stage is skipped)."""
    from orchestra_jax.sft import encode_trajectory, train_sft

    ckpt = Checkpointer(os.path.join(cfg.run_dir, "sft"), keep=1, async_save=False)
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(None, {"params": params})
        ckpt.close()
        return state["params"], True
    s = cfg.sft
    seqs = [encode_trajectory(tokenizer, _as_sft_trajectory(r), compact_tools=cfg.rollout.compact_tools)
            for r in records]
    path = os.path.join(cfg.run_dir, "sft_metrics.jsonl")
    if os.path.exists(path):
        os.remove(path)
    bar = None
    if cfg.train.progress_bar and jax.process_index() == 0:
        from tqdm.auto import tqdm
        import sys

        bar = tqdm(total=s.steps, desc="sft", file=sys.stdout, dynamic_ncols=True)

    def log_fn(step, m):
        if jax.process_index() != 0:
            return
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, **m}) + "\n")
        if bar is not None:
            bar.n = step
            bar.set_postfix(loss=f"{m['sft/loss']:.3f}", p=f"{m['sft/mean_token_prob']:.3f}")
            bar.refresh()

    params, _ = train_sft(model_cfg, params, seqs, steps=s.steps, batch_rows=s.batch_rows, row_len=s.row_len,
                          learning_rate=s.learning_rate, warmup_steps=s.warmup_steps,
                          weight_decay=s.weight_decay, grad_clip=s.grad_clip, seed=s.seed, log_fn=log_fn,
                          log_every=s.log_every)
    if bar is not None:
        bar.close()
    ckpt.save(s.steps, {"params": params})
    ckpt.close()
    return params, False


# ------------------------------------------------------------------------------------------ evaluation
BASELINE_NAMES = ("always_strongest", "cheapest", "random", "rule_based")


def _take(results, n: int):
    """The first n episodes of an EpisodeResults (drops the padding episodes of a last, short batch)."""
    out = {}
    for f in dataclasses.fields(results):
        v = getattr(results, f.name)
        out[f.name] = v if f.name == "feature_names" else v[:n]
    return type(results)(**out)


def policy_results(cfg: Config, env, tokenizer, model_cfg: ModelConfig, params, tasks):
    """EpisodeResults of a learned policy on ``tasks`` (eval.group_size episodes each, task-major).

    Rollout batches have as many episodes as a training step (tasks_per_step x rollout.group_size), the last
    one padded with repeats, so the sampler's compiled functions are reused."""
    from orchestra_jax.rl.rollout import rollout
    from orchestra_jax.envs.base import EpisodeResults

    e = cfg.eval
    ro_cfg = dataclasses.replace(cfg.rollout, group_size=e.group_size,
                                 sampling=dataclasses.replace(cfg.rollout.sampling, greedy=e.greedy))
    episodes = e.batch_size or cfg.train.tasks_per_step * cfg.rollout.group_size
    per_batch = max(1, episodes // e.group_size)
    parts = []
    key = jax.random.PRNGKey(e.seed)
    for start in range(0, len(tasks), per_batch):
        chunk = list(tasks[start:start + per_batch])
        n_real = len(chunk)
        chunk += [chunk[0]] * (per_batch - n_real)
        ro = rollout(model_cfg, params, env, tokenizer, chunk, jax.random.fold_in(key, start), ro_cfg,
                     env_seed=step_seed(e.seed, start, 2))
        parts.append(_take(ro.results, n_real * e.group_size))
    return EpisodeResults.concatenate(parts)


def baseline_results(cfg: Config, env, tasks, name: str):
    """EpisodeResults of an env baseline on the same tasks, eval.group_size episodes each (task-major)."""
    from orchestra_jax.envs.baselines import make_policy, run_policy

    episode_tasks = [t for t in tasks for _ in range(cfg.eval.group_size)]
    return run_policy(env, make_policy(name, env), episode_tasks, seed=cfg.eval.seed)


def evaluate_policies(cfg: Config, env, tokenizer, model_cfg: ModelConfig, learned: dict[str, Any]) -> dict:
    """Evaluates ``learned`` ({name: params}) and the env baselines on held-out tasks; writes summary.json."""
    from orchestra_jax.evaluate import format_table, summarise, write_summary

    e = cfg.eval
    tasks = env.sample_tasks(e.seed, e.num_tasks, split=e.split)
    results = {name: policy_results(cfg, env, tokenizer, model_cfg, p, tasks) for name, p in learned.items()}
    for name in BASELINE_NAMES:
        results[name] = baseline_results(cfg, env, tasks, name)
    summary = summarise(cfg.reward, results, len(tasks), e.group_size)
    summary["eval"] = {"split": e.split, "num_tasks": e.num_tasks, "group_size": e.group_size, "greedy": e.greedy}
    if jax.process_index() == 0:
        write_summary(cfg.run_dir, summary)
    return summary


# ------------------------------------------------------------------------------------------------ run
@dataclasses.dataclass
class Prepared:
    """What every stage needs: the env, the tokenizer, the model config and its initial params, the
    training task file, and the SFT teacher records (empty when SFT is off)."""

    env: Any
    tokenizer: Any
    model_cfg: ModelConfig
    init_params: Any
    train_path: str
    records: list


def prepare(cfg: Config) -> Prepared:
    """Env, task pool (written once, read through grain), teacher data, tokenizer, initial params."""
    from orchestra_jax.envs import make_env
    from orchestra_jax.text.chat import render_prompt

    _save_config(cfg)
    env = make_env(cfg.env)
    train_path = os.path.join(cfg.run_dir, "data", "train_tasks.jsonl")
    if not os.path.exists(train_path):
        write_jsonl(train_path, [t.to_dict() for t in env.sample_tasks(cfg.train.seed, cfg.train.num_tasks, "train")])
    records = teacher_trajectories(cfg, env) if (cfg.init == "sft" and cfg.sft.enabled) else []

    def corpus():
        tasks = env.tasks_from_dicts(read_jsonl(train_path)[:256])
        _, prompts = env.reset(tasks, cfg.train.seed)
        texts = [render_prompt(p["messages"], p.get("tools"), compact_tools=cfg.rollout.compact_tools)
                 for p in prompts]
        for r in records[:2000]:
            texts += list(r["actions"]) + list(r["observations"])
        return texts

    tokenizer = prepare_tokenizer(cfg, env, corpus)
    model_cfg, params = init_model(cfg, tokenizer)
    print(f"run_dir {os.path.abspath(cfg.run_dir)} | tokenizer {tokenizer.vocab_size} ids | model "
          f"{sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)) / 1e6:.2f}M params", flush=True)
    return Prepared(env, tokenizer, model_cfg, params, train_path, records)


def start_params(cfg: Config, prep: Prepared):
    """The GRPO start: the SFT checkpoint (trained now if missing) or the initial params."""
    if not prep.records:
        return prep.init_params
    t0 = time.perf_counter()
    params, skipped = run_sft(cfg, prep.model_cfg, prep.init_params, prep.tokenizer, prep.records)
    print("SFT checkpoint found, SFT skipped" if skipped else
          f"SFT done on {len(prep.records)} teacher trajectories ({time.perf_counter() - t0:.0f}s)", flush=True)
    return params


def run(cfg: Config) -> dict:
    """The whole job (see module docstring). Returns the summary dict (also in <run_dir>/summary.json)."""
    from orchestra_jax.evaluate import format_table

    t_start = time.perf_counter()
    initialize_distributed(cfg.distributed)  # joins a multi-host job before any device is touched
    prep = prepare(cfg)
    start = start_params(cfg, prep)
    # the SFT step donates the initial params; keep a copy of the start for the "sft" evaluation
    start_copy = jax.tree_util.tree_map(jnp.copy, start) if cfg.eval.enabled else None
    logger = make_logger(cfg, initial_step=_latest_step(cfg))
    summary = {}
    try:
        final_params, _ = train_grpo(cfg, prep.env, prep.tokenizer, prep.model_cfg, start, prep.train_path, logger)
        logger.write(f"GRPO done ({time.perf_counter() - t_start:.0f}s)")
        if cfg.eval.enabled:
            summary = evaluate_policies(cfg, prep.env, prep.tokenizer, prep.model_cfg,
                                        {"grpo": final_params, "sft": start_copy})
            logger.summary({f"eval/{n}/{k}": v for n, m in summary["policies"].items() for k, v in m.items()})
    finally:
        logger.close()
    if summary and jax.process_index() == 0:
        print(format_table(summary))
        print(f"summary: {os.path.join(cfg.run_dir, 'summary.json')} | metrics: "
              f"{os.path.join(cfg.run_dir, 'metrics.jsonl')} | total {time.perf_counter() - t_start:.0f}s", flush=True)
    return summary


def _latest_step(cfg: Config) -> int:
    return latest_step_in(os.path.join(cfg.run_dir, "checkpoints"))


def evaluate_run(cfg: Config) -> dict:
    """Evaluates the latest GRPO checkpoint and the start of an existing run_dir (experiments/evaluate.py)."""
    from orchestra_jax.evaluate import format_table

    ckpt_dir = os.path.join(cfg.run_dir, "checkpoints")
    if _latest_step(cfg) == 0:
        raise ValueError(f"no GRPO checkpoint in {ckpt_dir}: train first (experiments/train.py run_dir={cfg.run_dir})")
    prep = prepare(cfg)
    start = start_params(cfg, prep)
    ck = Checkpointer(ckpt_dir)

    step = ck.latest_step()
    keys = ck.saved_keys(step)
    # restore only the params: build a full target of the saved structure from a fresh optimizer state
    from orchestra_jax.rl.optim import make_optimizer as _mk

    target = {"params": start, "opt_state": _mk(cfg.algo.optim).init(start), "rng": jax.random.PRNGKey(0),
              "step": jnp.zeros((), jnp.int32), "reward_state": init_reward_state()}
    if "ref_params" in keys:
        target["ref_params"] = start
    state, _ = ck.restore(step, target)
    ck.close()
    summary = evaluate_policies(cfg, prep.env, prep.tokenizer, prep.model_cfg,
                                {"grpo": state["params"], "sft": jax.tree_util.tree_map(jnp.copy, start)})
    summary["eval"]["grpo_step"] = int(step)
    from orchestra_jax.evaluate import write_summary

    write_summary(cfg.run_dir, summary)
    print(format_table(summary))
    print(f"summary: {os.path.join(cfg.run_dir, 'summary.json')} (GRPO step {step})")
    return summary
