"""Per-token log-probs under the Policy and the jitted GRPO update (one optimizer step).

The update takes the `as_dict()` of a PackedBatch (or a prefix-shared SharedPackedBatch, which adds
prefix_segment_ids and prev_index) with fields loss_mask and advantages (per token), all [R, L], or with a
leading micro-batch axis [M, R, L] for gradient accumulation. Normalisers (loss-token count, sequence count)
are computed on the whole batch, so M micro-batches give the same gradient as one full batch for every
aggregation mode.

- ``old_logp`` is optional: without it the behaviour policy is the current one (one PPO epoch, on-policy),
  old = stop_gradient(logp), so the ratio is exactly 1 with the gradient of logp, as trl does; no separate
  old-log-prob forward. With several PPO epochs the loop passes the log-probs of the first epoch.
- The reference log-probs are needed only when the KL is on: either ``ref_logp`` in the batch or
  ``ref_params`` given to the update (then computed inside the same jitted step).
- Gradients, the optimizer state and the parameters are float32 (master weights); the model computes in
  ``model_cfg.dtype``.

PPO epochs, mini-batches and reference refreshes are the training loop's business: it calls `update` once
per optimizer step (AlgoConfig carries ppo_epochs, micro_batches and ref_refresh_interval for it).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from orchestra_jax.model import ModelConfig
from orchestra_jax.model import token_logprobs as _model_token_logprobs
from orchestra_jax.rl.advantages import AdvantageConfig
from orchestra_jax.rl.batch import InvalidTurns
from orchestra_jax.rl.losses import (LossConfig, count_tokens_and_segments, kl_penalised_advantages, policy_loss,
                                     validate_loss_config)
from orchestra_jax.rl.optim import NonFiniteGuardState, OptimConfig, make_schedule, tree_all_finite


@dataclasses.dataclass(frozen=True)
class AlgoConfig:
    """Everything about the RL algorithm (conf/algo/*.yaml)."""

    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    advantage: AdvantageConfig = dataclasses.field(default_factory=AdvantageConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    ppo_epochs: int = 1  # optimizer passes over each rollout batch (old_logp fixed during them)
    micro_batches: int = 1  # gradient-accumulation micro-batches per optimizer step
    ref_refresh_interval: int = 0  # copy the policy into the reference every N steps; 0 = keep the initial model
    invalid_turns: InvalidTurns = InvalidTurns.train  # tokens of turns the env refused: train | drop | penalise


REQUIRED_KEYS = ("tokens", "positions", "segment_ids", "loss_mask", "advantages")
SHARED_PREFIX_KEYS = ("prefix_segment_ids", "prev_index")  # optional, together (prefix-shared rows)
LOGPROB_CHUNK = 128  # positions per chunk of the chunked log-softmax
_MIN_METRICS = ("ratio/min",)
_MAX_METRICS = ("ratio/max",)


def _merge_metric(key, a, b):
    """Micro-batch metrics: policy_loss's means are already divided by the global token count, so they add."""
    if key in _MIN_METRICS:
        return jnp.minimum(a, b)
    if key in _MAX_METRICS:
        return jnp.maximum(a, b)
    return a + b


def _metric_identity(key):
    value = jnp.inf if key in _MIN_METRICS else -jnp.inf if key in _MAX_METRICS else 0.0
    return jnp.asarray(value, jnp.float32)


def token_logprobs(model_cfg: ModelConfig, params, tokens, positions, segment_ids, prefix_segment_ids=None,
                   prev_index=None):
    """Run the Policy over packed rows; returns (logp_BT, entropy_BT) in the ARCHITECTURE.md convention.

    The one call site of the model's log-probs for training: chunked log-softmax over the vocabulary
    (`model.token_logprobs`), never a float32 [rows, len, vocab] logits buffer. prefix_segment_ids /
    prev_index come with prefix-shared rows (`data.packing.pack_shared`); both None for plain packed rows.
    """
    return _model_token_logprobs(model_cfg, params, tokens, positions, segment_ids, prefix_segment_ids,
                                 prev_index, chunk_size=LOGPROB_CHUNK, with_entropy=True)


def batch_logprobs(model_cfg: ModelConfig, params, batch: dict):
    """token_logprobs over a batch dict, with the optional prefix-sharing fields when it has them."""
    return token_logprobs(model_cfg, params, batch["tokens"], batch["positions"], batch["segment_ids"],
                          batch.get("prefix_segment_ids"), batch.get("prev_index"))


def split_micro_batches(batch: dict, micro_batches: int) -> dict:
    """Host-side: reshape every [R, L] array to [M, R / M, L] (R must divide evenly)."""
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be >= 1; got {micro_batches}")
    rows = np.shape(batch["tokens"])[0]
    if rows % micro_batches:
        raise ValueError(f"batch has {rows} rows, not divisible into micro_batches={micro_batches}")
    return {k: np.reshape(v, (micro_batches, rows // micro_batches) + tuple(np.shape(v)[1:])) for k, v in batch.items()}


def _check_batch(batch: dict, needs_ref: bool):
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    if needs_ref:
        missing.append("ref_logp (or pass ref_params)")
    present = [k for k in SHARED_PREFIX_KEYS if k in batch]
    if present and len(present) != len(SHARED_PREFIX_KEYS):
        missing.append(f"{[k for k in SHARED_PREFIX_KEYS if k not in batch]} (prefix-shared rows need both)")
    if missing:
        raise ValueError(f"update batch is missing keys {missing}; has {sorted(batch)}")
    shape = tuple(np.shape(batch["tokens"]))
    if len(shape) not in (2, 3):
        raise ValueError(f"update batch 'tokens' must be [R, L] or [M, R, L]; got shape {shape}")
    for k, v in batch.items():
        if tuple(np.shape(v)) != shape:
            raise ValueError(f"update batch {k!r} has shape {tuple(np.shape(v))}; expected {shape} like 'tokens'")


def build_update(model_cfg: ModelConfig, algo_cfg: AlgoConfig, optimizer: optax.GradientTransformation) -> Callable:
    """The update function before jit (for callers that jit it with shardings themselves)."""
    loss_cfg = algo_cfg.loss
    validate_loss_config(loss_cfg)
    needs_ref = loss_cfg.kl_coef != 0.0
    schedule = make_schedule(algo_cfg.optim)

    def micro_loss(params, mb, ref_params, num_tokens, num_segments):
        logp, entropy = batch_logprobs(model_cfg, params, mb)
        # one PPO epoch: the behaviour policy is this one (ratio 1, gradient of logp), no extra forward
        old_logp = mb["old_logp"] if "old_logp" in mb else jax.lax.stop_gradient(logp)
        ref_logp = mb.get("ref_logp")
        if needs_ref and ref_logp is None:
            ref_logp, _ = batch_logprobs(model_cfg, ref_params, mb)
            ref_logp = jax.lax.stop_gradient(ref_logp)
        advantages = mb["advantages"]
        if loss_cfg.kl_in_reward and loss_cfg.kl_coef != 0.0:
            advantages = kl_penalised_advantages(advantages, old_logp, ref_logp, mb["loss_mask"], loss_cfg)
        return policy_loss(logp, old_logp, advantages, mb["loss_mask"], mb["segment_ids"], loss_cfg,
                           ref_logp=ref_logp, entropy=entropy, num_tokens=num_tokens,
                           num_segments=num_segments)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def update(params, opt_state, batch, ref_params=None):
        _check_batch(batch, needs_ref and ref_params is None and "ref_logp" not in batch)
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        if batch["tokens"].ndim == 2:
            batch = {k: v[None] for k, v in batch.items()}
        num_tokens, num_segments = count_tokens_and_segments(batch["loss_mask"], batch["segment_ids"])

        if batch["tokens"].shape[0] == 1:
            (loss, metrics), grads = grad_fn(params, {k: v[0] for k, v in batch.items()}, ref_params, num_tokens,
                                             num_segments)
            grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        else:
            # One traced copy of the forward/backward inside the scan (compile time), sums in float32.
            def body(carry, mb):
                loss_acc, metrics_acc, grads_acc = carry
                (loss_m, metrics_m), grads_m = grad_fn(params, mb, ref_params, num_tokens, num_segments)
                merged = {k: _merge_metric(k, metrics_acc[k], metrics_m[k]) for k in metrics_acc}
                grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads_m)
                return (loss_acc + loss_m, merged, grads_acc), None

            metric_shapes = jax.eval_shape(lambda mb: grad_fn(params, mb, ref_params, num_tokens, num_segments)[0][1],
                                           {k: v[0] for k, v in batch.items()})
            init = (jnp.zeros((), jnp.float32), {k: _metric_identity(k) for k in metric_shapes},
                    jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
            (loss, metrics, grads), _ = jax.lax.scan(body, init, batch)
        if any(p.dtype != jnp.float32 for p in jax.tree.leaves(params)):
            raise ValueError("update: parameters must be float32 master weights (model.dtype sets the compute "
                             f"dtype); got {sorted({str(p.dtype) for p in jax.tree.leaves(params)})}")

        finite = jnp.isfinite(loss) & tree_all_finite(grads)
        # A non-finite loss with finite gradients is still skipped: poison the gradients for the guard.
        grads_for_opt = jax.tree.map(lambda g: jnp.where(finite, g, jnp.nan), grads)
        updates, new_opt_state = optimizer.update(grads_for_opt, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        new_params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_params, params)
        if not isinstance(opt_state, NonFiniteGuardState):
            new_opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_opt_state, opt_state)

        metrics = {k: (jnp.where(jnp.isfinite(v), v, jnp.nan) if k in _MIN_METRICS + _MAX_METRICS else v)
                   for k, v in metrics.items()}
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["skipped"] = (~finite).astype(jnp.float32)
        metrics["num_tokens"] = num_tokens
        metrics["num_sequences"] = num_segments
        if isinstance(opt_state, NonFiniteGuardState):
            metrics["lr"] = jnp.asarray(schedule(opt_state.num_applied), jnp.float32)
            metrics["skipped_total"] = new_opt_state.num_skipped.astype(jnp.float32)
        return new_params, new_opt_state, metrics

    return update


def make_update_fn(model_cfg: ModelConfig, algo_cfg: AlgoConfig, optimizer: optax.GradientTransformation):
    """Jitted update(params, opt_state, batch, ref_params=None) -> (params, opt_state, metrics)."""
    return jax.jit(build_update(model_cfg, algo_cfg, optimizer))
