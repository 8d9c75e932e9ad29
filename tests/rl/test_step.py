"""token_logprobs, the jitted update: gradient accumulation, non-finite skip, learning sanity."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.data.packing import pack
from orchestra_jax.model import ModelConfig, Policy, init_params
from orchestra_jax.rl.advantages import AdvantageConfig, group_advantages
from orchestra_jax.rl.losses import LossConfig
from orchestra_jax.rl.optim import OptimConfig, make_optimizer
from orchestra_jax.rl.step import AlgoConfig, make_update_fn, split_micro_batches, token_logprobs

CFG = ModelConfig(vocab_size=32, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                  intermediate_size=64, attention_backend="xla")


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


def _naive_logprobs(params, seqs):
    """Each sequence alone in its own row (no packing, one segment), log-softmax and entropy in float64 numpy."""
    width = max(len(x) for x in seqs)
    tokens = np.zeros((len(seqs), width), np.int32)
    for i, x in enumerate(seqs):
        tokens[i, :len(x)] = x  # trailing junk is causally invisible to the real tokens
    positions = np.tile(np.arange(width, dtype=np.int32), (len(seqs), 1))
    logits = np.asarray(jax.jit(Policy(CFG).apply)({"params": params}, tokens, positions,
                                                   np.ones_like(tokens))).astype(np.float64)
    out = []
    for i, x in enumerate(seqs):
        z = logits[i, :len(x) - 1]
        logsm = z - z.max(-1, keepdims=True)
        logsm -= np.log(np.exp(logsm).sum(-1, keepdims=True))
        lp = np.concatenate([[0.0], logsm[np.arange(len(x) - 1), x[1:]]])
        ent = np.concatenate([[0.0], -(np.exp(logsm) * logsm).sum(-1)])
        out.append((lp, ent))
    return out


def _sequences(seed, n=8):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, CFG.vocab_size, rng.integers(3, 10)).astype(np.int32) for _ in range(n)]
    fields = {"loss_mask": [], "advantages": [], "old_logp": [], "ref_logp": []}
    for s in seqs:
        mask = np.zeros(len(s), np.float32)
        mask[rng.integers(1, len(s) - 1):] = 1
        fields["loss_mask"].append(mask)
        fields["advantages"].append(np.full(len(s), rng.normal(), np.float32))
        fields["old_logp"].append(rng.normal(-3.5, 0.3, len(s)).astype(np.float32))
        fields["ref_logp"].append(rng.normal(-3.5, 0.3, len(s)).astype(np.float32))
    return seqs, fields


def test_token_logprobs_packed_equal_naive_per_sequence(params):
    seqs, _ = _sequences(0)
    batch = pack(seqs, row_len=20)
    logp, entropy = jax.jit(token_logprobs, static_argnums=0)(CFG, params, batch.tokens, batch.positions,
                                                              batch.segment_ids)
    logp_seqs, ent_seqs = batch.unpack(np.asarray(logp)), batch.unpack(np.asarray(entropy))
    for lp, ent, (ref_lp, ref_ent) in zip(logp_seqs, ent_seqs, _naive_logprobs(params, seqs)):
        np.testing.assert_allclose(lp, ref_lp, atol=2e-5)
        np.testing.assert_allclose(ent, ref_ent, atol=2e-5)
    assert np.all(np.asarray(logp)[batch.segment_ids == 0] == 0)


def _batch(seed, rows=4, row_len=20):
    seqs, fields = _sequences(seed)
    return pack(seqs, row_len=row_len, fields=fields, num_rows=rows).as_dict()


ACC_ALGO = AlgoConfig(loss=LossConfig(aggregation="seq_mean_token_mean", kl_coef=0.05, kl_estimator="k2",
                                      clip_high=0.28, dual_clip=5.0, entropy_coef=0.01))
# Adam with a huge epsilon is SGD in disguise (update ~ lr * g / eps): params after one step then depend on the
# gradient's magnitude, not only its sign, while the optimizer is still the guarded one from make_optimizer.
LINEAR_OPTIM = OptimConfig(lr=1e3, eps=1e3, weight_decay=0.0, grad_clip_norm=None)


@pytest.fixture(scope="module")
def acc_update():
    optimizer = make_optimizer(LINEAR_OPTIM)
    return make_update_fn(CFG, ACC_ALGO, optimizer), optimizer


def test_grad_accumulation_equals_full_batch(params, acc_update):
    """Per-aggregation normalisation across micro-batches is covered without a model in test_losses_packed."""
    update, optimizer = acc_update
    batch = _batch(1)
    opt_state = optimizer.init(params)
    full_params, _, full_metrics = update(params, opt_state, batch)
    acc_params, _, acc_metrics = update(params, opt_state, split_micro_batches(batch, 2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5),
                 acc_params, full_params)
    for key in ("loss", "grad_norm", "clip/high_frac", "ratio/min", "ratio/max", "entropy", "num_tokens"):
        np.testing.assert_allclose(float(acc_metrics[key]), float(full_metrics[key]), rtol=1e-5, atol=1e-6)
    assert float(full_metrics["num_sequences"]) == 8
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(full_params), jax.tree.leaves(params))]
    assert max(moved) > 1e-4


def test_non_finite_batch_skips_update(params, acc_update):
    update, optimizer = acc_update
    opt_state = optimizer.init(params)
    bad = dict(_batch(1))
    bad["advantages"] = bad["advantages"].copy()
    bad["advantages"][0, 3] = np.nan
    new_params, new_state, metrics = update(params, opt_state, bad)
    assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), new_params, params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), new_state.inner,
                 opt_state.inner)
    assert int(new_state.num_skipped) == 1 and int(new_state.num_applied) == 0
    new_params2, new_state2, metrics2 = update(new_params, new_state, _batch(1))
    assert float(metrics2["skipped"]) == 0.0
    assert not np.allclose(np.asarray(jax.tree.leaves(new_params2)[0]), np.asarray(jax.tree.leaves(params)[0]))
    assert int(new_state2.num_skipped) == 1 and int(new_state2.num_applied) == 1
    assert float(metrics2["skipped_total"]) == 1.0


def test_learning_sanity_one_step_bandit():
    """Rewards fixed per first sampled token: the policy moves > 0.9 of its mass to the best token."""
    cfg = CFG
    params = init_params(cfg, jax.random.key(1))
    rewards_per_token = jnp.asarray(np.random.default_rng(0).uniform(0.0, 0.6, cfg.vocab_size), jnp.float32)
    best = 11
    rewards_per_token = rewards_per_token.at[best].set(1.0)
    groups, group_size = 2, 16
    n = groups * group_size
    prompt = 3
    segment_ids = jnp.ones((n, 2), jnp.int32)
    positions = jnp.tile(jnp.arange(2, dtype=jnp.int32), (n, 1))
    loss_mask = jnp.tile(jnp.array([0.0, 1.0]), (n, 1))
    adv_cfg = AdvantageConfig()
    algo = AlgoConfig(loss=LossConfig(aggregation="seq_mean_token_mean"), advantage=adv_cfg,
                      optim=OptimConfig(lr=1e-2, weight_decay=0.0))
    optimizer = make_optimizer(algo.optim)
    update = make_update_fn(cfg, algo, optimizer)

    def first_token_logits(p):
        tokens = jnp.full((1, 1), prompt, jnp.int32)
        return Policy(cfg).apply({"params": p}, tokens, jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32))[0, 0]

    @jax.jit
    def rollout(p, key):
        sampled = jax.random.categorical(key, first_token_logits(p), shape=(n,))
        tokens = jnp.stack([jnp.full((n,), prompt), sampled], axis=1).astype(jnp.int32)
        old_logp, _ = token_logprobs(cfg, p, tokens, positions, segment_ids)
        rewards = rewards_per_token[sampled].reshape(groups, group_size)
        adv, _, _ = group_advantages(rewards, adv_cfg)
        adv_BT = jnp.broadcast_to(adv.reshape(n, 1), (n, 2)) * loss_mask
        return {"tokens": tokens, "positions": positions, "segment_ids": segment_ids, "loss_mask": loss_mask,
                "advantages": adv_BT, "old_logp": old_logp}

    probs = jax.jit(lambda p: jax.nn.softmax(first_token_logits(p)))
    p_best = lambda p: float(probs(p)[best])
    start = p_best(params)
    assert start < 0.2
    opt_state = optimizer.init(params)
    key = jax.random.key(0)
    for step in range(300):
        key, sub = jax.random.split(key)
        params, opt_state, metrics = update(params, opt_state, rollout(params, sub))
        if step % 10 == 9 and p_best(params) > 0.9:
            break
    assert p_best(params) > 0.9, (start, p_best(params), step)


@pytest.mark.parametrize("share", [False, True])
def test_update_with_loss_positions_equals_every_position(share):
    """The output head at each row's loss tokens only (loss_index from rl.batch.loss_positions) gives the update
    of the head at every position: same loss, every metric (entropy, KL to a reference computed inside the step,
    ratio min/max) and parameters, on plain and prefix-shared rows, whole and as 2 micro-batches."""
    from orchestra_jax.data.shared_packing import pack_shared
    from orchestra_jax.rl.batch import loss_positions

    seqs, fields = _sequences(3, n=8)
    groups = [i // 2 for i in range(len(seqs))]
    seqs = [np.concatenate([seqs[2 * (i // 2)][:3], s]) for i, s in enumerate(seqs)]  # pairs share 3 tokens
    fields = {k: [np.concatenate([np.zeros(3, np.float32), v]) for v in vs] for k, vs in fields.items()}
    if share:
        batch = pack_shared(seqs, groups, 32, fields=fields, num_rows=4).as_dict()
    else:
        batch = pack(seqs, 32, fields=fields, num_rows=4).as_dict()
    batch.pop("old_logp"), batch.pop("ref_logp")
    counts = ((batch["loss_mask"] > 0) & (batch["segment_ids"] != 0)).sum(1)
    width = int(counts.max()) + 2
    selected = dict(batch, loss_index=loss_positions(batch["loss_mask"], batch["segment_ids"], width))
    assert selected["loss_index"].shape == (4, width) and width < 32
    params = init_params(CFG, jax.random.key(2))
    ref = jax.tree.map(lambda x: x + 0.02, params)
    algo = AlgoConfig(loss=LossConfig(kl_coef=0.05, entropy_coef=0.01),
                      optim=OptimConfig(lr=1e-2, weight_decay=0.0))
    opt = make_optimizer(algo.optim)
    update = make_update_fn(CFG, algo, opt)
    for micro in (1, 2):
        out = []
        for b in (batch, selected):
            b = split_micro_batches(b, micro) if micro > 1 else b
            p, _, m = update(jax.tree.map(jnp.copy, params), opt.init(params), b, ref)
            out.append((jax.tree.map(np.asarray, p), jax.device_get(m)))
        (p0, m0), (p1, m1) = out
        assert float(m0["grad_norm"]) > 1e-3 and float(m0["entropy"]) > 0
        for k in m0:
            np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, atol=1e-6, err_msg=f"{k} micro={micro}")
        for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p0)):  # Adam's first step: lr x sign-like
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_loss_positions_by_hand_and_too_many():
    from orchestra_jax.rl.batch import loss_positions, max_loss_tokens_per_row

    mask = np.array([[0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], np.float32)
    seg = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]], np.int32)  # row 2: 4th is padding
    assert max_loss_tokens_per_row(mask, seg) == 3
    np.testing.assert_array_equal(loss_positions(mask, seg, 4),
                                  [[1, 2, 4, -1], [-1, -1, -1, -1], [0, 1, 2, -1]])
    with pytest.raises(ValueError, match="3 loss tokens, more than the 2 loss positions"):
        loss_positions(mask, seg, 2)


def test_bucket_row_lens_by_hand():
    from orchestra_jax.rl.batch import bucket_row_lens

    # tokens fill each row from its first slot: used lengths 3, 0, 7, 5, 2
    seg = np.zeros((5, 8), np.int32)
    for r, n in enumerate([3, 0, 7, 5, 2]):
        seg[r, :n] = 1 + np.arange(n) // 2
    order, lens = bucket_row_lens(seg, 2, 8, (2, 4, 6))
    assert order.tolist() == [2, 3, 0, 4, 1]  # fullest first
    assert lens == [8, 4, 2]                  # buckets (7, 5) -> 8, (3, 2) -> 4, (0) -> 2
    order, lens = bucket_row_lens(seg, 2, 8)  # no short lengths: rows in order, every bucket whole
    assert order.tolist() == [0, 1, 2, 3, 4] and lens == [8, 8, 8]
    assert bucket_row_lens(seg, 1, 8, (5,))[1] == [8, 5, 5, 5, 5]
