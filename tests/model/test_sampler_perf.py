"""Sampler speed-ups keep the numbers: blocked cache attention, shared group prefill, layers under nn.scan."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.model import (ModelConfig, Policy, init_cache, init_params, stack_layer_params,
                                 unstack_layer_params)
from orchestra_jax.model.attention import reference_attention
from orchestra_jax.model.cached_attention import blocked_cached_attention, cached_attention
from orchestra_jax.model.sampling import SamplingConfig, decode, prefill, prefill_groups

CFG = ModelConfig(vocab_size=67, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64, qk_norm=True)


def _params(cfg=CFG, seed=0):
    params = init_params(cfg, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.2 * rng.standard_normal(x.shape), x.dtype), params)


def test_blocked_cached_attention_matches_masked_reference():
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (3, 2, 4, 8))
    k = jax.random.normal(keys[1], (3, 256, 2, 8))
    v = jax.random.normal(keys[2], (3, 256, 2, 8))
    slots = jnp.asarray([[0, 1], [63, 64], [200, 255]], jnp.int32)  # block edges, last slot
    mask = jnp.arange(256)[None, None] <= slots[:, :, None]
    expected = np.asarray(reference_attention(q, k, v, mask))
    np.testing.assert_allclose(np.asarray(jax.jit(blocked_cached_attention, static_argnums=4)(q, k, v, slots, 64)),
                               expected, atol=1e-5)
    # other values past a row's own slots do not change it
    out = np.asarray(cached_attention(q, k.at[0, 2:].set(1e3), v.at[0, 2:].set(-1e3), slots, "xla"))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # blocks past the longest filled row are never read (S=256: 128-slot blocks): NaN there cannot leak
    short = jnp.minimum(slots, 40)
    out = np.asarray(cached_attention(q, k.at[:, 128:].set(jnp.nan), v.at[:, 128:].set(jnp.nan), short, "xla"))
    mask = jnp.arange(256)[None, None] <= short[:, :, None]
    np.testing.assert_allclose(out, np.asarray(reference_attention(q, k, v, mask)), atol=1e-5)


def test_cache_block_sizes_per_platform():
    from orchestra_jax.model.cached_attention import kv_block_size

    assert [kv_block_size(s, "gpu") for s in (720, 512, 200, 130, 127)] == [256, 256, 64, 64, None]
    assert [kv_block_size(s, "cpu") for s in (720, 512, 200, 130, 127)] == [64, 64, 64, 64, None]
    assert kv_block_size(720) == kv_block_size(720, jax.default_backend())


@pytest.mark.parametrize("size,block", [(720, 256), (720, 64), (200, 64), (130, 64)])
def test_blocked_attention_with_a_ragged_last_block_matches_the_reference(size, block):
    """S not a multiple of the block (the quickstart's 720-slot cache): the last block overlaps the one before
    it; each slot still counts once, and slots past the longest query are never read."""
    cached_attention = jax.jit(blocked_cached_attention, static_argnums=4)
    keys = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(keys[0], (4, 3, 4, 8))
    k = jax.random.normal(keys[1], (4, size, 2, 8))
    v = jax.random.normal(keys[2], (4, size, 2, 8))
    slots = jnp.asarray([[0, 1, 2], [block - 1, block, block + 1], [2 * block - 1, 2 * block, size - 2],
                         [size - 3, size - 2, size - 1]], jnp.int32)
    mask = jnp.arange(size)[None, None] <= slots[:, :, None]
    expected = np.asarray(reference_attention(q, k, v, mask))
    np.testing.assert_allclose(np.asarray(cached_attention(q, k, v, slots, block)), expected, atol=1e-5)
    short = jnp.minimum(slots, block - 1)  # one block: NaN past it cannot leak
    out = cached_attention(q, k.at[:, block:].set(jnp.nan), v.at[:, block:].set(jnp.nan), short, block)
    mask = jnp.arange(size)[None, None] <= short[:, :, None]
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference_attention(q, k, v, mask)), atol=1e-5)


def test_prefill_groups_equals_prefilling_every_row_and_greedy_ids_match():
    params = _params()
    rng = np.random.default_rng(1)
    prompts = rng.integers(1, CFG.vocab_size, (2, 9)).astype(np.int32)
    num_new = np.array([9, 6], np.int32)
    group = 3
    last_g, cache_g = prefill_groups(CFG, params, init_cache(CFG, 2, 128), prompts, num_new, group)
    last_all, cache_all = prefill(CFG, params, init_cache(CFG, 6, 128), np.repeat(prompts, group, 0),
                                  np.repeat(num_new, group))
    np.testing.assert_allclose(np.asarray(last_g), np.asarray(last_all), atol=1e-5)
    np.testing.assert_allclose(np.asarray(cache_g.k), np.asarray(cache_all.k), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cache_g.lengths), np.repeat(num_new, group))
    cfg = SamplingConfig(greedy=True, max_new_tokens=70)  # crosses the 64-slot block edge of the cache
    active = np.ones(6, bool)
    out_g = decode(CFG, params, cache_g, last_g, jax.random.key(0), active, [], cfg)
    out_all = decode(CFG, params, cache_all, last_all, jax.random.key(0), active, [], cfg)
    np.testing.assert_array_equal(np.asarray(out_g.tokens_BN), np.asarray(out_all.tokens_BN))
    # blocked decode (128-slot cache: two 64-slot blocks) == the reference backend's masked decode
    ref_cfg = CFG.replace(attention_backend="reference")
    out_ref = decode(ref_cfg, params, cache_all, last_all, jax.random.key(0), active, [], cfg)
    np.testing.assert_array_equal(np.asarray(out_all.tokens_BN), np.asarray(out_ref.tokens_BN))
    np.testing.assert_allclose(np.asarray(out_all.logp_BN), np.asarray(out_ref.logp_BN), atol=1e-4)


@pytest.mark.parametrize("remat", [False, True])
def test_scan_layers_equal_unrolled_logits_grads_and_cache(remat):
    params = _params()
    scan_cfg = CFG.replace(scan_layers=True, remat=remat)
    stacked = stack_layer_params(params, CFG.num_layers)
    abstract = jax.eval_shape(lambda: init_params(scan_cfg, jax.random.key(0)))
    assert jax.tree.structure(abstract) == jax.tree.structure(stacked)
    assert jax.tree.map(lambda a, b: a.shape == b.shape, abstract, stacked) == jax.tree.map(lambda _: True, stacked)
    back = unstack_layer_params(stacked, CFG.num_layers)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)))

    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 12)), jnp.int32)
    pos = jnp.asarray(np.tile(np.arange(12), (2, 1)), jnp.int32)
    seg = jnp.ones((2, 12), jnp.int32)
    w = jnp.asarray(rng.standard_normal((2, 12, CFG.vocab_size)), jnp.float32)
    f_u = jax.jit(lambda p: Policy(CFG).apply({"params": p}, tokens, pos, seg))
    f_s = jax.jit(lambda p: Policy(scan_cfg).apply({"params": p}, tokens, pos, seg))
    np.testing.assert_allclose(np.asarray(f_s(stacked)), np.asarray(f_u(params)), atol=1e-5)
    g_u = jax.jit(jax.grad(lambda p: jnp.sum(f_u(p) * w)))(params)
    g_s = unstack_layer_params(jax.jit(jax.grad(lambda p: jnp.sum(f_s(p) * w)))(stacked), CFG.num_layers)
    for a, b in zip(jax.tree.leaves(g_u), jax.tree.leaves(g_s)):
        a, b = np.asarray(a), np.asarray(b)  # float32 sums reassociate under scan: tolerance relative to |g|max
        np.testing.assert_allclose(b, a, atol=1e-5 * max(1.0, np.abs(a).max()))
    last_u, cache_u = prefill(CFG, params, init_cache(CFG, 2, 16), tokens, np.array([12, 7]))
    last_s, cache_s = prefill(scan_cfg, stacked, init_cache(scan_cfg, 2, 16), tokens, np.array([12, 7]))
    np.testing.assert_allclose(np.asarray(last_s), np.asarray(last_u), atol=1e-5)
    np.testing.assert_allclose(np.asarray(cache_s.v), np.asarray(cache_u.v), atol=1e-5)


def test_stack_unstack_errors():
    with pytest.raises(ValueError, match="lack 'layers'"):
        unstack_layer_params({"embed": {}}, 2)
    with pytest.raises(ValueError, match="lack \\['layers_0'"):
        stack_layer_params({"layers": {}}, 2)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decode_step_writes_the_stacked_cache_in_place(scan_layers):
    """No op of the compiled decode produces a whole layer's cache [B, S, Hkv, D]: the new token's k/v are
    scattered into the stacked cache and attention reads blocks of it (a per-layer slice would copy the
    layer's cache every step: 27 -> 17 ms per quickstart decode step when it went)."""
    import dataclasses
    import re

    from orchestra_jax.model.sampling import _decode_jit

    cfg = dataclasses.replace(CFG, scan_layers=scan_layers)
    params = init_params(cfg, jax.random.key(0))
    batch, size = 8, 256  # two 128-slot blocks: the blocked path
    cache = init_cache(cfg, batch, size)
    hlo = _decode_jit.lower(cfg, SamplingConfig(greedy=True, max_new_tokens=4), params, cache,
                            jnp.zeros((batch, cfg.vocab_size), jnp.float32), jax.random.key(0),
                            jnp.ones(batch, bool), jnp.full((1,), -1, jnp.int32), None).compile().as_text()
    stacked = f"f32[{cfg.num_layers},{batch},{size},{cfg.num_kv_heads},{cfg.head_dim}]"
    layer = f"f32[{batch},{size},{cfg.num_kv_heads},{cfg.head_dim}]"
    assert stacked in hlo  # the pattern is right for this XLA's text
    assert not re.search(re.escape(layer) + r"\{", hlo), [l for l in hlo.splitlines() if layer in l][:3]
