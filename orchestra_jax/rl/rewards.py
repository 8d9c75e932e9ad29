"""Multi-objective rewards for a group of rollouts of one task.

Feature layout (last axis, F = n_tools + 3), raw units as returned by `env.results`:
    [calls to tool 0, ..., calls to tool n-1, outcome (0/1), cost ($), latency (s)]

Three scalarisations, selected by `RewardConfig.kind`:
- "paper":     Eq. 2 of ToolOrchestra (min-max within the group, dot with the preference P, 0 if unsolved).
- "zscore":    outcome - (w_cost z(cost) + w_latency z(latency)) with running batch statistics (a state
               that lives in the checkpoint).
- "chebyshev": weighted-max (Tchebycheff) scalarisation of the group-normalised features, which can reach
               non-convex parts of the Pareto front that any linear weighting misses.

All functions are pure jnp code: they accept numpy or jax arrays and can run inside or outside jit.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple, Optional

import jax.numpy as jnp

OUTCOME, COST, LATENCY = -3, -2, -1  # feature indices counted from the end


class RewardKind(enum.StrEnum):
    """The reward functions of this module."""

    paper = "paper"
    zscore = "zscore"
    chebyshev = "chebyshev"


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """How trajectory features become one scalar reward."""

    kind: RewardKind = RewardKind.paper  # paper | zscore | chebyshev
    # zscore only
    cost_weight: float = 0.5  # w_cost in outcome - (w_cost z(cost) + w_latency z(latency))
    latency_weight: float = 0.5  # w_latency
    weights_from_preference: bool = False  # zscore: take w_cost, w_latency from P[cost], P[latency] per group
    zscore_eps: float = 1e-6  # added to the running std
    ema_decay: float = 0.0  # 0 = exact cumulative moments over all batches; in (0, 1) = exponential moving average
    zscore_gate_on_solved: bool = False  # zscore: reward 0 for unsolved trajectories (like the paper's form)


class RunningMoments(NamedTuple):
    """Running mean and variance of (cost, latency); a pytree saved with the checkpoint."""

    count: jnp.ndarray  # float32 scalar: number of trajectories seen (cumulative mode)
    mean: jnp.ndarray  # float32 [2]: (cost, latency)
    var: jnp.ndarray  # float32 [2]: population variance


def init_reward_state() -> RunningMoments:
    """Empty running statistics (no trajectory seen yet)."""
    return RunningMoments(jnp.zeros((), jnp.float32), jnp.zeros((2,), jnp.float32), jnp.zeros((2,), jnp.float32))


def _check_shapes(features, solved, preference):
    if features.ndim != 3:
        raise ValueError(f"features must be [groups, G, F]; got shape {tuple(features.shape)}")
    g, group_size, num_features = features.shape
    if num_features < 3:
        raise ValueError(f"features last axis F={num_features} must be n_tools + 3 >= 3")
    if tuple(solved.shape) != (g, group_size):
        raise ValueError(f"solved must be [groups, G] = {(g, group_size)}; got shape {tuple(solved.shape)}")
    if preference is not None and tuple(preference.shape) != (g, num_features):
        raise ValueError(f"preference must be [groups, F] = {(g, num_features)}; got shape {tuple(preference.shape)}")


def signed_features(features):
    """Features oriented so that larger is better for cost and latency: [..., calls, outcome, -cost, -latency]."""
    features = jnp.asarray(features, jnp.float32)
    sign = jnp.ones((features.shape[-1],), jnp.float32).at[COST].set(-1.0).at[LATENCY].set(-1.0)
    return features * sign


def group_minmax(values_gGF, constant_value: float = 0.0):
    """Min-max normalise every feature within its group (axis 1); a constant feature gives `constant_value`."""
    lo = jnp.min(values_gGF, axis=1, keepdims=True)
    hi = jnp.max(values_gGF, axis=1, keepdims=True)
    span = hi - lo
    constant = span <= 0
    normalised = (values_gGF - lo) / jnp.where(constant, 1.0, span)
    return jnp.where(constant, constant_value, normalised)


def paper_reward(features, solved, preference):
    """ToolOrchestra Eq. 2, batched over groups.

    Args:
      features: float [g, G, F] raw units: calls per tool, outcome, cost ($), latency (s).
      solved: bool [g, G].
      preference: float [g, F], P = [p_tool..., p_outcome, p_cost, p_latency].
    Returns:
      reward float32 [g, G] = normalise(M) . P if solved else 0, where M = [calls..., outcome, -cost, -latency]
      and every feature is min-max normalised over the G rollouts of its group (max == min -> 0).

    Sign: the paper defines r_compute = -cost and r_latency = -latency, so with p_cost > 0 the cheaper of two
    solved trajectories scores higher. The released code (generation_quick3.py) stores min/max of -cost but
    puts +cost in the numerator, so its cost and latency terms grow with cost; we follow the paper.
    """
    features = jnp.asarray(features, jnp.float32)
    solved = jnp.asarray(solved)
    preference = jnp.asarray(preference, jnp.float32)
    _check_shapes(features, solved, preference)
    normalised = group_minmax(signed_features(features))
    reward = jnp.einsum("gnf,gf->gn", normalised, preference)
    return jnp.where(solved.astype(bool), reward, 0.0)


def chebyshev_reward(features, solved, preference):
    """Weighted Chebyshev (Tchebycheff) scalarisation of the group-normalised features.

    With n_f the min-max normalised feature (higher is better, ideal point 1):
        reward = 1 - max_f P_f (1 - n_f)   if solved, else 0.
    A constant feature is at its ideal (regret 0), so it never dominates the max. Rewards lie in
    [1 - max P, 1] for solved trajectories (with P in [0, 1]).
    """
    features = jnp.asarray(features, jnp.float32)
    solved = jnp.asarray(solved)
    preference = jnp.asarray(preference, jnp.float32)
    _check_shapes(features, solved, preference)
    normalised = group_minmax(signed_features(features), constant_value=1.0)
    regret = preference[:, None, :] * (1.0 - normalised)
    reward = 1.0 - jnp.max(regret, axis=-1)
    return jnp.where(solved.astype(bool), reward, 0.0)


def update_moments(state: RunningMoments, values_N2, ema_decay: float = 0.0) -> RunningMoments:
    """Fold a batch of (cost, latency) rows [N, 2] into the running moments (pure).

    ema_decay == 0: exact cumulative mean/variance (Chan et al. parallel update). Otherwise an exponential
    moving average of the batch mean and variance (the first batch initialises it).
    """
    values = jnp.asarray(values_N2, jnp.float32).reshape(-1, 2)
    n = jnp.float32(values.shape[0])
    batch_mean = jnp.mean(values, axis=0)
    batch_var = jnp.var(values, axis=0)
    if ema_decay > 0.0:
        first = state.count == 0
        mean = jnp.where(first, batch_mean, ema_decay * state.mean + (1 - ema_decay) * batch_mean)
        var = jnp.where(first, batch_var, ema_decay * state.var + (1 - ema_decay) * batch_var)
        return RunningMoments(state.count + n, mean, var)
    total = state.count + n
    delta = batch_mean - state.mean
    mean = state.mean + delta * n / total
    m2 = state.var * state.count + batch_var * n + delta**2 * state.count * n / total
    return RunningMoments(total, mean, m2 / total)


def zscore_reward(features, solved, preference, state: RunningMoments, cfg: RewardConfig):
    """outcome - (w_cost z(cost) + w_latency z(latency)), z from running statistics including this batch.

    Returns (reward [g, G], new_state).
    """
    features = jnp.asarray(features, jnp.float32)
    solved = jnp.asarray(solved)
    _check_shapes(features, solved, None if preference is None else jnp.asarray(preference))
    cost_latency = features[..., [COST, LATENCY]]  # [g, G, 2]
    new_state = update_moments(state, cost_latency, cfg.ema_decay)
    z = (cost_latency - new_state.mean) / (jnp.sqrt(new_state.var) + cfg.zscore_eps)
    if cfg.weights_from_preference:
        if preference is None:
            raise ValueError("RewardConfig.weights_from_preference=True needs a preference array [groups, F]")
        preference = jnp.asarray(preference, jnp.float32)
        weights = preference[:, None, [COST, LATENCY]]  # [g, 1, 2]
    else:
        weights = jnp.asarray([cfg.cost_weight, cfg.latency_weight], jnp.float32)
    reward = features[..., OUTCOME] - jnp.sum(weights * z, axis=-1)
    if cfg.zscore_gate_on_solved:
        reward = jnp.where(solved.astype(bool), reward, 0.0)
    return reward, new_state


REWARD_KINDS = ("paper", "zscore", "chebyshev")


def compute_rewards(cfg: RewardConfig, features, solved, preference, state: Optional[RunningMoments] = None):
    """Dispatch on cfg.kind. Returns (rewards [g, G], new_state, metrics dict of scalars).

    `state` is only read by "zscore" (None -> fresh statistics); other kinds return it unchanged.
    """
    if cfg.kind not in REWARD_KINDS:
        raise ValueError(f"RewardConfig.kind must be one of {REWARD_KINDS}; got {cfg.kind!r}")
    if state is None:
        state = init_reward_state()
    if cfg.kind == "paper":
        rewards, new_state = paper_reward(features, solved, preference), state
    elif cfg.kind == "chebyshev":
        rewards, new_state = chebyshev_reward(features, solved, preference), state
    else:
        rewards, new_state = zscore_reward(features, solved, preference, state, cfg)
    features = jnp.asarray(features, jnp.float32)
    metrics = {
        "reward/mean": jnp.mean(rewards),
        "reward/std": jnp.std(rewards),
        "reward/solved_rate": jnp.mean(jnp.asarray(solved).astype(jnp.float32)),
        "reward/cost_mean": jnp.mean(features[..., COST]),
        "reward/latency_mean": jnp.mean(features[..., LATENCY]),
    }
    return rewards, new_state, metrics
