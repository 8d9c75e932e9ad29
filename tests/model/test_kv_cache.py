"""KV cache: prefill + chunked extends with per-row num_new reproduce the full forward logits."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.model import KVCache, ModelConfig, Policy, init_cache, init_params

CFG = ModelConfig(vocab_size=89, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                  intermediate_size=96, qk_norm=True, qkv_bias=True, tie_word_embeddings=False)
LENGTHS = np.array([13, 9, 5])
MAX_LEN = 13  # tight: garbage tokens of a full row would land past the end and must be dropped
CHUNK = 5
# num_new per row for each extend call (prefill chunks, then single-token decode steps); rows differ
SCHEDULE = [[5, 3, 2], [4, 0, 3], [0, 5, 0], [1, 1, 0], [1, 0, 0], [2, 0, 0]]


@functools.lru_cache(maxsize=None)
def _params(cfg):
    params = init_params(cfg, jax.random.key(3))
    rng = np.random.default_rng(3)
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.1 * rng.standard_normal(x.shape), x.dtype),
                        params)


@functools.partial(jax.jit, static_argnums=0)
def _extend(cfg, params, tokens, cache, num_new):
    return Policy(cfg).apply({"params": params}, tokens, cache, num_new, method=Policy.extend)


@pytest.mark.parametrize("backend", ["xla", "reference"])
def test_chunked_extend_matches_full_forward(backend):
    cfg = CFG.replace(attention_backend=backend)
    params = _params(CFG)
    rng = np.random.default_rng(0)
    batch = len(LENGTHS)
    tokens = rng.integers(0, cfg.vocab_size, size=(batch, MAX_LEN)).astype(np.int32)
    positions = np.broadcast_to(np.arange(MAX_LEN, dtype=np.int32), tokens.shape)
    segments = (positions < LENGTHS[:, None]).astype(np.int32)
    forward = jax.jit(lambda p, *batch: Policy(cfg).apply({"params": p}, *batch))
    full = np.asarray(forward(params, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments)))

    assert np.array_equal(np.sum(SCHEDULE, axis=0), LENGTHS)
    cache = init_cache(cfg, batch, MAX_LEN)
    done = np.zeros(batch, np.int64)
    for num_new in SCHEDULE:
        width = 1 if max(num_new) <= 1 else CHUNK  # decode steps are T=1 calls, prefill chunks T=CHUNK
        chunk = rng.integers(0, cfg.vocab_size, size=(batch, width)).astype(np.int32)  # garbage filler
        for b, n in enumerate(num_new):
            chunk[b, :n] = tokens[b, done[b]:done[b] + n]
        logits, cache = _extend(cfg, params, jnp.asarray(chunk), cache, jnp.asarray(num_new, jnp.int32))
        for b, n in enumerate(num_new):
            diff = np.abs(np.asarray(logits)[b, :n] - full[b, done[b]:done[b] + n]).max(initial=0.0)
            assert diff <= 1e-5, f"row {b} positions {done[b]}..{done[b] + n}: diff {diff}"
        done += np.asarray(num_new)
        assert np.array_equal(np.asarray(cache.lengths), done)
    assert isinstance(cache, KVCache) and len(cache.k) == len(cache.v) == cfg.num_layers
    assert all(k.shape == (batch, 2, 16, MAX_LEN) and v.shape == (batch, 2, MAX_LEN, 16) for k, v in zip(cache.k, cache.v))


def test_extend_ignores_tokens_beyond_num_new():
    params = _params(CFG)
    cache = init_cache(CFG, 2, 8)
    first = jnp.asarray([[5, 6, 7, 8], [9, 10, 11, 12]], jnp.int32)
    _, cache_a = _extend(CFG, params, first, cache, jnp.asarray([2, 3], jnp.int32))
    other = first.at[0, 2:].set(1).at[1, 3].set(2)  # change only the ignored tokens
    _, cache_b = _extend(CFG, params, other, cache, jnp.asarray([2, 3], jnp.int32))
    for a, b in zip(jax.tree.leaves(cache_a), jax.tree.leaves(cache_b)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # nothing was written past each row's new length
    k_LBKHS, v_LBKSH = np.stack(cache_a.k), np.stack(cache_a.v)
    assert np.all(k_LBKHS[:, 0, ..., 2:] == 0) and np.all(k_LBKHS[:, 1, ..., 3:] == 0) and np.any(k_LBKHS[:, 1, ..., 2] != 0)
    assert np.all(v_LBKSH[:, 0, :, 2:] == 0) and np.all(v_LBKSH[:, 1, :, 3:] == 0) and np.any(v_LBKSH[:, 1, :, 2] != 0)


def test_init_cache_dtype_and_errors():
    cache = init_cache(CFG, 2, 4, dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in cache.k + cache.v) and cache.lengths.dtype == jnp.int32
    assert cache.max_len == 4 and cache.batch_size == 2 and not cache.stacked
    stacked = init_cache(CFG.replace(scan_layers=True), 2, 4)
    assert stacked.stacked and stacked.k.shape == (CFG.num_layers, 2, CFG.num_kv_heads, CFG.head_dim, 4)
    assert stacked.v.shape == (CFG.num_layers, 2, CFG.num_kv_heads, 4, CFG.head_dim) and stacked.max_len == 4
    with pytest.raises(ValueError, match="scan_layers=False"):  # a cache of the other layout: named
        _extend(CFG, _params(CFG), jnp.zeros((2, 1), jnp.int32), stacked, jnp.ones(2, jnp.int32))
    with pytest.raises(ValueError, match="dtype"):
        init_cache(CFG, 2, 4, dtype="int8")
    with pytest.raises(ValueError, match="batch"):
        Policy(CFG).apply({"params": _params(CFG)}, jnp.zeros((3, 2), jnp.int32), cache,
                          jnp.zeros((3,), jnp.int32), method=Policy.extend)
