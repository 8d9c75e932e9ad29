"""Group-relative advantages (GRPO): baseline = group mean, optional std scaling, clipping, filtering."""
from __future__ import annotations

import dataclasses
import enum
from typing import Optional

import jax.numpy as jnp


class StdKind(enum.StrEnum):
    """Which standard deviation scales the advantages."""

    sample = "sample"  # ddof = 1, like torch.std
    population = "population"  # ddof = 0


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    """How group rewards [g, G] become advantages."""

    scale_by_std: bool = True  # False = Dr. GRPO (mean baseline only)
    std: StdKind = StdKind.sample  # sample (ddof=1, like torch.std) | population (ddof=0)
    eps: float = 1e-6  # A = (r - mean) / (std + eps)
    clip: Optional[float] = None  # clip advantages to [-clip, clip]; None = off (released code: 3)
    min_group_std: Optional[float] = None  # keep only groups with std > max(this, zero_std_tol); None = keep all (paper: 0.1)
    zero_std_tol: float = 1e-6  # a group whose reward std is <= this counts as zero-variance (float32 noise)
    high_z_boost: float = 0.0  # released code adds 0.1 to advantages with z >= high_z_threshold; 0 = off
    high_z_threshold: float = 1.0


STD_KINDS = tuple(k.value for k in StdKind)


def group_std(rewards_gG, kind: str = "sample"):
    """Per-group standard deviation [g, 1] (sample: ddof=1; population: ddof=0)."""
    if kind not in STD_KINDS:
        raise ValueError(f"AdvantageConfig.std must be one of {STD_KINDS}; got {kind!r}")
    ddof = 1 if kind == "sample" else 0
    if ddof and rewards_gG.shape[1] < 2:
        raise ValueError(f"sample std needs a group size G >= 2; got rewards of shape {tuple(rewards_gG.shape)}")
    return jnp.std(rewards_gG, axis=1, keepdims=True, ddof=ddof)


def group_advantages(rewards, cfg: AdvantageConfig):
    """Group-relative advantages.

    Args:
      rewards: float [g, G] (one group = G rollouts of the same prompt).
    Returns:
      advantages float32 [g, G]: (r - mean) / (std + eps) if cfg.scale_by_std else (r - mean), then the optional
        high-z boost (added where the normalised value >= threshold), then the optional clip to [-clip, clip];
      keep bool [g, G]: False for every member of a group whose std <= cfg.min_group_std (filter on). Callers
        drop those trajectories (or zero their loss mask);
      metrics: scalars, including the number and fraction of zero-variance groups (all rewards equal).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [groups, G]; got shape {tuple(rewards.shape)}")
    mean = jnp.mean(rewards, axis=1, keepdims=True)
    std = group_std(rewards, cfg.std)
    centred = rewards - mean
    advantages = centred / (std + cfg.eps) if cfg.scale_by_std else centred
    if cfg.high_z_boost:
        advantages = jnp.where(advantages >= cfg.high_z_threshold, advantages + cfg.high_z_boost, advantages)
    if cfg.clip is not None:
        if cfg.clip <= 0:
            raise ValueError(f"AdvantageConfig.clip must be > 0 or None; got {cfg.clip}")
        advantages = jnp.clip(advantages, -cfg.clip, cfg.clip)

    # a constant group of 0.7 has a float32 sample std of ~6e-8, not 0: compare with a tolerance
    zero_variance_g = std[:, 0] <= cfg.zero_std_tol
    if cfg.min_group_std is not None:
        keep_g = std[:, 0] > max(cfg.min_group_std, cfg.zero_std_tol)
    else:
        keep_g = jnp.ones((rewards.shape[0],), bool)
    keep = jnp.broadcast_to(keep_g[:, None], rewards.shape)
    num_groups = rewards.shape[0]
    metrics = {
        "adv/zero_variance_groups": jnp.sum(zero_variance_g).astype(jnp.float32),
        "adv/zero_variance_frac": jnp.mean(zero_variance_g.astype(jnp.float32)),
        "adv/kept_groups": jnp.sum(keep_g).astype(jnp.float32),
        "adv/kept_frac": jnp.sum(keep_g).astype(jnp.float32) / num_groups,
        "adv/group_std_mean": jnp.mean(std),
        "adv/mean": jnp.mean(advantages),
        "adv/abs_mean": jnp.mean(jnp.abs(advantages)),
        "adv/min": jnp.min(advantages),
        "adv/max": jnp.max(advantages),
    }
    return advantages, keep, metrics
