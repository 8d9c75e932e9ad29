"""One GRPO step, whole: ``grpo_step(setup, state, tasks) -> (state, metrics, info)``.

    state   TrainState: float32 master params and optimizer state on the mesh, the reference (KL on), the
            rng, the step and the reward state; a pytree, checkpointed as it is
    tasks   this process's tasks of the step (``tasks_per_step`` of them)

    1. rollout    G episodes per task with the current policy (a process-local replica of the params), in
                  chunks of ``batch_tasks`` tasks, each chunk with its own key and global episode ids
    2. rewards    every process's episode features (gathered) -> rewards -> group advantages, identical on
                  every process; each takes the advantages of its own episodes
    3. pack       this process's kept episodes into ``rows_per_host`` rows, or with ``row_bucket`` the fewest
                  bucket of rows that holds every process's step (rl.batch), each group's prompt stored once
                  per packed unit with train.share_prefix
    4. global     every process's rows -> one global batch (``jax.make_array_from_process_local_data``)
    5. update     ``ppo_epochs`` jitted, sharded optimizer steps (with ``row_bucket``, gradients accumulated over
                  the step's buckets with fixed programs); the first epoch is on-policy (ratio 1, no
                  old-log-prob forward); reference log-probs are computed inside the update when the KL is on

Episodes trained per step = tasks_per_step x group_size x processes. Nothing here reads global state: the
same state and tasks give the same result (rng and env seeds derive from the state).

Sampling must be the distribution the loss differentiates: the old / new log-probs are at temperature 1 over
the full vocabulary, so ``validate_sampling`` refuses T != 1, top_p < 1 or greedy rollouts for training
(the importance ratio against a tempered or truncated sampler would be biased where it assigns 0 mass).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from orchestra_jax.data.packing import PackedBatch
from orchestra_jax.data.shared_packing import SharedPackedBatch
from orchestra_jax.rl.advantages import group_advantages
from orchestra_jax.rl.batch import (StepConfig, agree_max, bucket_row_lens, build_batch, global_packing_metrics,
                                    loss_positions, max_loss_tokens_per_row, step_rows)
from orchestra_jax.rl.rewards import RewardConfig, RunningMoments, compute_rewards, init_reward_state
from orchestra_jax.rl.rollout import DONE_REASONS, Rollout, RolloutConfig, concatenate_rollouts, rollout
from orchestra_jax.rl.step import AlgoConfig


class TrainState(NamedTuple):
    """Everything a GRPO step reads and writes (a pytree; ``ref_params`` is None when the KL is off)."""

    params: Any  # float32 master weights, sharded on the mesh
    opt_state: Any  # optimizer state, sharded like the params
    ref_params: Any  # reference policy (None without KL)
    rng: np.ndarray  # uint32 [2] PRNG key data (host, identical on every process)
    step: np.ndarray  # int32 [] steps done
    reward_state: RunningMoments  # running reward statistics (zscore rewards)


@dataclasses.dataclass(frozen=True)
class GRPOSetup:
    """What a step needs besides its state: configs, env, tokenizer, mesh and the compiled functions."""

    model_cfg: Any
    algo: AlgoConfig
    reward: RewardConfig
    rollout: RolloutConfig
    step: StepConfig
    env: Any
    tokenizer: Any
    mesh: Any
    update: Any  # parallel.sharded_fns.ShardedUpdate over the un-jitted rl.step update
    logprob: Any  # sharded (params, batch) -> (logp, entropy); used only when ppo_epochs > 1
    on_phase: Any = None  # optional hook(phase, step) after the rollout (the loop's fault-injection point)


def validate_sampling(rollout_cfg: RolloutConfig) -> None:
    """Training samples from the policy the loss differentiates (T = 1, full vocabulary)."""
    s = rollout_cfg.sampling
    if s.greedy or s.temperature != 1.0 or s.top_p != 1.0:
        raise ValueError(
            f"rollout.sampling (greedy={s.greedy}, temperature={s.temperature}, top_p={s.top_p}): GRPO trains "
            "on temperature-1, full-vocabulary log-probs, so training rollouts must sample with greedy=false, "
            "temperature=1.0, top_p=1.0 (eval.greedy sets the evaluation's decoding)")


def env_seed(seed: int, step: int, stream: int) -> int:
    """A per-step, per-stream integer seed independent of history."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0] % (2**31 - 1))


# ------------------------------------------------------------------------------------------- per host
def rollout_tasks(setup: GRPOSetup, params_local, tasks: Sequence, key, seed: int, first_task: int) -> Rollout:
    """G episodes of each task, in chunks of batch_tasks; chunk c uses fold_in(key, global chunk index) and
    episode ids (first_task + i) * G + g, so a task's episodes do not depend on how tasks are split."""
    G, tasks = setup.rollout.group_size, list(tasks)
    per = setup.step.batch_tasks or len(tasks)
    parts = []
    for start in range(0, len(tasks), per):
        chunk = tasks[start:start + per]
        first = first_task + start
        ids = [(first + i) * G + g for i in range(len(chunk)) for g in range(G)]
        parts.append(rollout(setup.model_cfg, params_local, setup.env, setup.tokenizer, chunk,
                             jax.random.fold_in(key, first // per), setup.rollout, env_seed=seed, episode_ids=ids))
    return concatenate_rollouts(parts)


def episode_table(ro: Rollout) -> dict[str, np.ndarray]:
    """Per-episode numbers of a rollout (what rewards and metrics need), [N, ...]."""
    res = ro.results
    return {"features": np.asarray(res.features, np.float64), "solved": np.asarray(res.solved, bool),
            "preference": np.asarray(res.preference, np.float64), "cost_usd": np.asarray(res.cost_usd, np.float64),
            "latency_s": np.asarray(res.latency_s, np.float64), "n_turns": np.asarray(ro.n_turns, np.int32),
            "n_invalid": np.asarray(res.n_invalid, np.int32), "length": ro.lengths.astype(np.int32),
            "sampled": np.sum(ro.turn_new_tokens, axis=1).astype(np.int32),
            "done": np.array([DONE_REASONS.index(r) for r in ro.done_reason], np.int32)}


def gather_episodes(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's episode table, concatenated in process order (identity on one process)."""
    if jax.process_count() == 1:
        return table
    from jax.experimental import multihost_utils

    out = multihost_utils.process_allgather({k: np.asarray(v) for k, v in table.items()}, tiled=True)
    return {k: np.asarray(v) for k, v in out.items()}


def episode_metrics(t: dict[str, np.ndarray], tool_aliases: Sequence[str]) -> dict[str, float]:
    """Accuracy, $ cost, latency, turns, calls per tool, validity and end reasons of (global) episodes."""
    from orchestra_jax.envs.preferences import preference_score

    m = {"rollout/accuracy": float(np.mean(t["solved"])), "rollout/cost_usd": float(np.mean(t["cost_usd"])),
         "rollout/latency_s": float(np.mean(t["latency_s"])), "rollout/turns": float(np.mean(t["n_turns"])),
         "rollout/invalid_turn_rate": float(np.sum(t["n_invalid"]) / max(int(np.sum(t["n_turns"])), 1)),
         "rollout/tokens_per_episode": float(np.mean(t["length"])),
         "rollout/sampled_tokens": float(np.sum(t["sampled"])), "rollout/episodes": float(len(t["solved"])),
         # fixed scales, comparable across steps (unlike the group-normalised training reward)
         "reward/preference_score": float(preference_score(t["features"], t["solved"], t["preference"]))}
    for j, alias in enumerate(tool_aliases):
        m[f"calls/{alias}"] = float(np.mean(t["features"][:, j]))
    for i, reason in enumerate(DONE_REASONS):
        if np.any(t["done"] == i):
            m[f"done/{reason}"] = float(np.mean(t["done"] == i))
    return m


def global_batch(setup: GRPOSetup, batch: PackedBatch | SharedPackedBatch) -> dict | list[dict]:
    """Every process's rows as one global batch on the mesh ([M, R/M, L] with micro-batches). With
    ``row_bucket`` the rows go as a list of buckets of row_bucket rows (each [M, row_bucket/M, L]): the
    update accumulates over however many a step has with the same compiled programs; with ``short_row_lens``
    the rows go fullest first and a bucket whose tokens fit a shorter length is cut to it (``bucket_row_lens``)."""
    from orchestra_jax.parallel.distributed import host_local_batch_to_global

    local = batch.as_dict()
    rows, M, row_len = batch.num_rows, setup.algo.micro_batches, batch.row_len
    per = setup.step.row_bucket or rows
    order, lens = bucket_row_lens(local["segment_ids"], per, row_len, setup.step.short_row_lens)
    width = 0
    if setup.step.loss_positions:  # one width on every process: the configured one unless a row needs more
        most = agree_max(max_loss_tokens_per_row(local["loss_mask"], local["segment_ids"]))
        width = setup.step.loss_positions if most <= setup.step.loss_positions else row_len
    parts = []
    for b, n in enumerate(lens):
        part = {k: v[order[b * per:(b + 1) * per], :n] for k, v in local.items()}
        if width:
            part["loss_index"] = loss_positions(part["loss_mask"], part["segment_ids"], min(width, n))
        parts.append(part)
    if M > 1:
        parts = [{k: v.reshape((M, v.shape[0] // M) + v.shape[1:]) for k, v in p.items()} for p in parts]
    parts = [host_local_batch_to_global(p, setup.mesh, setup.update.rules) for p in parts]
    return parts if setup.step.row_bucket else parts[0]


def token_slots(buckets: list[dict]) -> int:
    """Token slots the update computes over ``global_batch``'s buckets: every process's rows, short rows
    (train.short_row_lens) counted at their cut length."""
    return sum(int(np.prod(np.shape(b["tokens"]))) for b in buckets)


# ---------------------------------------------------------------------------------------------- step
def grpo_step(setup: GRPOSetup, state: TrainState, tasks: Sequence, params_local=None
              ) -> tuple[TrainState, dict[str, float], dict]:
    """One GRPO step (module docstring). ``params_local``: a process-local replica of ``state.params`` for
    the rollout (``parallel.sharding.replicate_to_local``); returns (new state, metrics, info) with info =
    {"rollout": this process's Rollout, "rewards_N": their rewards} for sample tables."""
    from orchestra_jax.parallel.sharding import replicate_to_local

    cfg, algo, G = setup.step, setup.algo, setup.rollout.group_size
    step = int(state.step) + 1
    rng, roll_key = jax.random.split(jnp.asarray(state.rng, jnp.uint32))
    p, n_local = jax.process_index(), len(tasks)
    if params_local is None:
        # one device: the same arrays as single-device views (no copy), so the sampler sees the placement of
        # the multi-device path's replica and its first call compiles the same program as the later ones
        params_local = (jax.tree_util.tree_map(lambda x: x.addressable_data(0), state.params)
                        if setup.mesh.size == 1 else replicate_to_local(state.params, setup.mesh))

    t_start = time.perf_counter()  # wall times of the three phases (time/*: where a step's time goes)
    ro = rollout_tasks(setup, params_local, tasks, roll_key, env_seed(cfg.seed, step, 1), first_task=p * n_local)
    t_rolled = time.perf_counter()
    if setup.on_phase is not None:
        setup.on_phase("rollout", step)
    episodes = gather_episodes(episode_table(ro))
    n_groups = len(episodes["solved"]) // G
    grouped = {k: episodes[k].reshape((n_groups, G) + episodes[k].shape[1:])
               for k in ("features", "solved", "preference")}
    rewards, reward_state, reward_m = compute_rewards(setup.reward, grouped["features"], grouped["solved"],
                                                      grouped["preference"][:, 0], state.reward_state)
    advantages, keep, adv_m = group_advantages(np.asarray(rewards), algo.advantage)
    mine = slice(p * n_local * G, (p + 1) * n_local * G)
    adv_N, keep_N = np.asarray(advantages).reshape(-1)[mine], np.asarray(keep).reshape(-1)[mine]
    backend, dtype = setup.model_cfg.attention_backend, setup.model_cfg.dtype
    rows = agree_max(step_rows(ro, keep_N, cfg, attention_backend=backend, dtype=dtype,
                                invalid_turns=algo.invalid_turns))
    packed, pack_m = build_batch(ro, adv_N, keep_N, cfg, attention_backend=backend, dtype=dtype, num_rows=rows,
                                 invalid_turns=algo.invalid_turns)
    pack_m = global_packing_metrics(pack_m)
    metrics = {**{k: float(v) for k, v in {**reward_m, **adv_m}.items()}, **pack_m,
               **episode_metrics(episodes, setup.env.tool_aliases)}
    t_packed = time.perf_counter()

    params, opt_state = state.params, state.opt_state
    if np.any(np.asarray(keep)):  # a global decision: every process updates or none does
        batch = global_batch(setup, packed)
        buckets = batch if isinstance(batch, list) else [batch]
        slots = token_slots(buckets)
        metrics["packing/row_slots"] = float(slots)
        metrics["packing/utilisation"] = metrics["packing/tokens_computed"] / slots
        if cfg.loss_positions:  # the output head's positions per row: loss_positions, or row_len when one overflowed
            metrics["packing/loss_positions"] = float(np.shape(buckets[0]["loss_index"])[-1])
        if algo.ppo_epochs > 1:  # fixed behaviour log-probs over the epochs (one extra forward)
            for b in buckets:
                b["old_logp"], _ = setup.logprob(params, b)  # the batch's layout, micro-batches included
        update_ms = []
        for _ in range(algo.ppo_epochs):
            params, opt_state, m = setup.update(params, opt_state, batch, state.ref_params)
            update_ms.append(m)
        update_ms = jax.device_get(update_ms)
        metrics.update({k: float(np.mean([float(m[k]) for m in update_ms])) for k in update_ms[0]})
    else:
        metrics["update/skipped_no_data"] = 1.0
    metrics.update({"time/rollout_s": t_rolled - t_start, "time/rewards_pack_s": t_packed - t_rolled,
                    "time/update_s": time.perf_counter() - t_packed})
    ref = state.ref_params
    if ref is not None and algo.ref_refresh_interval and step % algo.ref_refresh_interval == 0:
        ref = jax.tree_util.tree_map(jnp.copy, params)
    new_state = TrainState(params=params, opt_state=opt_state, ref_params=ref, rng=np.asarray(rng),
                           step=np.asarray(step, np.int32),
                           reward_state=jax.tree_util.tree_map(np.asarray, reward_state))
    return new_state, metrics, {"rollout": ro, "rewards_N": np.asarray(rewards).reshape(-1)[mine]}


def init_state(setup: GRPOSetup, params, seed: int) -> TrainState:
    """The state before step 1: ``params`` (host or global, identical on every process) placed on the mesh as
    float32 masters, a fresh optimizer state, the reference (a copy, when the KL is on), the rng."""
    params = setup.update.shard_params(jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float32) if isinstance(x, jax.Array) else np.asarray(x, np.float32), params))
    params = jax.tree_util.tree_map(jnp.copy, params)  # own buffers: the update donates them
    needs_ref = algo_needs_reference(setup.algo)
    ref = jax.tree_util.tree_map(jnp.copy, params) if needs_ref else None
    return TrainState(params=params, opt_state=setup.update.init_opt_state(params), ref_params=ref,
                      rng=np.asarray(jax.random.PRNGKey(seed)), step=np.zeros((), np.int32),
                      reward_state=jax.tree_util.tree_map(np.asarray, init_reward_state()))


def algo_needs_reference(algo: AlgoConfig) -> bool:
    return algo.loss.kl_coef != 0.0
