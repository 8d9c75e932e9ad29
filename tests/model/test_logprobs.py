"""Chunked log-softmax vs the naive full-logits version; the Qwen3-0.6B log-prob pass fits in 16 GB (compile only)."""
import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from orchestra_jax.model import (ModelConfig, Policy, chunked_logprobs, init_params, logprobs_from_logits,
                                 previous_token_index, token_logprobs)
from orchestra_jax.model.attention import Q_BLOCK

CFG = ModelConfig(vocab_size=211, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64, qk_norm=True)


def test_previous_token_index_by_hand():
    seg = jnp.asarray([[1, 1, 1, 2, 2, 0], [3, 3, 0, 0, 4, 4]])
    np.testing.assert_array_equal(previous_token_index(seg), [[-1, 0, 1, -1, 3, -1], [-1, 0, -1, -1, -1, 4]])


@pytest.mark.parametrize("tied,chunk", [(True, 5), (False, 64)])
def test_chunked_logprobs_equal_naive_values_and_grads(tied, chunk):
    cfg = dataclasses.replace(CFG, tie_word_embeddings=tied)
    params = init_params(cfg, jax.random.key(1))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 23)), jnp.int32)
    seg = jnp.asarray(np.r_[[1] * 9 + [2] * 10 + [0] * 4, [5] * 23].reshape(2, 23), jnp.int32)
    pos = jnp.asarray(np.r_[np.arange(9), np.arange(10), [0] * 4, np.arange(23)].reshape(2, 23), jnp.int32)
    w = jnp.asarray(rng.standard_normal((2, 23)), jnp.float32)

    def naive(p):
        logits = Policy(cfg).apply({"params": p}, tokens, pos, seg)
        return logprobs_from_logits(logits, tokens, previous_token_index(seg))

    def chunked(p):
        return token_logprobs(cfg, p, tokens, pos, seg, chunk_size=chunk)

    (lp_n, ent_n), (lp_c, ent_c) = jax.jit(naive)(params), jax.jit(chunked)(params)
    np.testing.assert_allclose(np.asarray(lp_c), np.asarray(lp_n), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent_c), np.asarray(ent_n), atol=1e-5)
    assert float(jnp.abs(lp_n).max()) > 1.0 and np.all(np.asarray(lp_c)[np.asarray(previous_token_index(seg)) < 0] == 0)
    loss = lambda f: lambda p: jnp.sum(f(p)[0] * w) + jnp.sum(f(p)[1] * w * 0.3)  # noqa: E731
    g_n, g_c = jax.jit(jax.grad(loss(naive)))(params), jax.jit(jax.grad(loss(chunked)))(params)
    for a, b in zip(jax.tree.leaves(g_n), jax.tree.leaves(g_c)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    lp_only, none = token_logprobs(cfg, params, tokens, pos, seg, chunk_size=chunk, with_entropy=False)
    assert none is None and np.allclose(np.asarray(lp_only), np.asarray(lp_c), atol=1e-6)


def test_chunked_logprobs_rejects_bad_shapes():
    h = jnp.zeros((2, 4, 8))
    with pytest.raises(ValueError, match="must both be \\[B, K\\]"):
        chunked_logprobs(h, jnp.zeros((5, 8)), jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="must both be \\[B, K\\] with B = 2"):
        chunked_logprobs(h, jnp.zeros((5, 8)), jnp.zeros((3, 4), jnp.int32), jnp.zeros((3, 4), jnp.int32))


def test_chunked_logprobs_of_selected_targets_equal_the_full_ones_there():
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(2, 9, 8)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(5, 8)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 5, (2, 9)), jnp.int32)
    prev = jnp.tile(jnp.arange(-1, 8, dtype=jnp.int32), (2, 1))
    full, _ = chunked_logprobs(h, head, tokens, prev, chunk_size=4)
    pick = np.array([[3, 8, 1], [5, 0, 2]])  # K = 3 positions per row; position 0 has no predecessor
    sel, ent = chunked_logprobs(h, head, jnp.take_along_axis(tokens, pick, 1), jnp.take_along_axis(prev, pick, 1),
                                chunk_size=2)
    np.testing.assert_allclose(np.asarray(sel), np.take_along_axis(np.asarray(full), pick, 1), rtol=1e-6)
    assert float(sel[1, 1]) == 0.0 and ent.shape == (2, 3)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunked_logprobs(h, jnp.zeros((5, 8)), jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 4), jnp.int32),
                         chunk_size=0)


def test_query_blocked_xla_attention_equals_reference_on_long_rows():
    """Rows longer than 2 * Q_BLOCK take the query-blocked XLA path: same logits as the reference backend."""
    cfg = dataclasses.replace(CFG, num_layers=1)
    params = init_params(cfg, jax.random.key(2))
    length = 3 * Q_BLOCK
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (1, length)), jnp.int32)
    seg = jnp.asarray(np.repeat([1, 2, 3], [700, 600, length - 1300])[None], jnp.int32)
    pre = jnp.asarray(np.repeat([1, 1, 3], [700, 600, length - 1300])[None], jnp.int32)
    pos = jnp.asarray(np.r_[np.arange(700), 700 + np.arange(600), np.arange(length - 1300)][None], jnp.int32)
    out = {b: jax.jit(Policy(dataclasses.replace(cfg, attention_backend=b)).apply)({"params": params}, tokens, pos,
                                                                                   seg, pre)
           for b in ("xla", "reference")}
    np.testing.assert_allclose(np.asarray(out["xla"]), np.asarray(out["reference"]), atol=1e-4)


def test_qwen3_0p6b_logprob_pass_fits_16gb():
    """Compiled memory of the chunked log-prob pass over 8 x 4,096 tokens with the Qwen3-0.6B shapes
    (vocab 151,936): abstract shapes only. Layers scanned to keep the compile short (same per-layer buffers)."""
    conf = pathlib.Path(__file__).resolve().parents[2] / "conf/model/qwen3_0p6b.yaml"
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(conf)))
    cfg = cfg.replace(scan_layers=True)
    assert cfg.vocab_size == 151_936
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    tok = jax.ShapeDtypeStruct((8, 4096), jnp.int32)
    fn = jax.jit(lambda p, t, pos, s: token_logprobs(cfg, p, t, pos, s, chunk_size=256))
    mem = fn.lower(params, tok, tok, tok).compile().memory_analysis()
    total = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    assert total < 16 * 2**30, f"log-prob pass needs {total / 2**30:.1f} GiB"
