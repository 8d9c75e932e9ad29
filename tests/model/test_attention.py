"""Attention kernels against the naive reference, including the Pallas splash kernel in interpret mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.model.attention import packed_attention, reference_attention, segment_mask, splash_attention
from orchestra_jax.model.cached_attention import cached_attention

B, T, N, K, H = 2, 128, 4, 2, 16


def _inputs():
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (B, T, N, H))
    k = jax.random.normal(keys[1], (B, T, K, H))
    v = jax.random.normal(keys[2], (B, T, K, H))
    w = jax.random.normal(keys[3], (B, T, N, H))  # random cotangent
    seg = np.ones((B, T), np.int32)
    seg[0, 50:], seg[0, 100:] = 2, 0   # two sequences then padding
    seg[1, 70:] = 3                    # ids need not be consecutive
    return q, k, v, w, jnp.asarray(seg)


def test_reference_attention_is_softmax_by_hand():
    q, k, v, _, seg = _inputs()
    out = np.asarray(jax.jit(reference_attention)(q, k, v, segment_mask(seg)))
    b, t, n = 0, 60, 3  # query in segment 2; kv head n // 2
    keys = np.arange(50, t + 1)
    scores = np.asarray(k)[b, keys, n // 2] @ np.asarray(q)[b, t, n] / np.sqrt(H)
    p = np.exp(scores - scores.max())
    p /= p.sum()
    np.testing.assert_allclose(out[b, t, n], p @ np.asarray(v)[b, keys, n // 2], atol=1e-5)


def test_xla_packed_attention_matches_reference_values_and_grads():
    q, k, v, w, seg = _inputs()

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

    xla = lambda q, k, v: packed_attention(q, k, v, seg, "xla")  # noqa: E731
    ref = lambda q, k, v: packed_attention(q, k, v, seg, "reference")  # noqa: E731
    assert np.abs(np.asarray(jax.jit(xla)(q, k, v) - jax.jit(ref)(q, k, v))).max() <= 1e-5
    grads_x = jax.jit(jax.grad(loss(xla), (0, 1, 2)))(q, k, v)
    grads_r = jax.jit(jax.grad(loss(ref), (0, 1, 2)))(q, k, v)
    for a, b in zip(grads_x, grads_r):
        assert np.abs(np.asarray(a - b)).max() <= 1e-5


def test_splash_kernel_interpret_mode_matches_reference():
    """The Pallas TPU kernel run by the Pallas interpreter on CPU: same values, grads, no leakage."""
    q, k, v, w, seg = _inputs()
    splash = lambda q, k, v: splash_attention(q, k, v, seg, interpret=True)  # noqa: E731
    ref = lambda q, k, v: reference_attention(q, k, v, segment_mask(seg))  # noqa: E731
    assert np.abs(np.asarray(jax.jit(splash)(q, k, v) - jax.jit(ref)(q, k, v))).max() <= 1e-5
    grads_s = jax.jit(jax.grad(lambda *a: jnp.sum(splash(*a) * w), (0, 1, 2)))(q, k, v)
    grads_r = jax.jit(jax.grad(lambda *a: jnp.sum(ref(*a) * w), (0, 1, 2)))(q, k, v)
    for a, b in zip(grads_s, grads_r):
        assert np.abs(np.asarray(a - b)).max() <= 1e-5
    # the loss of segment 1 in row 0 has exactly zero gradient on segment 2's keys and values
    only_seg1 = w * (seg == 1)[..., None, None]
    _, dk, dv = jax.jit(jax.grad(lambda *a: jnp.sum(splash(*a) * only_seg1), (0, 1, 2)))(q, k, v)
    assert np.all(np.asarray(dk)[0, 50:] == 0) and np.all(np.asarray(dv)[0, 50:] == 0)
    assert np.abs(np.asarray(dk)[0, :50]).max() > 0


def test_splash_rejects_length_not_multiple_of_128():
    q, k, v, _, seg = _inputs()
    with pytest.raises(ValueError, match="multiple of 128, got 100"):
        splash_attention(q[:, :100], k[:, :100], v[:, :100], seg[:, :100], interpret=True)


def test_cached_attention_sees_slots_up_to_its_position():
    q, k, v, _, _ = _inputs()
    slots = jnp.asarray([[3, 4], [0, 9]], jnp.int32)
    for backend in ("xla", "reference"):
        k_cache, v_cache = jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3))  # the cache's layout
        out = np.asarray(jax.jit(cached_attention, static_argnums=4)(q[:, :2], k_cache, v_cache, slots, backend))
        mask = np.arange(T)[None, None] <= np.asarray(slots)[:, :, None]
        expected = np.asarray(jax.jit(reference_attention)(q[:, :2], k, v, jnp.asarray(mask)))
        assert np.abs(out - expected).max() <= 1e-5
        # slot-0 query sees only key 0: output is v at slot 0 for its kv head
        np.testing.assert_allclose(out[1, 0], np.repeat(np.asarray(v)[1, 0], N // K, axis=0), atol=1e-6)
