"""Prefix-shared packing through the Policy: per-token log-probs and gradients equal the unshared packing."""
import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.data.packing import PackedBatch, pack
from orchestra_jax.data.shared_packing import SharedPackedBatch, pack_groups, pack_shared
from orchestra_jax.model import ModelConfig, Policy, init_params, logprobs_from_logits, token_logprobs
from orchestra_jax.model.attention import (packed_attention, reference_attention, segment_mask,
                                           supports_shared_prefix)

CFG = ModelConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64, qk_norm=True, rope_theta=1e4)


@functools.lru_cache(maxsize=None)
def _params(seed=0):
    params = init_params(CFG, jax.random.key(seed))
    rng = np.random.default_rng(seed)  # larger weights: attention far from uniform, bugs show
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.15 * rng.standard_normal(x.shape), x.dtype),
                        params)


def _episodes(seed=0, groups=3, group_size=4):
    """Episodes = a group's prompt + own continuation; loss mask 1 on the continuation; random weights."""
    rng = np.random.default_rng(seed)
    seqs, gids, masks, weights = [], [], [], []
    for g in range(groups):
        prompt = rng.integers(1, CFG.vocab_size, rng.integers(3, 12))
        for _ in range(group_size):
            cont = rng.integers(1, CFG.vocab_size, rng.integers(1, 9))
            cont[0] = (prompt[-1] + 1 + rng.integers(0, 5)) % CFG.vocab_size  # some equal first tokens
            seqs.append(np.concatenate([prompt, cont]).astype(np.int32))
            gids.append(g)
            masks.append(np.r_[np.zeros(len(prompt)), np.ones(len(cont))].astype(np.float32))
            weights.append((masks[-1] * rng.standard_normal(len(seqs[-1]))).astype(np.float32))
    return seqs, gids, masks, weights


def _logp_fn(cfg, shared):
    def f(params, b):
        return token_logprobs(cfg, params, b["tokens"], b["positions"], b["segment_ids"],
                              b.get("prefix_segment_ids") if shared else None,
                              b.get("prev_index") if shared else None, chunk_size=16)
    return f


@pytest.mark.parametrize("backend", ["xla", "reference"])
def test_shared_logprobs_and_grads_equal_unshared(backend):
    cfg = dataclasses.replace(CFG, attention_backend=backend)
    seqs, gids, masks, weights = _episodes()
    fields = {"loss_mask": masks, "weight": weights}
    plain = pack(seqs, 64, fields=fields)
    shared = pack_shared(seqs, gids, 64, fields=fields)
    assert shared.num_tokens < plain.num_tokens  # the prompts are stored once per group
    params = _params()
    results = {}
    for name, packed, is_shared in (("plain", plain, False), ("shared", shared, True)):
        batch = {k: jnp.asarray(v) for k, v in packed.as_dict().items()}
        logp_fn = _logp_fn(cfg, is_shared)

        def loss(p, batch=batch, logp_fn=logp_fn):
            logp, entropy = logp_fn(p, batch)
            return jnp.sum(logp * batch["weight"]) + 0.1 * jnp.sum(entropy * batch["weight"])

        logp, entropy = jax.jit(logp_fn)(params, batch)
        grads = jax.jit(jax.grad(loss))(params)
        results[name] = (packed.unpack(np.asarray(logp)), packed.unpack(np.asarray(entropy)), grads)
    for a, b in zip(results["plain"][0], results["shared"][0]):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    for a, b in zip(results["plain"][1], results["shared"][1]):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    assert max(np.abs(x).max() for x in results["plain"][0]) > 1.0  # log-probs are not trivially 0
    flat_a = jax.tree.leaves(results["plain"][2])
    flat_b = jax.tree.leaves(results["shared"][2])
    assert max(float(jnp.abs(g).max()) for g in flat_a) > 1e-2
    for a, b in zip(flat_a, flat_b):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0)


def test_shared_full_logits_path_matches_chunked():
    """Policy.__call__ with prefix_segment_ids + naive log-softmax == the chunked token_logprobs."""
    seqs, gids, masks, _ = _episodes(seed=1)
    b = pack_shared(seqs, gids, 48, fields={"loss_mask": masks})
    params = _params()
    args = [jnp.asarray(x) for x in (b.tokens, b.positions, b.segment_ids, b.prefix_segment_ids)]
    logits = Policy(CFG).apply({"params": params}, *args)
    naive, _ = logprobs_from_logits(logits, args[0], jnp.asarray(b.prev_index))
    chunked, _ = token_logprobs(CFG, params, *args, jnp.asarray(b.prev_index), chunk_size=7)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(naive), atol=1e-5)


def test_prefix_mask_attention_matches_reference_values_and_grads():
    keys = jax.random.split(jax.random.key(3), 4)
    q = jax.random.normal(keys[0], (1, 16, 4, 8))
    k = jax.random.normal(keys[1], (1, 16, 2, 8))
    v = jax.random.normal(keys[2], (1, 16, 2, 8))
    w = jax.random.normal(keys[3], (1, 16, 4, 8))
    seg = jnp.asarray([[1] * 5 + [2] * 4 + [3] * 3 + [4] * 2 + [0] * 2], jnp.int32)
    pre = jnp.asarray([[1] * 5 + [1] * 4 + [1] * 3 + [4] * 2 + [0] * 2], jnp.int32)
    mask = np.asarray(segment_mask(seg, pre))[0]
    assert mask[9, 4] and not mask[9, 5] and mask[9, 9] and not mask[12, 0]  # seg 3 sees prompt, not seg 2
    xla = lambda q, k, v: packed_attention(q, k, v, seg, "xla", pre)  # noqa: E731
    ref = lambda q, k, v: reference_attention(q, k, v, segment_mask(seg, pre))  # noqa: E731
    np.testing.assert_allclose(np.asarray(xla(q, k, v)), np.asarray(ref(q, k, v)), atol=1e-5)
    ga = jax.grad(lambda *a: jnp.sum(xla(*a) * w), (0, 1, 2))(q, k, v)
    gb = jax.grad(lambda *a: jnp.sum(ref(*a) * w), (0, 1, 2))(q, k, v)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    with pytest.raises(ValueError, match="splash.*prefix_segment_ids"):
        packed_attention(q, k, v, seg, "splash", pre)


def test_pack_groups_falls_back_to_unshared_on_splash_with_warning():
    seqs, gids, masks, _ = _episodes(seed=2)
    assert supports_shared_prefix("xla", jnp.float32) and not supports_shared_prefix("splash", jnp.bfloat16)
    assert isinstance(pack_groups(seqs, gids, 64, fields={"loss_mask": masks}), SharedPackedBatch)
    with pytest.warns(UserWarning, match="cannot express the shared-prefix mask"):
        b = pack_groups(seqs, gids, 64, attention_backend="splash", dtype="bfloat16", fields={"loss_mask": masks})
    assert isinstance(b, PackedBatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(pack_groups(seqs, gids, 64, share_prefix=False), PackedBatch)
