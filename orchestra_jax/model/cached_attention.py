"""Attention of new queries over a KV cache (prefill and decode), read in blocks of the filled slots.

The cache of all layers is one stacked array [L, B, S, K, H] (slot index == position); a layer's queries
read their layer's blocks from it directly, so a decode step never copies a layer's cache.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from orchestra_jax.model.attention import dense_attention, reference_attention

# Cache block sizes tried (largest first); a cache needs >= 2 blocks to use them. On CPU a decode step is
# bound by reading the cache, so small blocks (less read past the filled slots) win: the quickstart's decode
# step at 300 filled slots of 720 takes 6.9 ms with 64-slot blocks vs 9.9 ms with 256 (benchmarks/decode_step.py);
# on accelerators every block is a loop iteration of kernel launches, so they get larger ones.
KV_BLOCKS = (256, 128, 64)
CPU_KV_BLOCKS = (64,)


def kv_block_size(size: int, platform: str | None = None) -> int | None:
    """The first of the platform's block sizes (CPU_KV_BLOCKS on "cpu", else KV_BLOCKS; default: jax's
    default backend) that divides the cache into >= 2 blocks, else the first of them that fits twice (its
    last block then ragged: S = 720 -> 256, blocks at 0, 256 and 464..719 of which 512.. counts)."""
    blocks = CPU_KV_BLOCKS if (platform or jax.default_backend()) == "cpu" else KV_BLOCKS
    for block in blocks:
        if size % block == 0 and size // block >= 2:
            return block
    for block in blocks:
        if size // block >= 2:
            return block
    return None


def _layer_block(x_LBSKH, layer, start, size: int):
    """Slots start .. start + size of one layer's cache from the stacked [L, B, S, K, H] cache (a read of
    that block only; the layer's cache is never sliced out whole)."""
    shape = (1, x_LBSKH.shape[1], size) + x_LBSKH.shape[3:]
    return jax.lax.dynamic_slice(x_LBSKH, (layer, 0, start, 0, 0), shape)[0]


def _stacked(k, v, layer):
    """(k, v, layer) with k, v stacked [L, B, S, K, H]: one layer's [B, S, K, H] cache is a stack of one."""
    return (k[None], v[None], 0) if layer is None else (k, v, layer)


def blocked_cached_attention(q_BTNH, k_BSKH, v_BSKH, query_slots_BT, block: int, layer=None):
    """Cached attention that reads only the cache blocks holding filled slots.

    A while loop over blocks 0 .. ceil((max query slot + 1) / block) - 1 with an online softmax (float32):
    per step it touches the filled part of the cache only, never all S slots, and copies nothing. With
    ``layer``, k and v are the stacked caches [L, B, S, K, H] of all layers and the blocks are read from
    that layer.
    """
    k_LBSKH, v_LBSKH, layer = _stacked(k_BSKH, v_BSKH, layer)
    batch, length, heads, dim = q_BTNH.shape
    kv_heads = k_BSKH.shape[-2]
    groups = heads // kv_heads
    scale = 1.0 / jnp.sqrt(jnp.float32(dim))
    q_BTKGH = q_BTNH.reshape(batch, length, kv_heads, groups, dim).astype(jnp.float32) * scale
    num_blocks = (jnp.max(query_slots_BT) + block) // block

    size = k_BSKH.shape[-3]

    def read(x, start):  # the cache in the compute dtype, then float32 (as a compute-dtype cache would be)
        return _layer_block(x, layer, start, block).astype(q_BTNH.dtype).astype(jnp.float32)

    def body(i, carry):
        m, l, acc = carry
        # A ragged last block (S not a multiple of block) is read as the cache's last `block` slots; the
        # slots it shares with the block before are masked out, so each slot counts once.
        nominal = i * block
        start = jnp.minimum(nominal, size - block)
        k_blk = read(k_LBSKH, start)
        v_blk = read(v_LBSKH, start)
        scores = jnp.einsum("btkgh,bckh->btkgc", q_BTKGH, k_blk)
        slots_C = start + jnp.arange(block, dtype=jnp.int32)
        valid_BTC = (slots_C[None, None, :] <= query_slots_BT[:, :, None]) & (slots_C >= nominal)[None, None, :]
        scores = jnp.where(valid_BTC[:, :, None, None, :], scores, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(scores, axis=-1))  # finite after block 0 (slot 0 is always visible)
        p = jnp.exp(scores - m_new[..., None])
        corr = jnp.exp(m - m_new)
        return (m_new, l * corr + jnp.sum(p, axis=-1),
                acc * corr[..., None] + jnp.einsum("btkgc,bckh->btkgh", p, v_blk))

    stats = (batch, length, kv_heads, groups)
    init = (jnp.full(stats, -jnp.inf, jnp.float32), jnp.zeros(stats, jnp.float32),
            jnp.zeros(stats + (dim,), jnp.float32))
    _, l, acc = jax.lax.fori_loop(0, num_blocks, body, init)
    return (acc / l[..., None]).reshape(batch, length, heads, dim).astype(q_BTNH.dtype)


def cached_attention(q_BTNH, k_BSKH, v_BSKH, query_slots_BT, backend: str, layer=None):
    """Attention of new queries over a KV cache: query at cache slot p sees slots 0..p.

    The cache row holds one sequence whose slot index equals its position. Every query sees at least
    slot 0, so no row is fully masked. "reference" masks all S slots; every other backend reads only the
    filled cache blocks (blocked_cached_attention) when S holds >= 2 blocks (`kv_block_size`), else
    uses the dense XLA path over all S slots (decode steps are tiny; prefill is bounded by max_len).
    ``layer``: k and v are the stacked caches [L, B, S, K, H] of all layers; attend that layer's. The
    cache is read in the queries' (compute) dtype.
    """
    slots_S = jnp.arange(k_BSKH.shape[-3], dtype=jnp.int32)
    if backend != "reference":
        block = kv_block_size(k_BSKH.shape[-3])
        if block is not None:
            return blocked_cached_attention(q_BTNH, k_BSKH, v_BSKH, query_slots_BT, block, layer)
    k_LBSKH, v_LBSKH, layer = _stacked(k_BSKH, v_BSKH, layer)
    k_BSKH, v_BSKH = (jax.lax.dynamic_index_in_dim(x, layer, 0, keepdims=False).astype(q_BTNH.dtype)
                      for x in (k_LBSKH, v_LBSKH))
    mask_BTS = slots_S[None, None, :] <= query_slots_BT[:, :, None]
    if backend == "reference":
        return reference_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS)
    return dense_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS, is_causal=False, implementation="xla")
