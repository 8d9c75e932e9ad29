"""Sampler speed-ups keep the numbers: blocked cache attention, shared group prefill, layers under nn.scan."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.model import (ModelConfig, Policy, init_cache, init_params, stack_layer_params,
                                 unstack_layer_params)
from orchestra_jax.model.attention import reference_attention
from orchestra_jax.model.sampling import SamplingConfig, decode, prefill, prefill_groups

CFG = ModelConfig(vocab_size=67, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64, qk_norm=True)


def _params(cfg=CFG, seed=0):
    params = init_params(cfg, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.2 * rng.standard_normal(x.shape), x.dtype), params)


def _cache_layout(k_BSKH, v_BSKH):
    """[B, S, K, H] keys / values -> the cache's layout: keys [B, K, H, S], values [B, K, S, H]."""
    return jnp.transpose(k_BSKH, (0, 2, 3, 1)), jnp.transpose(v_BSKH, (0, 2, 1, 3))


def _slots(size: int, block: int = 128):
    return jnp.asarray([[0, 1, 2], [block - 1, block, block + 1], [min(2 * block - 1, size - 3), size - 3, size - 2],
                        [size - 3, size - 2, size - 1]], jnp.int32)


@pytest.mark.parametrize("size", [720, 256, 200, 100])
@pytest.mark.parametrize("path", ["windows", "blocked", "stacked"])
def test_cached_attention_matches_masked_reference(size, path, monkeypatch):
    """Every read path (the windowed dense softmax, the online softmax over blocks with a ragged last block,
    a layer of the stacked [L, ...] caches) equals the naive masked attention over all S slots."""
    import orchestra_jax.model.cached_attention as ca

    if path == "blocked":
        monkeypatch.setattr(ca, "DENSE_SCORES_BYTES", 0)
    keys = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(keys[0], (4, 3, 4, 8))
    k = jax.random.normal(keys[1], (4, size, 2, 8))
    v = jax.random.normal(keys[2], (4, size, 2, 8))
    slots = _slots(size)
    expected = np.asarray(reference_attention(q, k, v, jnp.arange(size)[None, None] <= slots[:, :, None]))
    k_c, v_c = _cache_layout(k, v)
    if path == "stacked":
        other_k, other_v = _cache_layout(v, k)
        k_c, v_c, layer = jnp.stack([other_k, k_c]), jnp.stack([other_v, v_c]), jnp.int32(1)
    else:
        layer = None
    read = jax.jit(lambda *a: ca.cached_attention(*a, "xla", layer=layer))
    np.testing.assert_allclose(np.asarray(read(q, k_c, v_c, slots)), expected, atol=1e-5)
    # slots past the smallest window (or block) that holds every query are never read: NaN there cannot leak
    short = jnp.minimum(slots, 40)
    first = ca.cache_windows(size)[0]
    k_nan, v_nan = k.at[:, first:].set(jnp.nan), v.at[:, first:].set(jnp.nan)
    k_nan, v_nan = _cache_layout(k_nan, v_nan)
    if path == "stacked":
        k_nan, v_nan = jnp.stack([other_k, k_nan]), jnp.stack([other_v, v_nan])
    mask = jnp.arange(size)[None, None] <= short[:, :, None]
    np.testing.assert_allclose(np.asarray(read(q, k_nan, v_nan, short)),
                               np.asarray(reference_attention(q, k, v, mask)), atol=1e-5)


def test_cache_windows():
    from orchestra_jax.model.cached_attention import cache_windows

    assert cache_windows(720) == (128, 256, 720)  # windows up to half the cache, then the whole
    assert cache_windows(128) == (128,) and cache_windows(100) == (100,) and cache_windows(255) == (255,)
    assert cache_windows(256) == (128, 256)
    assert cache_windows(8192) == (512, 1024, 1536, 2048, 2560, 3072, 3584, 4096, 8192)  # at most 8 + whole


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
    cfg = SamplingConfig(greedy=True, max_new_tokens=70)  # crosses the 128-slot window edge of the cache
    active = np.ones(6, bool)
    out_g = decode(CFG, params, cache_g, last_g, jax.random.key(0), active, [], cfg)
    out_all = decode(CFG, params, cache_all, last_all, jax.random.key(0), active, [], cfg)
    np.testing.assert_array_equal(np.asarray(out_g.tokens_BN), np.asarray(out_all.tokens_BN))
    # windowed decode (the 128-slot window, then the 137-slot whole) == the reference backend's masked decode
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
def test_decode_step_writes_the_cache_in_place(scan_layers):
    """Inside the decode loop no op but the in-place scatter produces a layer's cache ([B, K, H, S] keys,
    [B, K, S, H] values) or the stacked caches: the new token's k/v are scattered into the cache and
    attention reads it where it lies (a per-layer copy every step once cost 27 -> 17 ms per quickstart decode
    step when it went). Under nn.scan the read of the whole-cache window slices the layer (a dynamic slice)."""
    import dataclasses
    import re

    from orchestra_jax.model.sampling import _decode_jit

    cfg = dataclasses.replace(CFG, scan_layers=scan_layers)
    params = init_params(cfg, jax.random.key(0))
    batch, size = 8, 256  # two windows: 128 and 256 slots
    cache = init_cache(cfg, batch, size)
    hlo = _decode_jit.lower(cfg, SamplingConfig(greedy=True, max_new_tokens=4), params, cache,
                            jnp.zeros((batch, cfg.vocab_size), jnp.float32), jax.random.key(0),
                            jnp.ones(batch, bool), jnp.full((1,), -1, jnp.int32), None).compile().as_text()
    body = hlo[:hlo.index("\nENTRY")]  # every computation but the entry's (the loop, its branches, fusions)
    kv, h, layers = cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
    shapes = [f"f32[{batch},{kv},{h},{size}]", f"f32[{batch},{kv},{size},{h}]"]
    if scan_layers:
        shapes = [f"f32[{layers},{batch},{kv},{h},{size}]", f"f32[{layers},{batch},{kv},{size},{h}]"]
    allowed = {"parameter", "get-tuple-element", "tuple", "while", "bitcast", "conditional", "scatter"}
    for shape in shapes:
        ops = re.findall(r"%\S+ = " + re.escape(shape) + r"\{[\d,]+\} ([\w-]+)\(", body)
        assert ops, f"{shape} not in the HLO text (the pattern is wrong for this XLA)"
        made = {op for op in ops if op not in allowed}
        names = set(re.findall(r"%(\S+) = " + re.escape(shape) + r"\{[\d,]+\} fusion\(", body))
        assert made - {"fusion"} == set(), made
        assert names and all("scatter" in n for n in names), names


def test_donated_cache_gives_the_same_results_without_copying_the_cache():
    """prefill / decode with donate_cache=True (the rollout's calls): the same logits, tokens and cache as
    without; the given cache's buffers are consumed (deleted), and the compiled programs copy no cache array
    on entry (without donation every call copies the whole cache first)."""
    import re

    from orchestra_jax.model.sampling import _DECODE, _PREFILL

    params = _params()
    rng = np.random.default_rng(3)
    prompts = rng.integers(1, CFG.vocab_size, (4, 9)).astype(np.int32)
    num_new = np.array([9, 6, 1, 4], np.int32)
    scfg = SamplingConfig(temperature=1.0, max_new_tokens=12)
    results = []
    for donate in (False, True):
        cache = init_cache(CFG, 4, 160)
        last, cache2 = prefill(CFG, params, cache, prompts, num_new, donate_cache=donate)
        assert all(x.is_deleted() for x in jax.tree.leaves(cache)) == donate
        out = decode(CFG, params, cache2, last, jax.random.key(5), np.ones(4, bool), [], scfg, donate_cache=donate)
        assert all(x.is_deleted() for x in jax.tree.leaves(cache2)) == donate
        results.append([np.asarray(x) for x in (last, out.tokens_BN, out.logp_BN, *jax.tree.leaves(out.cache))])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    cache = init_cache(CFG, 4, 160)
    k_shape = re.escape(f"f32[4,{CFG.num_kv_heads},{CFG.head_dim},160]")
    for donate in (False, True):
        for program, args in ((_PREFILL[False, donate], (CFG, 9, params, cache, jnp.asarray(prompts), jnp.asarray(num_new),
                                                         None)),
                              (_DECODE[donate], (CFG, scfg, params, cache, jnp.zeros((4, CFG.vocab_size)),
                                                 jax.random.key(0), jnp.ones(4, bool), jnp.full((1,), -1, jnp.int32),
                                                 None))):
            hlo = program.lower(*args).compile().as_text()
            entry = hlo[hlo.index("\nENTRY"):]
            copies = re.findall(r"%copy[\w.]* = " + k_shape, entry)
            assert (len(copies) == 0) == donate, (donate, copies)


def test_scan_layers_decode_equals_unrolled_across_a_window_edge():
    """Greedy decode from a 100-token prefill on a 300-slot cache (windows 128 and 300) crosses the window
    edge at slot 128: the stacked caches of nn.scan give the tokens, log-probs and cache of the unrolled
    per-layer caches."""
    params = _params()
    scan_cfg = CFG.replace(scan_layers=True)
    stacked = stack_layer_params(params, CFG.num_layers)
    rng = np.random.default_rng(4)
    prompts = rng.integers(1, CFG.vocab_size, (3, 100)).astype(np.int32)
    num_new = np.array([100, 90, 120 - 30], np.int32)
    scfg = SamplingConfig(greedy=True, max_new_tokens=60)
    outs = []
    for cfg, p in ((CFG, params), (scan_cfg, stacked)):
        last, cache = prefill(cfg, p, init_cache(cfg, 3, 300), prompts, num_new)
        outs.append(decode(cfg, p, cache, last, jax.random.key(0), np.ones(3, bool), [], scfg))
    unrolled, scanned = outs
    np.testing.assert_array_equal(np.asarray(scanned.tokens_BN), np.asarray(unrolled.tokens_BN))
    np.testing.assert_allclose(np.asarray(scanned.logp_BN), np.asarray(unrolled.logp_BN), atol=1e-4)
    np.testing.assert_allclose(np.asarray(scanned.cache.k), np.stack(unrolled.cache.k), atol=1e-5)
    assert int(np.max(np.asarray(unrolled.cache.lengths))) > 128  # the edge was crossed
