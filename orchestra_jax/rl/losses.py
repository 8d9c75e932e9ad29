"""The clipped-surrogate GRPO / PPO policy loss over packed rows.

All inputs are per token [B, T]. A row holds several segments (segment id 1..n, 0 = padding); each segment is
one trajectory. Per-sequence aggregations use sums over (row, segment) pairs with static shapes
(`jax.ops.segment_sum` over B * (T + 1) buckets), so packed and padded layouts give the same loss.

Mapping to trl 1.16 `GRPOTrainer` loss types (same clip, same k3 KL added per token before reduction; tested):
    trl "grpo"    -> aggregation "seq_mean_token_mean" (token mean inside each sequence, mean over sequences)
    trl "bnpo"    -> aggregation "token_mean"          (sum over all loss tokens / number of loss tokens)
    trl "dapo"    -> aggregation "token_mean"          (trl divides by num_items_in_batch = global token count)
    trl "dr_grpo" -> aggregation "dr_grpo" with max_tokens = max_completion_length (sum / (n_seq * max_tokens))
"seq_mean_token_sum" (token sum per sequence, mean over sequences) has no trl counterpart.
A sequence (segment) counts in n_seq if it holds at least one loss token.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Optional

import jax
import jax.numpy as jnp


class KLEstimator(enum.StrEnum):
    """Schulman's per-token KL estimators (k1 only where its zero expected gradient does not matter)."""

    k1 = "k1"
    k2 = "k2"
    k3 = "k3"


class Aggregation(enum.StrEnum):
    """How per-token losses reduce to the scalar loss (see the module docstring)."""

    token_mean = "token_mean"
    seq_mean_token_mean = "seq_mean_token_mean"
    seq_mean_token_sum = "seq_mean_token_sum"
    dr_grpo = "dr_grpo"


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Policy-loss settings."""

    clip_low: float = 0.2  # ratio clipped below at 1 - clip_low
    clip_high: float = 0.2  # ratio clipped above at 1 + clip_high (clip-higher: > clip_low)
    dual_clip: Optional[float] = None  # dual-clip c > 1 for negative advantages (loss <= -A c); None = off
    kl_estimator: KLEstimator = KLEstimator.k3  # k1 (reward only) | k2 (0.5 (logp - ref)^2) | k3 (exp(ref-logp) - (ref-logp) - 1)
    kl_coef: float = 0.0  # weight of the KL to the reference policy; 0 = no reference needed
    kl_in_reward: bool = False  # True: subtract kl_coef * KL(old || ref) from the per-token advantage instead
    kl_clamp: Optional[float] = 10.0  # clamp the per-token KL to [-c, c] (as verl does for k3); None = off
    aggregation: Aggregation = Aggregation.token_mean  # token_mean | seq_mean_token_mean | seq_mean_token_sum | dr_grpo
    max_tokens: int = 4096  # dr_grpo: constant per-sequence normaliser (the generation budget in tokens)
    entropy_coef: float = 0.0  # entropy bonus: loss -= entropy_coef * token-mean entropy
    max_log_ratio: float = 20.0  # log(pi / pi_old) clamped to +-this before exp (overflow guard)


KL_ESTIMATORS = tuple(e.value for e in KLEstimator)
AGGREGATIONS = tuple(a.value for a in Aggregation)


def validate_loss_config(cfg: LossConfig) -> None:
    """Raise ValueError naming the bad field."""
    if cfg.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"LossConfig.kl_estimator must be one of {KL_ESTIMATORS}; got {cfg.kl_estimator!r}")
    if cfg.aggregation not in AGGREGATIONS:
        raise ValueError(f"LossConfig.aggregation must be one of {AGGREGATIONS}; got {cfg.aggregation!r}")
    if not (0 <= cfg.clip_low < 1) or cfg.clip_high < 0:
        raise ValueError(f"LossConfig.clip_low must be in [0, 1) and clip_high >= 0; got {cfg.clip_low}, {cfg.clip_high}")
    if cfg.dual_clip is not None and cfg.dual_clip <= 1:
        raise ValueError(f"LossConfig.dual_clip must be > 1 or None; got {cfg.dual_clip}")
    if cfg.kl_estimator == "k1" and cfg.kl_coef != 0.0 and not cfg.kl_in_reward:
        # E_pi[grad (logp - ref)] = E_pi[grad logp] = 0: a k1 KL in the loss pulls nothing towards the reference
        raise ValueError("LossConfig.kl_estimator=k1 has zero expected gradient as a loss term; use k2 or k3 in "
                         "the loss, or k1 with kl_in_reward=true")
    if cfg.kl_clamp is not None and cfg.kl_clamp <= 0:
        raise ValueError(f"LossConfig.kl_clamp must be > 0 or None; got {cfg.kl_clamp}")
    if cfg.aggregation == "dr_grpo" and cfg.max_tokens <= 0:
        raise ValueError(f"LossConfig.max_tokens must be > 0 for dr_grpo; got {cfg.max_tokens}")


def kl_estimate(logp, ref_logp, estimator: str):
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1 / k2 / k3)."""
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k2":
        return 0.5 * jnp.square(logp - ref_logp)
    if estimator == "k3":
        # exp overflows float32 past ~88; clamp like verl's low_var_kl (identical to trl inside +-20)
        log_ratio = jnp.clip(ref_logp - logp, -20.0, 20.0)
        return jnp.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}; got {estimator!r}")


# ---------------------------------------------------------------- segment bookkeeping (static shapes)


def _segment_index(segment_ids_BT):
    """Flat bucket id of each token's (row, segment) pair and the number of buckets B * (T + 1)."""
    batch, length = segment_ids_BT.shape
    rows = jnp.arange(batch, dtype=jnp.int32)[:, None]
    return rows * (length + 1) + segment_ids_BT.astype(jnp.int32), batch * (length + 1)


def segment_sums(values_BT, segment_ids_BT):
    """Sum of values over each (row, segment) bucket: float [B * (T + 1)] (bucket row*(T+1) + seg)."""
    index, num = _segment_index(segment_ids_BT)
    return jax.ops.segment_sum(values_BT.reshape(-1), index.reshape(-1), num_segments=num)


def per_token_segment_total(values_BT, segment_ids_BT):
    """Each token gets the sum of values over its own segment: [B, T]."""
    index, _ = _segment_index(segment_ids_BT)
    return segment_sums(values_BT, segment_ids_BT)[index]


def effective_mask(loss_mask_BT, segment_ids_BT):
    """float32 loss mask with padding (segment 0) forced to 0."""
    return jnp.asarray(loss_mask_BT, jnp.float32) * (jnp.asarray(segment_ids_BT) != 0)


def count_tokens_and_segments(loss_mask_BT, segment_ids_BT):
    """(number of loss tokens, number of segments holding >= 1 loss token) as float32 scalars.

    Works on [B, T] or with leading axes (e.g. micro-batches [M, R, L]): rows are flattened first.
    """
    segment_ids = jnp.asarray(segment_ids_BT)
    segment_ids = segment_ids.reshape(-1, segment_ids.shape[-1])
    mask = effective_mask(jnp.asarray(loss_mask_BT).reshape(segment_ids.shape), segment_ids)
    per_segment = segment_sums(mask, segment_ids)
    return jnp.sum(mask), jnp.sum(per_segment > 0).astype(jnp.float32)


def aggregate(per_token_BT, mask_BT, segment_ids_BT, cfg: LossConfig, num_tokens, num_segments):
    """Reduce a per-token quantity with cfg.aggregation; mask_BT must already exclude padding."""
    masked = per_token_BT * mask_BT
    if cfg.aggregation == "token_mean":
        return jnp.sum(masked) / num_tokens
    if cfg.aggregation == "seq_mean_token_mean":
        tokens_in_segment = per_token_segment_total(mask_BT, segment_ids_BT)
        return jnp.sum(masked / jnp.maximum(tokens_in_segment, 1.0)) / num_segments
    if cfg.aggregation == "seq_mean_token_sum":
        return jnp.sum(masked) / num_segments
    if cfg.aggregation == "dr_grpo":
        return jnp.sum(masked) / (num_segments * cfg.max_tokens)
    raise ValueError(f"LossConfig.aggregation must be one of {AGGREGATIONS}; got {cfg.aggregation!r}")


# ---------------------------------------------------------------- the loss


def policy_loss(logp, old_logp, advantages, loss_mask, segment_ids, cfg: LossConfig, ref_logp=None,
                entropy=None, *, num_tokens=None, num_segments=None):
    """Clipped surrogate (+ dual clip) + KL to the reference - entropy bonus, aggregated per cfg.

    Args (all [B, T]):
      logp: log-probs of the sampled tokens under the current policy (differentiated).
      old_logp: log-probs under the behaviour policy (constant).
      advantages: per-token advantages (the trajectory's advantage broadcast over its tokens).
      loss_mask: 1 on policy tokens; segment_ids: 0 = padding, 1..n = trajectories in the row.
      ref_logp: reference log-probs; required when cfg.kl_coef != 0 and not cfg.kl_in_reward.
      entropy: per-token entropy of the current policy; required when cfg.entropy_coef != 0.
      num_tokens / num_segments: normalisers; default to this batch's counts. Pass the full batch's counts
        when this call sees one micro-batch of it: micro-batch losses (and metrics other than min/max) then
        sum exactly to the full-batch values.
    Returns:
      (loss scalar, metrics dict of scalars). Per-token means in metrics are sums over this call's loss tokens
      divided by num_tokens; "ratio/min" / "ratio/max" are +inf / -inf when there is no loss token.
    """
    validate_loss_config(cfg)
    logp = jnp.asarray(logp, jnp.float32)
    shape = logp.shape
    for name, value in (("old_logp", old_logp), ("advantages", advantages), ("loss_mask", loss_mask),
                        ("segment_ids", segment_ids), ("ref_logp", ref_logp), ("entropy", entropy)):
        if value is not None and tuple(jnp.shape(value)) != tuple(shape):
            raise ValueError(f"policy_loss: {name} has shape {tuple(jnp.shape(value))}, expected {tuple(shape)} like logp")
    if len(shape) != 2:
        raise ValueError(f"policy_loss expects per-token [B, T] arrays; got logp of shape {tuple(shape)}")
    use_kl = cfg.kl_coef != 0.0 and not cfg.kl_in_reward
    if use_kl and ref_logp is None:
        raise ValueError("policy_loss: ref_logp is required when LossConfig.kl_coef != 0 and kl_in_reward is False")
    if cfg.entropy_coef != 0.0 and entropy is None:
        raise ValueError("policy_loss: entropy is required when LossConfig.entropy_coef != 0")

    segment_ids = jnp.asarray(segment_ids)
    mask = effective_mask(loss_mask, segment_ids)
    local_tokens, local_segments = count_tokens_and_segments(mask, segment_ids)
    num_tokens = jnp.maximum(local_tokens if num_tokens is None else jnp.asarray(num_tokens, jnp.float32), 1.0)
    num_segments = jnp.maximum(local_segments if num_segments is None else jnp.asarray(num_segments, jnp.float32), 1.0)
    advantages = jnp.asarray(advantages, jnp.float32)

    log_ratio = jnp.clip(logp - old_logp, -cfg.max_log_ratio, cfg.max_log_ratio)
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    pg_loss = jnp.maximum(-advantages * ratio, -advantages * clipped_ratio)
    negative = advantages < 0
    if cfg.dual_clip is not None:
        # Dual clip (Ye et al. 2020): for A < 0 the loss is bounded by -A * c however large the ratio grows.
        pg_loss = jnp.where(negative, jnp.minimum(pg_loss, -advantages * cfg.dual_clip), pg_loss)
    per_token = pg_loss
    if use_kl:
        kl = kl_estimate(logp, ref_logp, cfg.kl_estimator)
        if cfg.kl_clamp is not None:
            kl = jnp.clip(kl, -cfg.kl_clamp, cfg.kl_clamp)
        per_token = per_token + cfg.kl_coef * kl

    def agg(x):
        return aggregate(x, mask, segment_ids, cfg, num_tokens, num_segments)

    def token_mean(x):
        return jnp.sum(x * mask) / num_tokens

    loss = agg(per_token)
    metrics = {"loss/pg": agg(pg_loss)}
    if use_kl:
        metrics["loss/kl_ref"] = agg(kl)
        metrics["kl_ref"] = token_mean(kl)
    if entropy is not None:
        entropy = jnp.asarray(entropy, jnp.float32)
        entropy_mean = token_mean(entropy)
        metrics["entropy"] = entropy_mean
        if cfg.entropy_coef != 0.0:
            # Like trl: the bonus is a token mean whatever the policy-term aggregation.
            loss = loss - cfg.entropy_coef * entropy_mean
    low = (ratio < 1.0 - cfg.clip_low) & negative
    high = (ratio > 1.0 + cfg.clip_high) & (advantages > 0)
    metrics["clip/low_frac"] = token_mean(low)
    metrics["clip/high_frac"] = token_mean(high)
    if cfg.dual_clip is not None:
        metrics["clip/dual_frac"] = token_mean((ratio > cfg.dual_clip) & negative)
    else:
        metrics["clip/dual_frac"] = jnp.zeros((), jnp.float32)
    metrics["approx_kl"] = token_mean(ratio - 1.0 - log_ratio)  # k3 of KL(pi_old || pi)
    metrics["ratio/mean"] = token_mean(ratio)
    on = mask > 0
    metrics["ratio/min"] = jnp.min(jnp.where(on, ratio, jnp.inf))
    metrics["ratio/max"] = jnp.max(jnp.where(on, ratio, -jnp.inf))
    metrics["loss/total"] = loss
    return loss, metrics


def kl_penalised_advantages(advantages_BT, old_logp, ref_logp, loss_mask, cfg: LossConfig):
    """KL in the reward path: A_t - kl_coef * KL_t(old || ref) on loss tokens (no gradient; old is constant).

    Used by the update when cfg.kl_in_reward is True (then policy_loss adds no KL term).
    """
    kl = kl_estimate(jnp.asarray(old_logp, jnp.float32), jnp.asarray(ref_logp, jnp.float32), cfg.kl_estimator)
    if cfg.kl_clamp is not None:
        kl = jnp.clip(kl, -cfg.kl_clamp, cfg.kl_clamp)
    penalty = jax.lax.stop_gradient(cfg.kl_coef * kl * jnp.asarray(loss_mask, jnp.float32))
    return jnp.asarray(advantages_BT, jnp.float32) - penalty


def sequence_kl(old_logp, ref_logp, loss_mask, segment_ids, estimator: str = "k3"):
    """Summed KL(old || ref) of every (row, segment) pair [B * (T + 1)], for subtracting from sequence rewards."""
    kl = kl_estimate(jnp.asarray(old_logp, jnp.float32), jnp.asarray(ref_logp, jnp.float32), estimator)
    return segment_sums(kl * effective_mask(loss_mask, segment_ids), jnp.asarray(segment_ids))
