"""Packed rows give the same loss and log-prob gradients as one sequence per padded row."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.data.packing import pack
from orchestra_jax.rl.losses import (AGGREGATIONS, LossConfig, count_tokens_and_segments, kl_estimate, policy_loss,
                                     validate_loss_config)

FIELDS = ("logp", "old_logp", "ref_logp", "advantages", "loss_mask", "entropy")


def _sequences(seed, n=7):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 12, n)
    seqs, fields = [], {k: [] for k in FIELDS}
    for length in lengths:
        seqs.append(rng.integers(0, 50, length))
        logp = rng.normal(-1.5, 0.5, length).astype(np.float32)
        fields["logp"].append(logp)
        fields["old_logp"].append((logp + rng.normal(0, 0.4, length)).astype(np.float32))
        fields["ref_logp"].append((logp + rng.normal(0, 0.3, length)).astype(np.float32))
        fields["advantages"].append(np.full(length, rng.normal(), np.float32))
        mask = np.zeros(length, np.float32)
        mask[rng.integers(1, length - 1):] = 1.0  # a prompt, then policy tokens
        fields["loss_mask"].append(mask)
        fields["entropy"].append(rng.uniform(0.1, 2, length).astype(np.float32))
    return seqs, fields


def _padded(seqs, fields):
    length = max(len(s) for s in seqs)
    out = {k: np.zeros((len(seqs), length), np.float32) for k in FIELDS}
    segment_ids = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        segment_ids[i, :len(s)] = 1
        for k in FIELDS:
            out[k][i, :len(s)] = fields[k][i]
    return out, segment_ids


@functools.partial(jax.jit, static_argnames=("cfg",))
def _jit_loss_and_grad(arrays, segment_ids, cfg, num_tokens=None, num_segments=None):
    def fn(logp):
        return policy_loss(logp, arrays["old_logp"], arrays["advantages"], arrays["loss_mask"], segment_ids, cfg,
                           ref_logp=arrays["ref_logp"], entropy=arrays["entropy"], num_tokens=num_tokens,
                           num_segments=num_segments)
    return jax.value_and_grad(fn, has_aux=True)(arrays["logp"])


def _loss_and_grad(arrays, segment_ids, cfg, num_tokens=None, num_segments=None):
    (loss, metrics), grad = _jit_loss_and_grad({k: jnp.asarray(arrays[k]) for k in FIELDS}, segment_ids, cfg,
                                               num_tokens, num_segments)
    return float(loss), np.asarray(grad), metrics


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_packed_equals_padded(aggregation):
    seqs, fields = _sequences(0)
    batch = pack(seqs, row_len=24, fields=fields)
    assert batch.num_rows < len(seqs)  # several segments share a row
    padded, padded_seg = _padded(seqs, fields)
    cfg = LossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_estimator="k3", kl_coef=0.1,
                     aggregation=aggregation, max_tokens=16, entropy_coef=0.01)
    loss_p, grad_p, metrics_p = _loss_and_grad(batch.fields, batch.segment_ids, cfg)
    loss_u, grad_u, metrics_u = _loss_and_grad(padded, padded_seg, cfg)
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5, atol=1e-7)
    for i, g in enumerate(batch.unpack(grad_p)):
        np.testing.assert_allclose(g, grad_u[i, :len(seqs[i])], rtol=1e-5, atol=1e-7)
    for key in ("clip/low_frac", "clip/high_frac", "clip/dual_frac", "approx_kl", "ratio/min", "ratio/max", "entropy"):
        np.testing.assert_allclose(float(metrics_p[key]), float(metrics_u[key]), rtol=1e-5, atol=1e-7)


def test_seq_mean_differs_from_token_mean_and_matches_naive():
    """Independent naive reference: a python loop over sequences."""
    seqs, fields = _sequences(1)
    batch = pack(seqs, row_len=24, fields=fields)
    cfg = LossConfig(aggregation="seq_mean_token_mean")
    loss, _, _ = _loss_and_grad(batch.fields, batch.segment_ids, cfg)
    per_seq = []
    for i in range(len(seqs)):
        ratio = np.exp(fields["logp"][i] - fields["old_logp"][i])
        a = fields["advantages"][i]
        pg = np.maximum(-a * ratio, -a * np.clip(ratio, 0.8, 1.2))
        m = fields["loss_mask"][i]
        per_seq.append((pg * m).sum() / m.sum())
    np.testing.assert_allclose(loss, np.mean(per_seq), rtol=1e-5)
    cfg_tok = LossConfig(aggregation="token_mean")
    assert abs(_loss_and_grad(batch.fields, batch.segment_ids, cfg_tok)[0] - loss) > 1e-4


def test_dual_clip_bounds_negative_advantage_loss():
    logp = np.array([[0.0, 3.0, 3.0]], np.float32)  # ratio e^3 ~ 20 > c on tokens 1, 2
    old = np.zeros_like(logp)
    adv = np.array([[-1.0, -1.0, 1.0]], np.float32)
    mask = np.array([[0.0, 1.0, 1.0]], np.float32)
    seg = np.ones((1, 3), np.int32)
    cfg = LossConfig(dual_clip=10.0, aggregation="seq_mean_token_sum")
    loss, metrics = policy_loss(logp, old, adv, mask, seg, cfg)
    # token 1: min(max(20.09, 1.2), 10) = 10; token 2 (A > 0): max(-20.09, -1.2) = -1.2
    np.testing.assert_allclose(float(loss), 10.0 - 1.2, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["clip/dual_frac"]), 0.5)
    np.testing.assert_allclose(float(metrics["clip/high_frac"]), 0.5)


def test_kl_estimators_by_hand():
    logp, ref = np.array([[0.0, -1.0]], np.float32), np.array([[0.0, -1.5]], np.float32)
    mask, seg = np.array([[0.0, 1.0]], np.float32), np.ones((1, 2), np.int32)
    expected = {"k2": 0.125, "k3": np.exp(-0.5) + 0.5 - 1}
    for est, value in expected.items():
        cfg = LossConfig(kl_estimator=est, kl_coef=1.0)
        loss, m = policy_loss(logp, logp, np.zeros_like(logp), mask, seg, cfg, ref_logp=ref)
        np.testing.assert_allclose(float(m["kl_ref"]), value, rtol=1e-6)
        np.testing.assert_allclose(float(loss), value, rtol=1e-6)  # zero advantage: the loss is the KL
    np.testing.assert_allclose(float(kl_estimate(logp, ref, "k1")[0, 1]), 0.5, rtol=1e-6)


def test_k1_in_the_loss_is_refused_but_allowed_in_the_reward():
    with pytest.raises(ValueError, match="k1 has zero expected gradient"):
        validate_loss_config(LossConfig(kl_estimator="k1", kl_coef=0.1))
    validate_loss_config(LossConfig(kl_estimator="k1", kl_coef=0.1, kl_in_reward=True))
    validate_loss_config(LossConfig(kl_estimator="k1", kl_coef=0.0))


def test_k3_is_clamped_at_10_by_default():
    logp, ref = np.array([[0.0, -30.0]], np.float32), np.array([[0.0, 0.0]], np.float32)  # log-ratio +30
    mask, seg = np.array([[0.0, 1.0]], np.float32), np.ones((1, 2), np.int32)
    assert LossConfig().kl_clamp == 10.0
    _, m = policy_loss(logp, logp, np.zeros_like(logp), mask, seg, LossConfig(kl_coef=1.0), ref_logp=ref)
    assert float(m["kl_ref"]) == 10.0  # unclamped: exp(20) - 21 = 4.9e8


def test_counts_ignore_padding_and_unmasked_segments():
    seg = np.array([[1, 1, 2, 2, 3, 0], [1, 1, 1, 0, 0, 0]])
    mask = np.array([[0, 1, 0, 0, 1, 1], [0, 1, 1, 0, 0, 0]])  # segment 2 of row 0 has no loss token; pad masked
    tokens, segments = count_tokens_and_segments(mask, seg)
    assert float(tokens) == 4 and float(segments) == 3


def test_bad_inputs_raise():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="aggregation"):
        policy_loss(x, x, x, x, x.astype(np.int32), LossConfig(aggregation="sum"))
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(x, x, x, x, x.astype(np.int32), LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(x, x, np.zeros((2, 4)), x, x.astype(np.int32), LossConfig())


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batches_with_global_counts_sum_to_full_batch(aggregation):
    seqs, fields = _sequences(2, n=10)
    batch = pack(seqs, row_len=16, fields=fields, num_rows=6)
    cfg = LossConfig(clip_high=0.28, dual_clip=3.0, kl_coef=0.1, aggregation=aggregation, max_tokens=16,
                     entropy_coef=0.01)
    full_loss, full_grad, full_metrics = _loss_and_grad(batch.fields, batch.segment_ids, cfg)
    num_tokens, num_segments = count_tokens_and_segments(batch.fields["loss_mask"], batch.segment_ids)
    total, grads, metrics = 0.0, [], {}
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):  # uneven micro-batches
        part = {k: v[rows] for k, v in batch.fields.items()}
        loss, g, m = _loss_and_grad(part, batch.segment_ids[rows], cfg, num_tokens, num_segments)
        total += loss
        grads.append(g)
        for k in ("clip/low_frac", "approx_kl", "entropy", "ratio/mean"):
            metrics[k] = metrics.get(k, 0.0) + float(m[k])
    np.testing.assert_allclose(total, full_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.concatenate(grads), full_grad, rtol=1e-5, atol=1e-7)
    for k, v in metrics.items():
        np.testing.assert_allclose(v, float(full_metrics[k]), rtol=1e-5, atol=1e-7)


def test_kl_in_reward_moves_the_kl_into_the_advantage():
    from orchestra_jax.rl.losses import kl_penalised_advantages, sequence_kl
    old = np.array([[0.0, -1.0, -2.0, -0.5]], np.float32)
    ref = np.array([[0.0, -1.5, -1.0, -0.5]], np.float32)
    adv = np.array([[0.0, 2.0, 2.0, -1.0]], np.float32)
    mask = np.array([[0.0, 1.0, 1.0, 1.0]], np.float32)
    seg = np.array([[1, 1, 1, 2]], np.int32)
    cfg = LossConfig(kl_estimator="k2", kl_coef=0.5, kl_in_reward=True)
    penalised = np.asarray(kl_penalised_advantages(adv, old, ref, mask, cfg))
    np.testing.assert_allclose(penalised, [[0.0, 2.0 - 0.5 * 0.125, 2.0 - 0.5 * 0.5, -1.0]], rtol=1e-6)
    # with kl_in_reward the loss has no KL term and needs no ref_logp
    loss, metrics = policy_loss(old, old, penalised, mask, seg, cfg)
    assert "kl_ref" not in metrics
    np.testing.assert_allclose(float(loss), -np.sum(penalised * mask) / 3, rtol=1e-6)
    sums = np.asarray(sequence_kl(old, ref, mask, seg, "k2")).reshape(1, 5)
    np.testing.assert_allclose(sums[0, :3], [0.0, 0.625, 0.0], rtol=1e-6)


def test_k3_stays_finite_for_far_reference():
    logp = np.array([[0.0, -150.0]], np.float32)
    ref = np.array([[0.0, -1.0]], np.float32)
    mask, seg = np.array([[0.0, 1.0]], np.float32), np.ones((1, 2), np.int32)
    loss, _ = policy_loss(logp, logp, np.zeros_like(logp), mask, seg, LossConfig(kl_coef=1.0, kl_clamp=None),
                          ref_logp=ref)
    np.testing.assert_allclose(float(loss), np.exp(20.0) - 21.0, rtol=1e-5)  # the +-20 log-ratio guard alone
