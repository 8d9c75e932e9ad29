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
                   prev_index=None, loss_index=None):
    """Run the Policy over packed rows; returns (logp_BT, entropy_BT) in the ARCHITECTURE.md convention.

    The one call site of the model's log-probs for training: chunked log-softmax over the vocabulary
    (`model.token_logprobs`), never a float32 [rows, len, vocab] logits buffer. prefix_segment_ids /
    prev_index come with prefix-shared rows (`data.shared_packing.pack_shared`); both None for plain packed rows.
    loss_index [B, K] (`rl.batch.loss_positions`): the output head runs only at these positions (the loss
    tokens, -1 = none) and every other position gets logp = entropy = 0, which the loss masks anyway.
    """
    logp, entropy = _model_token_logprobs(model_cfg, params, tokens, positions, segment_ids, prefix_segment_ids,
                                          prev_index, chunk_size=LOGPROB_CHUNK, with_entropy=True,
                                          target_index_BK=loss_index)
    if loss_index is None:
        return logp, entropy
    rows_B1 = jnp.arange(logp.shape[0])[:, None]
    at_BK = jnp.where(loss_index >= 0, loss_index, tokens.shape[1])  # out of range: dropped

    def scatter(values_BK):
        return jnp.zeros(tokens.shape, values_BK.dtype).at[rows_B1, at_BK].set(values_BK, mode="drop")
    return scatter(logp), scatter(entropy)


def batch_logprobs(model_cfg: ModelConfig, params, batch: dict):
    """token_logprobs over a batch dict, with the optional prefix-sharing and loss_index fields when it has them."""
    return token_logprobs(model_cfg, params, batch["tokens"], batch["positions"], batch["segment_ids"],
                          batch.get("prefix_segment_ids"), batch.get("prev_index"), batch.get("loss_index"))


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
        if k == "loss_index" and tuple(np.shape(v))[:-1] == shape[:-1]:
            continue  # [..., R, K]: K positions per row
        if tuple(np.shape(v)) != shape:
            raise ValueError(f"update batch {k!r} has shape {tuple(np.shape(v))}; expected {shape} like 'tokens'")


class UpdateFns:
    """The update, whole (``__call__``) and in the pieces a caller can jit separately to accumulate gradients
    over a variable number of same-shape micro-batches with a fixed number of programs (train.row_bucket):

    count(batch, totals)                        -> totals + this batch's (loss tokens, sequences)
    init_acc(params, batch)                     -> acc of zeros: ({"loss": 0, metrics...}, float32 grads)
    accumulate(params, acc, batch, ref, totals) -> acc plus this batch's loss, metrics and gradients
    apply(params, opt_state, acc, totals)       -> (params, opt_state, metrics): one optimizer step

    A batch is [R, L] or [M, R, L] (scanned). ``acc`` is (replicated scalars, gradients shaped like params);
    ``totals`` (number of loss tokens, number of sequences) must be the whole step's, so the sum of the
    micro-batches' losses and gradients is the full batch's for every aggregation mode.
    """

    def __init__(self, model_cfg: ModelConfig, algo_cfg: AlgoConfig, optimizer: optax.GradientTransformation):
        validate_loss_config(algo_cfg.loss)
        self.model_cfg, self.algo_cfg, self.optimizer = model_cfg, algo_cfg, optimizer
        self.needs_ref = algo_cfg.loss.kl_coef != 0.0
        self._schedule = make_schedule(algo_cfg.optim)
        self._grad_fn = jax.value_and_grad(self._micro_loss, has_aux=True)

    def _micro_loss(self, params, mb, ref_params, num_tokens, num_segments):
        loss_cfg = self.algo_cfg.loss
        logp, entropy = batch_logprobs(self.model_cfg, params, mb)
        # one PPO epoch: the behaviour policy is this one (ratio 1, gradient of logp), no extra forward
        old_logp = mb["old_logp"] if "old_logp" in mb else jax.lax.stop_gradient(logp)
        ref_logp = mb.get("ref_logp")
        if self.needs_ref and ref_logp is None:
            ref_logp, _ = batch_logprobs(self.model_cfg, ref_params, mb)
            ref_logp = jax.lax.stop_gradient(ref_logp)
        advantages = mb["advantages"]
        if loss_cfg.kl_in_reward and loss_cfg.kl_coef != 0.0:
            advantages = kl_penalised_advantages(advantages, old_logp, ref_logp, mb["loss_mask"], loss_cfg)
        return policy_loss(logp, old_logp, advantages, mb["loss_mask"], mb["segment_ids"], loss_cfg,
                           ref_logp=ref_logp, entropy=entropy, num_tokens=num_tokens,
                           num_segments=num_segments)

    @staticmethod
    def _leading(batch):
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        return {k: v[None] for k, v in batch.items()} if batch["tokens"].ndim == 2 else batch

    def count(self, batch, totals=None):
        _check_batch(batch, needs_ref=False)  # the first piece to read a batch: names a missing key or shape
        batch = self._leading(batch)
        n_tokens, n_segments = count_tokens_and_segments(batch["loss_mask"], batch["segment_ids"])
        return (n_tokens, n_segments) if totals is None else (totals[0] + n_tokens, totals[1] + n_segments)

    def init_acc(self, params, batch):
        mb = {k: v[0] for k, v in self._leading(batch).items()}
        one = jnp.ones((), jnp.float32)
        metric_shapes = jax.eval_shape(lambda mb: self._grad_fn(params, mb, params, one, one)[0][1], mb)
        scalars = {"loss": jnp.zeros((), jnp.float32), **{k: _metric_identity(k) for k in metric_shapes}}
        return scalars, jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

    def accumulate(self, params, acc, batch, ref_params, totals):
        _check_batch(batch, self.needs_ref and ref_params is None and "ref_logp" not in batch)

        def body(acc, mb):  # one traced copy of the forward/backward (compile time), sums in float32
            scalars, grads_acc = acc
            (loss_m, metrics_m), grads_m = self._grad_fn(params, mb, ref_params, *totals)
            merged = {k: _merge_metric(k, scalars[k], metrics_m[k]) for k in metrics_m}
            grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads_m)
            return ({"loss": scalars["loss"] + loss_m, **merged}, grads_acc), None

        batch = self._leading(batch)
        if batch["tokens"].shape[0] == 1:
            return body(acc, {k: v[0] for k, v in batch.items()})[0]
        return jax.lax.scan(body, acc, batch)[0]

    def apply(self, params, opt_state, acc, totals):
        if any(p.dtype != jnp.float32 for p in jax.tree.leaves(params)):
            raise ValueError("update: parameters must be float32 master weights (model.dtype sets the compute "
                             f"dtype); got {sorted({str(p.dtype) for p in jax.tree.leaves(params)})}")
        scalars, grads = acc
        loss = scalars["loss"]
        finite = jnp.isfinite(loss) & tree_all_finite(grads)
        # A non-finite loss with finite gradients is still skipped: poison the gradients for the guard.
        grads_for_opt = jax.tree.map(lambda g: jnp.where(finite, g, jnp.nan), grads)
        updates, new_opt_state = self.optimizer.update(grads_for_opt, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        new_params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_params, params)
        if not isinstance(opt_state, NonFiniteGuardState):
            new_opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_opt_state, opt_state)

        metrics = {k: (jnp.where(jnp.isfinite(v), v, jnp.nan) if k in _MIN_METRICS + _MAX_METRICS else v)
                   for k, v in scalars.items() if k != "loss"}
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["skipped"] = (~finite).astype(jnp.float32)
        metrics["num_tokens"], metrics["num_sequences"] = totals
        if isinstance(opt_state, NonFiniteGuardState):
            metrics["lr"] = jnp.asarray(self._schedule(opt_state.num_applied), jnp.float32)
            metrics["skipped_total"] = new_opt_state.num_skipped.astype(jnp.float32)
        return new_params, new_opt_state, metrics

    def __call__(self, params, opt_state, batch, ref_params=None):
        """The whole update in one program: count, accumulate over the batch's micro-batches, apply."""
        totals = self.count(batch)
        acc = self.accumulate(params, self.init_acc(params, batch), batch, ref_params, totals)
        return self.apply(params, opt_state, acc, totals)


def build_update(model_cfg: ModelConfig, algo_cfg: AlgoConfig, optimizer: optax.GradientTransformation) -> UpdateFns:
    """The update function before jit (for callers that jit it with shardings themselves); its pieces let
    them accumulate a variable number of micro-batches with fixed programs (`UpdateFns`)."""
    return UpdateFns(model_cfg, algo_cfg, optimizer)


def make_update_fn(model_cfg: ModelConfig, algo_cfg: AlgoConfig, optimizer: optax.GradientTransformation):
    """Jitted update(params, opt_state, batch, ref_params=None) -> (params, opt_state, metrics)."""
    return jax.jit(build_update(model_cfg, algo_cfg, optimizer))
