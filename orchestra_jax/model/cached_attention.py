"""Attention of new queries over a KV cache (prefill and decode), over a window of the filled slots.

Cache layout (kv_cache.py): a layer's keys are [B, K, H, S] and its values [B, K, S, H], so both products of
the attention are plain batched matmuls over (B, K) that read the cache where it lies: no transpose, and
with per-layer arrays no copy of a block or of the layer. (The earlier [B, S, K, H] blocks were transposed
and copied before every product: on CPU those copies took more than half of a decode step.)

The queries read the smallest of a few fixed windows (slots 0 .. W-1) that holds every query's slot: a
lax.switch over `cache_windows(S)`, each branch one dense masked softmax over its window. Scores that would
not fit DENSE_SCORES_BYTES (long prefills of large models) go through an online softmax over blocks instead.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from orchestra_jax.model.attention import reference_attention

WINDOW_STEP = 128      # the windows are multiples of this (or of a larger step, for at most MAX_WINDOWS)
MAX_WINDOWS = 8
DENSE_SCORES_BYTES = 256 * 2**20  # float32 scores [B, K, T * G, S] above this: the blocked path


def cache_windows(size: int) -> tuple[int, ...]:
    """The slot windows a read chooses from: multiples of a step (WINDOW_STEP, or larger so that there are
    at most MAX_WINDOWS) up to half the cache, then the whole cache. A window smaller than the cache is a
    strided slice, i.e. a copy (XLA does not fuse it into the matmul), so one larger than half the cache
    costs more than reading the whole cache in place (quickstart decode step at 600 filled slots of 720:
    6.4 ms through the 640-slot window, 4.5 ms through the whole cache; benchmarks/decode_step.py).
    S = 720 -> (128, 256, 720); S <= 255 -> (S,) or (128, S)."""
    step = max(WINDOW_STEP, -(-size // (2 * MAX_WINDOWS * WINDOW_STEP)) * WINDOW_STEP)
    return tuple(range(step, size // 2 + 1, step)) + (size,)


def _block(x, layer, start, size: int, slot_axis: int):
    """Slots start .. start+size-1 of one layer's cache: x is that layer's array (layer None) or the stacked
    [L, ...] caches of all layers (layer: an index, maybe traced); start may be traced."""
    if layer is not None:
        x = jax.lax.dynamic_index_in_dim(x, layer, 0, keepdims=False)
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=slot_axis % x.ndim)


def _window(x, layer, size: int, slot_axis: int):
    """Slots 0 .. size-1 of one layer's cache (as _block); a layer's whole array is read as it is, no copy."""
    if layer is None and size == x.shape[slot_axis]:
        return x
    return _block(x, layer, 0, size, slot_axis)


def _dense(q_BKQH, k_BKHW, v_BKWH, slots_BQ, dtype):
    """Masked softmax attention over a window: query q sees slots 0 .. slots_BQ[b, q] of it."""
    k_BKHW, v_BKWH = (x.astype(dtype).astype(jnp.float32) for x in (k_BKHW, v_BKWH))
    scores = jnp.einsum("bkqh,bkhw->bkqw", q_BKQH, k_BKHW)
    visible = jnp.arange(k_BKHW.shape[-1], dtype=jnp.int32)[None, None, None, :] <= slots_BQ[:, None, :, None]
    scores = jnp.where(visible, scores, -jnp.inf)
    # softmax normalised after the product: the division runs on [.., H] instead of [.., W] (an observation
    # prefill's attention at 400 of 720 slots: 21 -> 13 ms a layer on CPU, ad-hoc timing)
    exp_BKQW = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))  # slot 0 is always visible: finite
    return jnp.einsum("bkqw,bkwh->bkqh", exp_BKQW, v_BKWH) / jnp.sum(exp_BKQW, axis=-1, keepdims=True)


def _blocked(q_BKQH, k, v, layer, slots_BQ, block: int, dtype):
    """Online softmax over blocks 0 .. ceil((max slot + 1) / block) - 1 (float32): scores of one block at a
    time. A ragged last block (S not a multiple of block) is read as the cache's last `block` slots; the slots
    it shares with the block before are masked out, so each slot counts once."""
    size = k.shape[-1]

    def body(i, carry):
        m, l, acc = carry
        nominal = i * block
        start = jnp.minimum(nominal, size - block)
        k_blk = _block(k, layer, start, block, -1).astype(dtype).astype(jnp.float32)
        v_blk = _block(v, layer, start, block, -2).astype(dtype).astype(jnp.float32)
        scores = jnp.einsum("bkqh,bkhc->bkqc", q_BKQH, k_blk)
        slots_C = start + jnp.arange(block, dtype=jnp.int32)
        valid = (slots_C[None, None, None, :] <= slots_BQ[:, None, :, None]) & (slots_C >= nominal)
        scores = jnp.where(valid, scores, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(scores, axis=-1))  # finite after block 0 (slot 0 is always visible)
        p = jnp.exp(scores - m_new[..., None])
        corr = jnp.exp(m - m_new)
        return m_new, l * corr + jnp.sum(p, axis=-1), acc * corr[..., None] + jnp.einsum("bkqc,bkch->bkqh", p, v_blk)

    stats = q_BKQH.shape[:3]
    init = (jnp.full(stats, -jnp.inf, jnp.float32), jnp.zeros(stats, jnp.float32), jnp.zeros(q_BKQH.shape, jnp.float32))
    num_blocks = (jnp.max(slots_BQ) + block) // block
    _, l, acc = jax.lax.fori_loop(0, num_blocks, body, init)
    return acc / l[..., None]


def cached_attention(q_BTNH, k_BKHS, v_BKSH, query_slots_BT, backend: str, layer=None):
    """Attention of new queries over a KV cache: the query at cache slot p sees slots 0..p of its row.

    k_BKHS: keys [B, K, H, S]; v_BKSH: values [B, K, S, H] (one layer's); or, with ``layer``, the stacked
    caches of all layers ([L, B, K, H, S], [L, B, K, S, H]) and the layer to attend. The row holds one
    sequence whose slot index equals its position; every query sees slot 0, so no row is fully masked.
    "reference" masks all S slots with the naive reference; any other backend reads the smallest window
    of `cache_windows(S)` that holds the largest query slot. The cache is read in the queries' dtype.
    """
    batch, length, heads, dim = q_BTNH.shape
    kv_heads, size = k_BKHS.shape[-3], k_BKHS.shape[-1]
    groups = heads // kv_heads
    if backend == "reference":
        k_BSKH = jnp.moveaxis(_window(k_BKHS, layer, size, -1), -1, 1).astype(q_BTNH.dtype)
        v_BSKH = jnp.moveaxis(_window(v_BKSH, layer, size, -2), -2, 1).astype(q_BTNH.dtype)
        mask_BTS = jnp.arange(size, dtype=jnp.int32)[None, None, :] <= query_slots_BT[:, :, None]
        return reference_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS)
    # query index q = t * G + g of kv head k; float32 math as in the packed kernels
    scale = 1.0 / jnp.sqrt(jnp.float32(dim))
    q_BKQH = (q_BTNH.reshape(batch, length, kv_heads, groups, dim).transpose(0, 2, 1, 3, 4)
              .reshape(batch, kv_heads, length * groups, dim).astype(jnp.float32) * scale)
    slots_BQ = jnp.repeat(query_slots_BT.astype(jnp.int32), groups, axis=1)
    windows = cache_windows(size)
    if batch * heads * length * size * 4 > DENSE_SCORES_BYTES:
        out_BKQH = _blocked(q_BKQH, k_BKHS, v_BKSH, layer, slots_BQ, windows[0], q_BTNH.dtype)
    else:
        def read(window):
            return _dense(q_BKQH, _window(k_BKHS, layer, window, -1), _window(v_BKSH, layer, window, -2),
                          slots_BQ, q_BTNH.dtype)

        if len(windows) == 1:
            out_BKQH = read(size)
        else:
            needed = jnp.max(slots_BQ) + 1
            branch = jnp.searchsorted(jnp.asarray(windows, jnp.int32), needed)
            out_BKQH = jax.lax.switch(jnp.minimum(branch, len(windows) - 1),
                                      [functools.partial(read, w) for w in windows])
    out = out_BKQH.reshape(batch, kv_heads, length, groups, dim).transpose(0, 2, 1, 3, 4)
    return out.reshape(batch, length, heads, dim).astype(q_BTNH.dtype)
