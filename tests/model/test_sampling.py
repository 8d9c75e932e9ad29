"""Sampling with the KV cache against step-by-step full recomputation with Policy.__call__."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.model.config import ModelConfig
from orchestra_jax.model.kv_cache import init_cache
from orchestra_jax.model.sampling import (STOP_CACHE_FULL, STOP_MAX_NEW, STOP_NONE, STOP_TOKEN, SamplingConfig,
                                          decode, greedy_tokens, prefill, sample_tokens, take_rows, top_p_logits)
from orchestra_jax.model.transformer import Policy, init_params

CFG = ModelConfig(vocab_size=48, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64)
CACHE = 40


@pytest.fixture(scope="module")
def params():
    # Weights 10x the default init scale and final norm 2: the default init gives near-uniform logits
    # that only repeat the last token, with tiny argmax margins; these spread the logits (std ~2).
    return random_params(CFG, 0, std=0.2, final_norm_scale=2.0)


def random_params(cfg, seed, std=0.02, final_norm_scale=1.0):
    """Random parameters with init_params' structure, filled on the host (normal(std) weights, unit norm
    scales): skips init_params' eager per-op compilations, which dominate a tiny test's run time."""
    shapes = jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            value = np.full(leaf.shape, final_norm_scale if "final_norm" in name else 1.0)
        elif "bias" in name:
            value = np.zeros(leaf.shape)
        else:
            value = rng.normal(0.0, std, leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@jax.jit
def _full_logits(params, tokens_1T, length):
    positions = jnp.arange(tokens_1T.shape[1], dtype=jnp.int32)[None]
    segment_ids = (positions < length).astype(jnp.int32)
    return Policy(CFG).apply({"params": params}, tokens_1T, positions, segment_ids)


def _policy_logp(params, seq):
    """logp[t] = log p(seq[t] | seq[:t]) by a full forward pass of the whole sequence (index 0 -> 0)."""
    try:
        from orchestra_jax.rl.step import token_logprobs
    except ImportError:
        token_logprobs = None
    tokens = np.zeros((1, CACHE), np.int32)
    tokens[0, :len(seq)] = seq
    if token_logprobs is not None:
        positions = np.arange(CACHE, dtype=np.int32)[None]
        segment_ids = (positions < len(seq)).astype(np.int32)
        logp, _ = jax.jit(token_logprobs, static_argnums=0)(
            CFG, params, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids))
        return np.asarray(logp)[0, :len(seq)]
    logp_TV = np.asarray(jax.nn.log_softmax(_full_logits(params, jnp.asarray(tokens), len(seq))[0]))
    out = np.zeros(len(seq), np.float32)
    out[1:] = logp_TV[np.arange(len(seq) - 1), seq[1:]]
    return out


def _greedy_reference(params, seq, n_new, stop_ids):
    """Argmax of Policy.__call__ on the growing sequence, one token at a time."""
    seq = list(seq)
    new = []
    while len(new) < n_new and len(seq) < CACHE:
        tokens = np.zeros((1, CACHE), np.int32)
        tokens[0, :len(seq)] = seq
        logits = np.asarray(_full_logits(params, jnp.asarray(tokens), len(seq)))[0, len(seq) - 1]
        tok = int(np.argmax(logits))
        seq.append(tok)
        new.append(tok)
        if tok in stop_ids:
            break
    return new


def _pad(rows, width):
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def test_greedy_with_cache_equals_full_recomputation_over_two_turns(params):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, CFG.vocab_size, n).tolist() for n in (5, 11, 2)]
    stop_ids = (1, 2)
    cfg = SamplingConfig(greedy=True, max_new_tokens=8)
    cache = init_cache(CFG, 3, CACHE)
    last, cache = prefill(CFG, params, cache, _pad(prompts, 16), [len(p) for p in prompts])
    out = decode(CFG, params, cache, last, jax.random.key(1), np.ones(3, bool), stop_ids, cfg)
    seqs = []
    for b, prompt in enumerate(prompts):
        n = int(out.num_generated_B[b])
        got = np.asarray(out.tokens_BN[b, :n]).tolist()
        assert got == _greedy_reference(params, prompt, 8, stop_ids)
        assert np.all(np.asarray(out.tokens_BN[b, n:]) == 0)
        expected_reason = STOP_TOKEN if got[-1] in stop_ids else STOP_MAX_NEW
        assert int(out.stop_reason_B[b]) == expected_reason
        seqs.append(prompt + got)
    np.testing.assert_array_equal(np.asarray(out.cache.lengths), [len(s) for s in seqs])

    # Turn 2: an "observation" is prefilled into rows 0 and 2 only; row 1 is inactive and keeps its logits.
    obs = [[7, 8, 9], [], [10, 11, 12, 13, 14]]
    last2, cache2 = prefill(CFG, params, out.cache, _pad(obs, 8), [len(o) for o in obs], out.last_logits_BV)
    np.testing.assert_array_equal(np.asarray(last2[1]), np.asarray(out.last_logits_BV[1]))
    active = np.array([True, False, True])
    out2 = decode(CFG, params, cache2, last2, jax.random.key(2), active, stop_ids, cfg)
    assert int(out2.num_generated_B[1]) == 0 and int(out2.stop_reason_B[1]) == STOP_NONE
    for b in (0, 2):
        seq = seqs[b] + obs[b]
        n = int(out2.num_generated_B[b])
        got = np.asarray(out2.tokens_BN[b, :n]).tolist()
        assert got == _greedy_reference(params, seq, 8, stop_ids)
        final = seq + got
        ref_logp = _policy_logp(params, final)
        # log-probs of turn 1 and turn 2 tokens equal the full-sequence policy log-probs
        t1 = np.arange(len(prompts[b]), len(seqs[b]))
        np.testing.assert_allclose(np.asarray(out.logp_BN[b, :len(t1)]), ref_logp[t1], atol=1e-5)
        t2 = np.arange(len(seq), len(final))
        np.testing.assert_allclose(np.asarray(out2.logp_BN[b, :n]), ref_logp[t2], atol=1e-5)
        assert np.all(np.asarray(out2.sample_logp_BN) == 0.0)  # greedy: deterministic distribution
    assert int(out2.cache.lengths[1]) == len(seqs[1])


def test_chunked_prefill_equals_one_chunk(params):
    rows = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [], [14, 15, 16, 17, 18]]
    cache = init_cache(CFG, 4, CACHE)
    prev = jnp.arange(4 * CFG.vocab_size, dtype=jnp.float32).reshape(4, CFG.vocab_size)
    lengths = [len(r) for r in rows]
    one, cache_one = prefill(CFG, params, cache, _pad(rows, 8), lengths, prev)
    three, cache_three = prefill(CFG, params, cache, _pad(rows, 8), lengths, prev, chunk_size=3)
    np.testing.assert_allclose(np.asarray(three), np.asarray(one), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(one[2]), np.asarray(prev[2]))  # no new tokens: carried
    np.testing.assert_allclose(np.asarray(cache_three.k), np.asarray(cache_one.k), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cache_three.lengths), lengths)


def test_temperature_policy_logp_equals_full_forward_and_is_reproducible(params):
    prompts = [[5, 6, 7, 8], [9, 10]]
    cfg = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=10)
    cache = init_cache(CFG, 2, CACHE)
    last, cache = prefill(CFG, params, cache, _pad(prompts, 8), [4, 2])
    out_a = decode(CFG, params, cache, last, jax.random.key(3), np.ones(2, bool), (), cfg)
    tokens_BN, logp_BN, num_generated_B, stop_reason_B, cache_out, last_out = out_a  # the contract's 6-tuple
    assert tokens_BN is out_a.tokens_BN and cache_out is out_a.cache and last_out is out_a.last_logits_BV
    out_b = decode(CFG, params, cache, last, jax.random.key(3), np.ones(2, bool), (), cfg)
    out_c = decode(CFG, params, cache, last, jax.random.key(4), np.ones(2, bool), (), cfg)
    np.testing.assert_array_equal(np.asarray(out_a.tokens_BN), np.asarray(out_b.tokens_BN))
    np.testing.assert_array_equal(np.asarray(out_a.logp_BN), np.asarray(out_b.logp_BN))
    assert not np.array_equal(np.asarray(out_a.tokens_BN), np.asarray(out_c.tokens_BN))
    for b, prompt in enumerate(prompts):
        assert int(out_a.num_generated_B[b]) == 10 and int(out_a.stop_reason_B[b]) == STOP_MAX_NEW
        final = prompt + np.asarray(out_a.tokens_BN[b]).tolist()
        np.testing.assert_allclose(np.asarray(out_a.logp_BN[b]), _policy_logp(params, final)[len(prompt):],
                                   atol=1e-5)
        # the sampling-distribution log-prob differs from the policy one (temperature 0.7, top-p 0.9) ...
        assert not np.allclose(np.asarray(out_a.sample_logp_BN[b]), np.asarray(out_a.logp_BN[b]))
        assert np.all(np.asarray(out_a.sample_logp_BN[b]) <= 0.0)


def test_row_keys_make_a_rows_samples_independent_of_its_batch_slot(params):
    """With row ids, row b samples from fold_in(key, id_b): decoding rows (2, 0) of a 4-row cache after
    take_rows gives the same ids and log-probs as those rows in the full batch; without row ids the whole
    batch draws from one key (the slot decides the draw)."""
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14]]
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=12)
    cache = init_cache(CFG, 4, CACHE)
    last, cache = prefill(CFG, params, cache, _pad(prompts, 8), [4, 2, 3, 1])
    ids = np.array([7, 3, 11, 5])
    full = decode(CFG, params, cache, last, jax.random.key(9), np.ones(4, bool), (), cfg, row_ids_B=ids)
    sub_cache, sub_last = take_rows(cache, last, [2, 0])
    np.testing.assert_array_equal(np.asarray(sub_cache.lengths), [3, 4])
    sub = decode(CFG, params, sub_cache, sub_last, jax.random.key(9), np.ones(2, bool), (), cfg,
                 row_ids_B=ids[[2, 0]])
    np.testing.assert_array_equal(np.asarray(sub.tokens_BN), np.asarray(full.tokens_BN)[[2, 0]])
    np.testing.assert_allclose(np.asarray(sub.logp_BN), np.asarray(full.logp_BN)[[2, 0]], atol=1e-5)
    for b, prompt in ((0, prompts[2]), (1, prompts[0])):  # the gathered cache still holds the right prompt
        final = prompt + np.asarray(sub.tokens_BN[b]).tolist()
        np.testing.assert_allclose(np.asarray(sub.logp_BN[b]), _policy_logp(params, final)[len(prompt):], atol=1e-5)
    # a row's draw follows its id, not its slot: the same rows under swapped ids sample differently
    swapped = decode(CFG, params, sub_cache, sub_last, jax.random.key(9), np.ones(2, bool), (), cfg,
                     row_ids_B=ids[[0, 2]])
    assert not np.array_equal(np.asarray(swapped.tokens_BN), np.asarray(sub.tokens_BN))
    shared = decode(CFG, params, sub_cache, sub_last, jax.random.key(9), np.ones(2, bool), (), cfg)
    assert not np.array_equal(np.asarray(shared.tokens_BN), np.asarray(sub.tokens_BN))


def test_top_p_to_zero_equals_greedy(params):
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10, 11], [12]]
    cache = init_cache(CFG, 3, CACHE)
    last, cache = prefill(CFG, params, cache, _pad(prompts, 16), [3, 6, 1])
    greedy = decode(CFG, params, cache, last, jax.random.key(0), np.ones(3, bool), (),
                    SamplingConfig(greedy=True, max_new_tokens=8))
    nucleus = decode(CFG, params, cache, last, jax.random.key(5), np.ones(3, bool), (),
                     SamplingConfig(temperature=1.5, top_p=1e-6, max_new_tokens=8))
    np.testing.assert_array_equal(np.asarray(greedy.tokens_BN), np.asarray(nucleus.tokens_BN))
    np.testing.assert_allclose(np.asarray(greedy.logp_BN), np.asarray(nucleus.logp_BN), atol=1e-6)
    np.testing.assert_allclose(np.asarray(nucleus.sample_logp_BN), 0.0, atol=1e-6)  # one token kept


def test_stops_when_cache_row_is_full(params):
    prompts = [[3] * (CACHE - 4), [4] * 5, [5] * 10]
    cache = init_cache(CFG, 3, CACHE)
    last, cache = prefill(CFG, params, cache, _pad(prompts, 64), [len(p) for p in prompts])
    cfg = SamplingConfig(greedy=True, max_new_tokens=8)
    out = decode(CFG, params, cache, last, jax.random.key(0), np.ones(3, bool), (), cfg)
    np.testing.assert_array_equal(np.asarray(out.num_generated_B), [4, 8, 8])
    np.testing.assert_array_equal(np.asarray(out.stop_reason_B), [STOP_CACHE_FULL, STOP_MAX_NEW, STOP_MAX_NEW])
    np.testing.assert_array_equal(np.asarray(out.cache.lengths), [CACHE, 13, 18])
    # a full row that is asked to generate again stops at once
    again = decode(CFG, params, out.cache, out.last_logits_BV, jax.random.key(0), np.array([True, False, False]),
                   (), cfg)
    np.testing.assert_array_equal(np.asarray(again.num_generated_B), [0, 0, 0])
    np.testing.assert_array_equal(np.asarray(again.stop_reason_B), [STOP_CACHE_FULL, STOP_NONE, STOP_NONE])


def _chi_square(counts, probs):
    expected = probs * counts.sum()
    return float(np.sum((counts - expected) ** 2 / expected))


@pytest.mark.parametrize("temperature,top_p,row_keys", [(1.0, 1.0, False), (0.6, 1.0, False), (1.3, 0.8, False),
                                                        (1.3, 0.8, True), (1.0, 0.5, True)])
def test_sampled_frequencies_match_the_distribution(temperature, top_p, row_keys):
    # tokens in no order of probability, so top-p's cut leaves zero-mass tokens between kept ones
    logits_V = np.array([-0.5, 2.0, -1.5, 0.5, 1.0, 0.0], np.float32)
    n = 40_000
    cfg = SamplingConfig(temperature=temperature, top_p=top_p)
    row_ids = jnp.arange(n, dtype=jnp.int32) if row_keys else None
    tokens, sample_logp, policy_logp = jax.jit(sample_tokens, static_argnums=2)(
        jnp.tile(jnp.asarray(logits_V), (n, 1)), jax.random.key(11), cfg, row_ids)
    tokens = np.asarray(tokens)
    # independent reference: tempered softmax, then keep the most likely tokens until the mass reaches top_p
    p = np.exp(logits_V / temperature)
    p /= p.sum()
    order = np.argsort(-p)
    keep = np.zeros_like(p, bool)
    mass = 0.0
    for i in order:
        if mass < top_p:
            keep[i] = True
        mass += p[i]
    q = np.where(keep, p, 0.0)
    q /= q.sum()
    counts = np.bincount(tokens, minlength=len(p)).astype(np.float64)
    assert np.all(counts[~keep] == 0)
    kept = keep.nonzero()[0]
    # chi-square with k-1 dof: its 99.9% quantile is < 21 for k <= 6
    assert _chi_square(counts[kept], q[kept]) < 21.0
    np.testing.assert_allclose(np.asarray(sample_logp), np.log(q[tokens]), atol=1e-5)
    log_softmax = logits_V - np.log(np.exp(logits_V).sum())
    np.testing.assert_allclose(np.asarray(policy_logp), log_softmax[tokens], atol=1e-5)


@pytest.mark.parametrize("vocab", [1024, 2048, 3072, 1000])
def test_two_level_inverse_cdf_equals_the_flat_draw_and_never_draws_a_zero(vocab):
    """1,024 / 2,048 / 3,072 run in two levels (blocks of 32 / 64 / 64, then the token in its block), 1,000 in
    one (no power-of-two block of 16 or more divides it): against a numpy
    float64 cumsum it picks the same token except within float rounding of a boundary (>= 99.9% of draws,
    the rest a neighbour), never a token of mass 0 (every other token zeroed, and whole zero blocks), and its
    frequencies on one row match the probabilities."""
    from orchestra_jax.model.sampling import inverse_cdf_sample
    rng = np.random.default_rng(0)
    rows = 4096
    probs = rng.gamma(0.3, size=(rows, vocab)).astype(np.float32)
    probs[:, 1::2] = 0.0                                # zero mass between kept tokens (top-p's cut)
    probs[: rows // 2, : vocab // 2] = 0.0              # and whole zero blocks in half the rows
    u = rng.random(rows).astype(np.float32)
    got = np.asarray(jax.jit(inverse_cdf_sample)(jnp.asarray(probs), jnp.asarray(u)))
    cdf = np.cumsum(probs.astype(np.float64), axis=-1)
    want = np.minimum((cdf < (u * cdf[:, -1])[:, None]).sum(-1), vocab - 1)
    assert np.all(probs[np.arange(rows), got] > 0)
    assert np.mean(got == want) >= 0.999 and np.all(np.abs(got - want) <= 2)  # neighbours: skip a zero
    # one row drawn 40,000 times: its frequencies on 6 kept tokens
    row = np.zeros(vocab, np.float32)
    row[[3, 100, 517, 518, vocab - 65, vocab - 1]] = [0.1, 0.3, 0.05, 0.25, 0.2, 0.1]
    n = 40_000
    draws = np.asarray(jax.jit(inverse_cdf_sample)(jnp.tile(jnp.asarray(row), (n, 1)),
                                                   jax.random.uniform(jax.random.key(3), (n,))))
    kept = row.nonzero()[0]
    counts = np.bincount(draws, minlength=vocab).astype(np.float64)
    assert counts.sum() == counts[kept].sum()
    assert _chi_square(counts[kept], row[kept] / row.sum()) < 21.0


def test_top_p_keeps_most_likely_token_and_masks_the_tail():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    np.testing.assert_array_equal(np.isfinite(np.asarray(top_p_logits(logits, 0.75))), [[True, True, False, False]])
    np.testing.assert_array_equal(np.isfinite(np.asarray(top_p_logits(logits, 0.79))), [[True, True, False, False]])
    np.testing.assert_array_equal(np.isfinite(np.asarray(top_p_logits(logits, 0.81))), [[True, True, True, False]])
    np.testing.assert_array_equal(np.isfinite(np.asarray(top_p_logits(logits, 1e-9))), [[True, False, False, False]])


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(top_p=0.0), dict(top_p=1.5),
                                    dict(max_new_tokens=0)])
def test_bad_sampling_config_is_rejected(kwargs):
    with pytest.raises(ValueError, match="SamplingConfig"):
        SamplingConfig(**kwargs)


def test_sampling_config_is_hashable_and_greedy_ignores_temperature():
    cfg = SamplingConfig(greedy=True, temperature=0.0)
    assert hash(cfg) == hash(dataclasses.replace(cfg))


def test_greedy_tokens_equal_argmax_with_ties_and_policy_logp_equals_log_softmax():
    rng = np.random.default_rng(5)
    logits = rng.integers(-3, 4, (64, 50)).astype(np.float32)  # small integers: many rows tie at the max
    logits[0] = 2.0  # a row that is all one value: index 0
    logits[1, -1] = 9.0  # the max in the last slot
    tokens, max_B = jax.jit(greedy_tokens)(jnp.asarray(logits))
    np.testing.assert_array_equal(np.asarray(tokens), np.argmax(logits, axis=-1))
    np.testing.assert_array_equal(np.asarray(max_B), logits.max(axis=-1))
    assert sum(int((row == row.max()).sum() > 1) for row in logits) > 20  # the ties were exercised
    tok, sample_logp, policy_logp = sample_tokens(jnp.asarray(logits), jax.random.key(0), SamplingConfig(greedy=True))
    np.testing.assert_array_equal(np.asarray(tok), np.argmax(logits, axis=-1))
    np.testing.assert_array_equal(np.asarray(sample_logp), 0.0)
    log_softmax = logits - logits.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(policy_logp), log_softmax[np.arange(64), np.argmax(logits, -1)], atol=1e-6)
