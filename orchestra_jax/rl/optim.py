"""The optimizer from config: AdamW, global-norm clipping, a learning-rate schedule, a non-finite guard."""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax


class Schedule(enum.StrEnum):
    """Learning-rate schedules (each after linear warmup)."""

    constant = "constant"
    cosine = "cosine"
    linear = "linear"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with gradient clipping and a schedule."""

    lr: float = 1e-6  # peak learning rate
    b1: float = 0.9  # Adam beta1
    b2: float = 0.999  # Adam beta2
    eps: float = 1e-8  # Adam epsilon
    weight_decay: float = 0.01  # decoupled weight decay (AdamW), applied to every parameter
    grad_clip_norm: Optional[float] = 1.0  # clip by global norm; None or 0 = off
    schedule: Schedule = Schedule.constant  # constant | cosine | linear (each after linear warmup)
    warmup_steps: int = 0  # linear warmup from 0 to lr over this many updates
    total_steps: int = 1000  # cosine / linear: updates until the end value (including warmup)
    end_lr_ratio: float = 0.0  # cosine / linear: final lr = lr * end_lr_ratio


SCHEDULES = tuple(x.value for x in Schedule)


def validate_optim_config(cfg: OptimConfig) -> None:
    """Raise ValueError naming the bad field (make_optimizer runs it too)."""
    make_schedule(cfg)
    if cfg.grad_clip_norm is not None and cfg.grad_clip_norm < 0:
        raise ValueError(f"OptimConfig.grad_clip_norm must be > 0 or None; got {cfg.grad_clip_norm}")
    if not (0 <= cfg.b1 < 1 and 0 <= cfg.b2 < 1) or cfg.eps <= 0 or cfg.weight_decay < 0:
        raise ValueError(f"OptimConfig: need 0 <= b1, b2 < 1, eps > 0, weight_decay >= 0; got b1={cfg.b1}, "
                         f"b2={cfg.b2}, eps={cfg.eps}, weight_decay={cfg.weight_decay}")


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Learning rate as a function of the number of applied updates."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"OptimConfig.schedule must be one of {SCHEDULES}; got {cfg.schedule!r}")
    if cfg.lr < 0 or cfg.warmup_steps < 0:
        raise ValueError(f"OptimConfig.lr and warmup_steps must be >= 0; got {cfg.lr}, {cfg.warmup_steps}")
    end = cfg.lr * cfg.end_lr_ratio
    decay_steps = cfg.total_steps - cfg.warmup_steps
    if cfg.schedule != "constant" and decay_steps <= 0:
        raise ValueError(f"OptimConfig.total_steps ({cfg.total_steps}) must exceed warmup_steps ({cfg.warmup_steps})")
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.end_lr_ratio)
    else:
        main = optax.linear_schedule(cfg.lr, end, decay_steps)
    if cfg.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])


class NonFiniteGuardState(NamedTuple):
    """State of `skip_nonfinite`: the inner state plus cumulative counters (saved with the checkpoint)."""

    inner: Any
    num_applied: jnp.ndarray  # int32: updates applied so far (drives the schedule)
    num_skipped: jnp.ndarray  # int32: updates skipped because a gradient was NaN / inf


def tree_all_finite(tree) -> jnp.ndarray:
    """True when every element of every leaf is finite."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Wrap `inner`: a gradient with any NaN / inf gives zero updates, leaves the inner state untouched and
    counts a skip. (Like optax.apply_if_finite, without its give-up threshold, plus an applied counter.)"""

    def init(params):
        return NonFiniteGuardState(inner.init(params), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def update(grads, state, params=None):
        finite = tree_all_finite(grads)
        safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        updates, new_inner = inner.update(safe_grads, state.inner, params)
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        new_inner = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_inner, state.inner)
        return updates, NonFiniteGuardState(new_inner, state.num_applied + finite.astype(jnp.int32),
                                            state.num_skipped + (~finite).astype(jnp.int32))

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """skip_nonfinite(chain(clip_by_global_norm, adamw(schedule)))."""
    schedule = make_schedule(cfg)
    parts = []
    if cfg.grad_clip_norm:
        if cfg.grad_clip_norm < 0:
            raise ValueError(f"OptimConfig.grad_clip_norm must be > 0 or None; got {cfg.grad_clip_norm}")
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
    return skip_nonfinite(optax.chain(*parts))
