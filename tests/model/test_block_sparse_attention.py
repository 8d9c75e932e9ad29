"""The block-skipping flash kernel against the naive reference: values, gradients, skipped blocks, dtypes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.model.attention import packed_attention, reference_attention, segment_mask
from orchestra_jax.model.block_sparse_attention import block_flags, block_sparse_attention

N, K, H = 4, 2, 16


def _shared_rows(length=256):
    """Two rows of prefix-shared groups (prompt segment + continuations seeing it), then padding."""
    seg = np.zeros((2, length), np.int32)
    pre = np.zeros((2, length), np.int32)
    seg[0, :40], seg[0, 40:70], seg[0, 70:150], seg[0, 150:170] = 1, 2, 3, 4   # prompt 1 with continuations
    pre[0, 40:170] = 1
    seg[0, 170:200] = 5                                                     # a plain segment, then padding
    seg[1, :100], seg[1, 100:230] = 7, 9                                    # ids need not be consecutive
    seg[1, 230:] = 8                                                        # nor increasing
    return jnp.asarray(seg), jnp.asarray(pre)


def _qkvw(length, dtype=jnp.float32, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    return (jax.random.normal(keys[0], (2, length, N, H), dtype), jax.random.normal(keys[1], (2, length, K, H), dtype),
            jax.random.normal(keys[2], (2, length, K, H), dtype), jax.random.normal(keys[3], (2, length, N, H)))


@pytest.mark.parametrize("block", [32, 64])
def test_values_and_grads_match_the_reference(block):
    q, k, v, w = _qkvw(256)
    seg, pre = _shared_rows(256)
    sparse = lambda q, k, v: block_sparse_attention(q, k, v, seg, pre, block=block)  # noqa: E731
    ref = lambda q, k, v: reference_attention(q, k, v, segment_mask(seg, pre))  # noqa: E731
    np.testing.assert_allclose(jax.jit(sparse)(q, k, v), jax.jit(ref)(q, k, v), atol=1e-5, rtol=1e-5)
    grads_s = jax.jit(jax.grad(lambda *a: jnp.sum(sparse(*a) * w), (0, 1, 2)))(q, k, v)
    grads_r = jax.jit(jax.grad(lambda *a: jnp.sum(ref(*a) * w), (0, 1, 2)))(q, k, v)
    for a, b in zip(grads_s, grads_r):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


def test_without_prefix_segments_and_random_segment_ids():
    """Segment ids in any order (the block test is an interval test): still exactly the reference."""
    q, k, v, _ = _qkvw(128, seed=1)
    seg = jnp.asarray(np.random.default_rng(0).integers(0, 4, (2, 128)), jnp.int32)
    out = jax.jit(lambda q, k, v: block_sparse_attention(q, k, v, seg, block=32))(q, k, v)
    np.testing.assert_allclose(out, reference_attention(q, k, v, segment_mask(seg)), atol=1e-5, rtol=1e-5)


def test_block_flags_cover_the_mask_and_skip_blocks():
    seg, pre = _shared_rows(256)
    mask = np.asarray(segment_mask(seg, pre)).reshape(2, 8, 32, 8, 32)
    needed = mask.any(axis=(2, 4))
    flags = np.asarray(block_flags(seg, pre, 32))
    assert not np.any(needed & ~flags)                      # never skips a block that holds a visible key
    assert flags.sum() < 2 * 36 and needed.sum() <= flags.sum()
    assert flags[0, 5, 0] and not flags[0, 7, 3]            # the last continuation reads the prompt, not row 0's
    assert not flags[:, 0, 1:].any()                        # nothing above the diagonal


def test_bfloat16_close_to_float32_reference():
    q, k, v, _ = _qkvw(128, jnp.bfloat16, seed=2)
    seg, pre = _shared_rows(128)
    out = jax.jit(lambda q, k, v: block_sparse_attention(q, k, v, seg, pre, block=32))(q, k, v)
    assert out.dtype == jnp.bfloat16
    ref = reference_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                              segment_mask(seg, pre))
    assert np.abs(np.asarray(out, np.float32) - np.asarray(ref)).max() <= 0.05


@pytest.mark.parametrize("length", [100, 20])
def test_odd_lengths_are_padded_internally(length):
    """100 tokens: padded to 128 with a segment id no real token has; 20: one block of 20."""
    q, k, v, w = _qkvw(length, seed=3)
    seg = jnp.asarray(np.repeat([[1, 2, 0, 0]], length // 4, axis=1).reshape(1, length).repeat(2, 0))
    pre = jnp.where(seg == 2, 1, 0)
    sparse = lambda q, k, v: packed_attention(q, k, v, seg, "block_sparse", pre)  # noqa: E731
    ref = lambda q, k, v: reference_attention(q, k, v, segment_mask(seg, pre))  # noqa: E731
    np.testing.assert_allclose(sparse(q, k, v), ref(q, k, v), atol=1e-5)
    grads_s = jax.grad(lambda *a: jnp.sum(sparse(*a) * w), (0, 1, 2))(q, k, v)
    grads_r = jax.grad(lambda *a: jnp.sum(ref(*a) * w), (0, 1, 2))(q, k, v)
    for a, b in zip(grads_s, grads_r):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
