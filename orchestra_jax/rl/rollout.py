"""Multi-turn rollouts: G samples per task through the batched environments, token in, token out.

All episodes of a call run together in one static batch (B = n_tasks * G rows of one KV cache):

    prompts -> render + tokenize once -> prefill (each group's prompt once when its G prompts are equal)
    repeat up to max_turns:
        decode one turn for the active rows (stops at </tool_call> or <|im_end|>)
        decode the text of exactly those sampled ids -> env.step
        for episodes still running: [<|im_end|>] + tool_response_turn(observation) -> prefill only those tokens

The trajectory of an episode keeps the exact sampled ids (policy text is never re-tokenised) and the
history is never re-encoded: after a tool call only the observation tokens enter the cache. Finished
episodes stay in the batch as inactive rows; a turn's decode loop ends as soon as every row stopped.

Per-episode outputs: token ids, assistant mask (1 on sampled tokens only), the sampled tokens' log-probs
under the unmodified policy in the ARCHITECTURE.md convention (logp of token t at index t; this is the GRPO
``old_logp``), per-turn $ cost and latency, turns taken, why the episode ended, and the env's
EpisodeResults, with features / solved / preference arranged as [groups, G, ...] for the reward functions.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from orchestra_jax.model.kv_cache import init_cache
from orchestra_jax.model.sampling import STOP_CACHE_FULL, decode, prefill, repeat_rows, take_rows
from orchestra_jax.rl.rollout_profile import RolloutProfile
from orchestra_jax.rl.rollout_types import (  # noqa: F401  (re-exported: the rollout's public names)
    DONE_ENV_BUDGET, DONE_FINISHED, DONE_LENGTH_BUDGET, DONE_REASONS, DONE_TURN_BUDGET, ENV_LENGTH_REASON, Rollout,
    RolloutConfig, concatenate_rollouts, invalid_turn_tokens, rollout_to_sequences)
from orchestra_jax.text import chat

_ENV_REASONS = {"max_turns": DONE_TURN_BUDGET, "max_tokens": DONE_ENV_BUDGET, "max_usd": DONE_ENV_BUDGET}


def _pad_rows(rows: Sequence[Sequence[int]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _cache_like(params, model_cfg, batch: int, seq_len: int):
    """An empty KV cache, committed to the device of single-device (process-local) params, so the first prefill
    call sees the same input placement as the later ones (one compiled program, not two)."""
    cache, devices = init_cache(model_cfg, batch, seq_len), jax.tree_util.tree_leaves(params)[0].devices()
    return jax.device_put(cache, next(iter(devices))) if len(devices) == 1 else cache


def _prefill_windows(model_cfg, params, cache, rows, num_new, last_logits, window: int, prompts: bool = False):
    """Prefill rows[i][:num_new[i]] in fixed windows of `window` tokens: one prefill call per window, every
    call the same shape, so the jitted prefill compiles once per row count (not once per length). prompts:
    the shared group prompts (P rows) go to the sampler's separate prompt prefill, so the observation
    prefill (B rows) and the prompt prefill each compile one program per run."""
    if last_logits is None:  # committed where the cache is, as the later windows' inputs are: one program
        last_logits = jax.device_put(jnp.zeros((len(rows), model_cfg.vocab_size), jnp.float32),
                                     cache.lengths.sharding)
    for start in range(0, int(np.max(num_new, initial=0)), window):
        n = np.clip(num_new - start, 0, window).astype(np.int32)
        chunk = _pad_rows([r[start:start + window] if k else [] for r, k in zip(rows, n)], window)
        last_logits, cache = prefill(model_cfg, params, cache, chunk, n, last_logits, prompts=prompts,
                                     donate_cache=True)  # the rollout never reads a cache it passed on
    return last_logits, cache


def _abort(env, state, indices: Sequence[int]) -> None:
    """Ends episodes in the env that the rollout ended (sequence too long): unsolved, no further charges.

    Uses ``env.abort(state, indices, reason)`` when the env offers it, else the env state's Ledger.
    """
    if not indices:
        return
    if hasattr(env, "abort"):
        env.abort(state, list(indices), reason=ENV_LENGTH_REASON)
        return
    ledger = getattr(state, "ledger", None)
    if ledger is None or not hasattr(ledger, "finish"):
        raise ValueError(f"rollout: env {type(env).__name__} offers neither abort() nor state.ledger.finish(); "
                         "cannot end over-length episodes")
    for i in indices:
        ledger.finish(i, solved=False, reason=ENV_LENGTH_REASON)


def _compact(cache, last_logits, row_episode: np.ndarray, running: np.ndarray, min_rows: int = 1):
    """Keeps the rows of running episodes when they fit in half the rows (or a quarter, ...): the cache shrinks
    to ceil(B / 2^k) >= min_rows rows, the running episodes first in row order, then padding rows (-1, a copy
    of row 0)."""
    held = [r for r, e in enumerate(row_episode) if e >= 0 and running[e]]
    rows = len(row_episode)
    while rows > 1 and -(-rows // 2) >= max(len(held), min_rows):
        rows = -(-rows // 2)
    if rows == len(row_episode):
        return cache, last_logits, row_episode
    take = held + [held[0] if held else 0] * (rows - len(held))
    cache, last_logits = take_rows(cache, last_logits, take)
    return cache, last_logits, np.array([row_episode[r] for r in held] + [-1] * (rows - len(held)))


def _env_done_reason(end_reason: str) -> str:
    return _ENV_REASONS.get(end_reason, DONE_FINISHED)


def rollout(model_cfg, params, env, tokenizer, tasks: Sequence, key: jax.Array, cfg: RolloutConfig,
            env_seed: int, episode_ids: Sequence[int] | None = None, profile: RolloutProfile | None = None) -> Rollout:
    """Runs cfg.group_size episodes of every task (group-major: episode i is task i // G) to the end.

    model_cfg / params: the policy; env: an orchestra_jax.envs Env; tokenizer: text.tokenizer.Tokenizer whose
    chat tokens (<|im_end|>, </tool_call>) are single ids; key: PRNG key (split once per turn); env_seed:
    seed of env.reset; episode_ids: the env episode id of each of the N episodes (default 0..N-1), so an
    episode's env randomness is the same whichever batch it runs in. Same key, params, tasks, env_seed and
    episode ids give the same Rollout. profile: a RolloutProfile that accumulates where the time went (the
    rollout then waits for each device call to finish, so it is for benchmarks).
    """
    t_start = time.perf_counter()
    tasks = list(tasks)
    if not tasks:
        raise ValueError("rollout: tasks is empty")
    group_size, max_turns, seq_len = cfg.group_size, cfg.max_turns, cfg.max_seq_len
    n_episodes = len(tasks) * group_size
    sampling_cfg = cfg.sampling_config
    eos_id = tokenizer.eos_id
    stop_ids = np.array([tokenizer.token_id(chat.TOOL_CALL_CLOSE), eos_id], np.int32)

    episode_tasks = [task for task in tasks for _ in range(group_size)]
    if episode_ids is not None and len(episode_ids) != n_episodes:
        raise ValueError(f"rollout: {len(episode_ids)} episode ids for {n_episodes} episodes")
    state, prompts = env.reset(episode_tasks, env_seed,
                               episode_ids=None if episode_ids is None else [int(e) for e in episode_ids])
    if len(prompts) != n_episodes:
        raise ValueError(f"rollout: env.reset returned {len(prompts)} prompts for {n_episodes} episodes")
    encoded: dict[str, list[int]] = {}  # each distinct prompt text is tokenized once
    prompt_ids = []
    for p in prompts:
        text = chat.render_prompt(p["messages"], p.get("tools"), tools_format=cfg.tools_format)
        if text not in encoded:
            encoded[text] = tokenizer.encode(text)
        prompt_ids.append(encoded[text])

    # A prompt that does not fit (it must leave room for one sampled token) is kept cut to max_seq_len,
    # so that every sequence packs into rows of max_seq_len; its episode ends at once as runaway.
    tokens = [list(ids[:seq_len]) for ids in prompt_ids]
    mask = [[0] * len(t) for t in tokens]
    logp = [[0.0] * len(t) for t in tokens]
    sample_logp = [[0.0] * len(t) for t in tokens]
    turn_cost = np.zeros((n_episodes, max_turns), np.float64)
    turn_latency = np.zeros((n_episodes, max_turns), np.float64)
    turn_new = np.zeros((n_episodes, max_turns), np.int32)
    turn_start = np.zeros((n_episodes, max_turns), np.int32)
    turn_valid = np.ones((n_episodes, max_turns), bool)
    n_turns = np.zeros(n_episodes, np.int32)
    done_reason: list[str | None] = [None] * n_episodes
    actions: list[list[str]] = [[] for _ in range(n_episodes)]
    observations: list[list[str]] = [[] for _ in range(n_episodes)]

    too_long = [i for i, ids in enumerate(prompt_ids) if len(ids) >= seq_len]
    for i in too_long:
        done_reason[i] = DONE_LENGTH_BUDGET
    _abort(env, state, too_long)
    num_new = np.array([0 if done_reason[i] else len(ids) for i, ids in enumerate(prompt_ids)], np.int32)
    last_logits = None
    # A group whose G prompts are the same tokens is prefilled once and its cache row repeated (1/G cost).
    same_prompts = cfg.share_prompt_prefill and group_size > 1 and all(prompt_ids[i] == prompt_ids[i - i % group_size] for i in range(n_episodes))
    if num_new.any():
        rows = [ids if n else [] for ids, n in zip(prompt_ids, num_new)]
        if same_prompts:
            last_P, cache_P = _prefill_windows(model_cfg, params, _cache_like(params, model_cfg, len(tasks), seq_len),
                                               rows[::group_size], num_new[::group_size], None, cfg.prefill_window,
                                               prompts=True)
            cache, last_logits = repeat_rows(cache_P, last_P, group_size)
        else:
            last_logits, cache = _prefill_windows(model_cfg, params, _cache_like(params, model_cfg, n_episodes, seq_len),
                                                  rows, num_new, None, cfg.prefill_window)
    else:
        cache = _cache_like(params, model_cfg, n_episodes, seq_len)
    lengths = num_new.astype(np.int64)  # host mirror of cache.lengths, per episode
    if profile is not None:
        jax.block_until_ready(cache)
        profile.prompt_s += time.perf_counter() - t_start
    row_episode = np.arange(n_episodes)  # episode held by each cache row (-1: a padding row after compaction)

    for turn in range(max_turns):
        running = np.array([done_reason[i] is None for i in range(n_episodes)])
        if not running.any():
            break
        active = np.array([e >= 0 and running[e] for e in row_episode])  # per cache row
        key, turn_key = jax.random.split(key)
        t0 = time.perf_counter()
        out = decode(model_cfg, params, cache, last_logits, turn_key, active, stop_ids, sampling_cfg,
                     row_ids_B=np.maximum(row_episode, 0) if cfg.compact_rows else None, donate_cache=True)
        cache, last_logits = out.cache, out.last_logits_BV
        new_B = np.asarray(out.num_generated_B)
        ids_BN, logp_BN, slogp_BN = map(np.asarray, (out.tokens_BN, out.logp_BN, out.sample_logp_BN))
        reason_B = np.asarray(out.stop_reason_B)
        if profile is not None:
            profile.add_decode(time.perf_counter() - t0, len(row_episode), new_B)

        step_actions = [""] * n_episodes  # finished episodes ignore their action
        tokens_in = np.zeros(n_episodes, np.int64)
        tokens_out = np.zeros(n_episodes, np.int64)
        runaway = []
        for r in np.flatnonzero(active):
            i, n = int(row_episode[r]), int(new_B[r])
            sampled = ids_BN[r, :n].tolist()
            turn_start[i, turn] = len(tokens[i])
            tokens[i] += sampled
            mask[i] += [1] * n
            logp[i] += logp_BN[r, :n].tolist()
            sample_logp[i] += slogp_BN[r, :n].tolist()
            turn_new[i, turn] = n
            text = tokenizer.decode(sampled)
            actions[i].append(text)
            if reason_B[r] == STOP_CACHE_FULL:  # the turn was cut off by the cache: runaway, not sent
                runaway.append(i)
                done_reason[i] = DONE_LENGTH_BUDGET
            else:
                step_actions[i] = text
                tokens_in[i] = lengths[i]  # the orchestrator reads its whole context (as an API call would)
                tokens_out[i] = n
            lengths[i] += n
        _abort(env, state, runaway)
        stepped = running & np.array([done_reason[i] is None for i in range(n_episodes)])
        if not stepped.any():
            continue
        t0 = time.perf_counter()
        state, step_out = env.step(state, step_actions, policy_tokens_in=tokens_in.tolist(),
                                   policy_tokens_out=tokens_out.tolist())
        env_done = np.asarray(step_out.done, bool)
        end_reasons = env.results(state).end_reason if env_done[stepped].any() else None
        obs_rows: dict[int, list[int]] = {}
        no_room = []
        for i in np.flatnonzero(stepped):
            turn_cost[i, turn] = step_out.cost_usd[i]
            turn_latency[i, turn] = step_out.latency_s[i]
            turn_valid[i, turn] = bool(step_out.valid[i])
            n_turns[i] += 1
            observations[i].append(step_out.observations[i])
            if env_done[i]:
                done_reason[i] = _env_done_reason(end_reasons[i])
            elif turn == max_turns - 1:
                done_reason[i] = DONE_TURN_BUDGET
            else:
                ids = [] if tokens[i][-1] == eos_id else [eos_id]  # close the turn: not a policy token
                ids += tokenizer.encode(chat.tool_response_turn(step_out.observations[i]))
                if lengths[i] + len(ids) >= seq_len:  # no room for the observation and one more token
                    no_room.append(int(i))
                    done_reason[i] = DONE_LENGTH_BUDGET
                else:
                    obs_rows[int(i)] = ids
        _abort(env, state, no_room)
        if profile is not None:
            profile.env_s += time.perf_counter() - t0
        if obs_rows:
            t0 = time.perf_counter()
            if cfg.compact_rows:  # before the observations' prefill: the episodes that just ended drop out
                running = np.array([done_reason[i] is None for i in range(n_episodes)])
                cache, last_logits, row_episode = _compact(cache, last_logits, row_episode, running,
                                                           cfg.compact_min_rows)
            num_new = np.zeros(len(row_episode), np.int32)
            rows = [[] for _ in row_episode]
            for r, i in enumerate(row_episode):
                ids = obs_rows.get(int(i))
                if ids is None:
                    continue
                rows[r], num_new[r] = ids, len(ids)
                tokens[i] += ids
                mask[i] += [0] * len(ids)
                logp[i] += [0.0] * len(ids)
                sample_logp[i] += [0.0] * len(ids)
                lengths[i] += len(ids)
            last_logits, cache = _prefill_windows(model_cfg, params, cache, rows, num_new, last_logits,
                                                  cfg.prefill_window)
            if profile is not None:
                jax.block_until_ready(cache)
                profile.add_observation(time.perf_counter() - t0, len(row_episode), num_new, cfg.prefill_window)

    held = row_episode >= 0  # cheap guard on the host bookkeeping
    if not np.array_equal(np.asarray(cache.lengths)[held], lengths[row_episode[held]]):
        raise AssertionError(f"rollout: cache lengths {np.asarray(cache.lengths)} != trajectory lengths "
                             f"{lengths[row_episode[held]]}")
    # Episodes ended by the env at a </tool_call> stop: close the turn so the transcript is well formed.
    for i in range(n_episodes):
        if done_reason[i] in (DONE_FINISHED, DONE_ENV_BUDGET, DONE_TURN_BUDGET) and tokens[i][-1] != eos_id \
                and mask[i][-1] == 1 and len(tokens[i]) < seq_len:
            tokens[i].append(eos_id)
            mask[i].append(0)
            logp[i].append(0.0)
            sample_logp[i].append(0.0)
    results = env.results(state)
    runaway_mask = np.array([r == DONE_LENGTH_BUDGET for r in done_reason])
    if runaway_mask.any():  # a runaway episode is never solved (whatever the env recorded)
        features = np.array(results.features, copy=True)
        features[runaway_mask, len(results.feature_names) - 3] = 0.0  # the outcome column
        results = dataclasses.replace(
            results, features=features, solved=np.where(runaway_mask, False, np.asarray(results.solved, bool)))

    if profile is not None:
        profile.episodes += n_episodes
        profile.total_s += time.perf_counter() - t_start
    return Rollout(
        tokens=[np.asarray(t, np.int32) for t in tokens],
        assistant_mask=[np.asarray(m, np.int32) for m in mask],
        sampled_logp=[np.asarray(x, np.float32) for x in logp],
        sampling_logp=[np.asarray(x, np.float32) for x in sample_logp],
        prompt_len=np.array([len(ids) for ids in prompt_ids], np.int32),  # before any cut
        turn_cost_usd=turn_cost, turn_latency_s=turn_latency, turn_new_tokens=turn_new, turn_start=turn_start,
        turn_valid=turn_valid, n_turns=n_turns,
        done_reason=[r if r is not None else DONE_TURN_BUDGET for r in done_reason],
        actions=actions, observations=observations, results=results,
        n_groups=len(tasks), group_size=group_size)
