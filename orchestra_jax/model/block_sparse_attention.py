"""Packed-row attention that skips masked blocks: a pure-JAX flash attention for one CPU device.

Packed training rows are mostly masked: a continuation sees its prompt and itself, never the other episodes
in its row, and no query sees the future. The dense XLA path still computes (and, on CPU, streams through
memory) every [T, T] score. This kernel walks the causal (query block, key block) pairs in a `lax.scan`,
all rows at once, and per pair `lax.cond`s the block away when no query of it in any row can see a key of
it, keeping a running max and sum per query (online softmax) so only one [rows, block, block] score block
exists at a time. Each pair's exact mask (segment, prefix segment, causal) is applied per row, so a row
whose queries see none of the pair's keys adds nothing. The backward pass (custom_vjp) walks the same pairs
and recomputes each block's probabilities from the saved log-sum-exp, as FlashAttention does.

Why all rows per pair: on a CPU each small op costs a few microseconds of dispatch whatever its size, and
a pair of [block, block] scores is a handful of such ops, so walking pairs row by row was dispatch-bound
(most of the quickstart update's attention time in a profile); rows per op amortise that, at the price of
computing a pair for every row when any row needs it.

The walk slices every row of a block, so it suits one device: under a mesh that shards the rows the
partitioner would gather them (correct, slow); `attention.resolve_backend` picks it only for a single CPU
device.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Query and key block (rows are padded to a multiple of it). 64 rather than 128 on CPU (benchmarks/attention.py
# --blocks 64,128, 2026-12-05, alternated): prefix-shared GRPO rows 10-18% faster forward + backward, a row
# that is one causal segment 4-11% slower; rows of two packed episodes (SFT) were about 12% faster in an
# ad-hoc timing.
BLOCK = 64


def block_flags(segment_ids_BT, prefix_segment_ids_BT, block: int):
    """bool [B, n, n]: key block j may hold a key that a query of block i sees (conservative, never misses).

    A block's keys have segment ids inside [min, max] of that block, so a query block whose own (or prefix)
    segment id falls in that interval may see it; otherwise none of its queries can. Causal: j <= i.
    """
    batch, length = segment_ids_BT.shape
    n = length // block
    key_ids_Bnb = segment_ids_BT.reshape(batch, n, block)
    lo_Bn, hi_Bn = key_ids_Bnb.min(-1), key_ids_Bnb.max(-1)

    def may_see(query_ids_BT):
        ids_Bn1b = query_ids_BT.reshape(batch, n, 1, block)
        inside = (ids_Bn1b >= lo_Bn[:, None, :, None]) & (ids_Bn1b <= hi_Bn[:, None, :, None])
        return jnp.any(inside, axis=-1)

    flags_Bnn = may_see(segment_ids_BT)
    if prefix_segment_ids_BT is not None:
        flags_Bnn = flags_Bnn | may_see(prefix_segment_ids_BT)
    return flags_Bnn & jnp.tril(jnp.ones((n, n), bool))[None]


def _causal_pairs(n: int):
    """(query block, key block) int32 arrays over the causal block pairs, key blocks inner."""
    qi, kj = np.tril_indices(n)
    return jnp.asarray(qi, jnp.int32), jnp.asarray(kj, jnp.int32)


class _Blocks:
    """Slices one (query block, key block) pair, every row, out of the operands: segment ids [B, T] and the
    head-major tensors [B, K, T, ...] the walk works in."""

    def __init__(self, block: int, segment_ids_BT, prefix_segment_ids_BT):
        self.block = block
        self.seg = segment_ids_BT
        self.pre = prefix_segment_ids_BT
        self.offsets = jnp.arange(block, dtype=jnp.int32)

    def take(self, x, start, axis=2):
        """x[:, :, start:start + block] (axis 2, head-major tensors) or x[:, start:start + block] (axis 1)."""
        return jax.lax.dynamic_slice_in_dim(x, start, self.block, axis=axis)

    def put(self, x, start, value):
        return jax.lax.dynamic_update_slice_in_dim(x, value.astype(x.dtype), start, axis=2)

    def visible(self, q_start, k_start):
        """bool [B, block(query), block(key)]: the exact mask of this pair (segment or prefix segment, causal)."""
        key_seg = self.take(self.seg, k_start, axis=1)[:, None, :]
        vis = self.take(self.seg, q_start, axis=1)[:, :, None] == key_seg
        if self.pre is not None:
            vis = vis | (self.take(self.pre, q_start, axis=1)[:, :, None] == key_seg)
        return vis & ((q_start + self.offsets)[:, None] >= (k_start + self.offsets)[None, :])[None]


def _head_major(x_BT_):
    """[B, T, K, ...] -> [B, K, T, ...]: per (row, kv head) the block's queries and keys are then contiguous,
    so every product of the walk is a plain batched matmul over (B, K) with no transposing copy per pair."""
    return jnp.moveaxis(x_BT_, 2, 1)


def _scores(q_BKbGH, k_BKbH, vis_Bbb, scale):
    """Float32 [B, K, query, G, key] scores with masked entries at -inf."""
    s = jnp.einsum("bktgh,bksh->bktgs", q_BKbGH, k_BKbH, preferred_element_type=jnp.float32) * scale
    return jnp.where(vis_Bbb[:, None, :, None, :], s, -jnp.inf)


def _forward(q, k, v, segment_ids_BT, prefix_segment_ids_BT, block):
    """(out, log-sum-exp [B, K, T, G], flags) for head-major q [B, K, T, G, H], k / v [B, K, T, H]."""
    length, dim = q.shape[2], q.shape[-1]
    scale = 1.0 / np.sqrt(dim)
    blocks = _Blocks(block, segment_ids_BT, prefix_segment_ids_BT)
    flags = block_flags(segment_ids_BT, prefix_segment_ids_BT, block)

    def pair(carry, ij):
        i, j = ij

        def attend(carry):
            acc, run_max, run_sum = carry
            qs, ks = i * block, j * block
            s = _scores(blocks.take(q, qs), blocks.take(k, ks), blocks.visible(qs, ks), scale)
            old_max = blocks.take(run_max, qs)
            new_max = jnp.maximum(old_max, s.max(-1))
            safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)  # no key seen yet: keep exp() finite
            p = jnp.exp(s - safe_max[..., None])
            rescale = jnp.exp(old_max - safe_max)  # 0 when old_max is -inf
            new_sum = blocks.take(run_sum, qs) * rescale + p.sum(-1)
            pv = jnp.einsum("bktgs,bksh->bktgh", p.astype(v.dtype), blocks.take(v, ks),
                            preferred_element_type=jnp.float32)
            new_acc = blocks.take(acc, qs) * rescale[..., None] + pv
            return (blocks.put(acc, qs, new_acc), blocks.put(run_max, qs, new_max), blocks.put(run_sum, qs, new_sum))

        return jax.lax.cond(jnp.any(flags[:, i, j]), attend, lambda c: c, carry), None

    init = (jnp.zeros(q.shape, jnp.float32), jnp.full(q.shape[:-1], -jnp.inf, jnp.float32),
            jnp.zeros(q.shape[:-1], jnp.float32))
    (acc, run_max, run_sum), _ = jax.lax.scan(pair, init, _causal_pairs(length // block))
    # Every query sees itself (same segment, diagonal block), so run_sum > 0.
    out = (acc / run_sum[..., None]).astype(q.dtype)
    return out, run_max + jnp.log(run_sum), flags


def _backward(q, k, v, segment_ids_BT, prefix_segment_ids_BT, out, lse_BKTG, flags, do, block):
    """(dq, dk, dv), head-major as the operands."""
    length, dim = q.shape[2], q.shape[-1]
    scale = 1.0 / np.sqrt(dim)
    blocks = _Blocks(block, segment_ids_BT, prefix_segment_ids_BT)
    # D_t = sum_h dO * O: the softmax backward's row term, once for all pairs.
    delta_BKTG = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)

    def pair(carry, ij):
        i, j = ij

        def attend(carry):
            dq, dk, dv = carry
            qs, ks = i * block, j * block
            q_b, k_b, v_b, do_b = blocks.take(q, qs), blocks.take(k, ks), blocks.take(v, ks), blocks.take(do, qs)
            s = _scores(q_b, k_b, blocks.visible(qs, ks), scale)
            p = jnp.exp(s - blocks.take(lse_BKTG, qs)[..., None])  # masked: exp(-inf) = 0
            dv_b = jnp.einsum("bktgs,bktgh->bksh", p.astype(do_b.dtype), do_b, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bktgh,bksh->bktgs", do_b, v_b, preferred_element_type=jnp.float32)
            ds = p * (dp - blocks.take(delta_BKTG, qs)[..., None]) * scale
            dq_b = jnp.einsum("bktgs,bksh->bktgh", ds.astype(k_b.dtype), k_b, preferred_element_type=jnp.float32)
            dk_b = jnp.einsum("bktgs,bktgh->bksh", ds.astype(q_b.dtype), q_b, preferred_element_type=jnp.float32)
            return (blocks.put(dq, qs, blocks.take(dq, qs) + dq_b), blocks.put(dk, ks, blocks.take(dk, ks) + dk_b),
                    blocks.put(dv, ks, blocks.take(dv, ks) + dv_b))

        return jax.lax.cond(jnp.any(flags[:, i, j]), attend, lambda c: c, carry), None

    init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    (dq, dk, dv), _ = jax.lax.scan(pair, init, _causal_pairs(length // block))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q_BKTGH, k_BKTH, v_BKTH, segment_ids_BT, prefix_segment_ids_BT, block):
    return _forward(q_BKTGH, k_BKTH, v_BKTH, segment_ids_BT, prefix_segment_ids_BT, block)[0]


def _attention_fwd(q_BKTGH, k_BKTH, v_BKTH, segment_ids_BT, prefix_segment_ids_BT, block):
    out, lse, flags = _forward(q_BKTGH, k_BKTH, v_BKTH, segment_ids_BT, prefix_segment_ids_BT, block)
    return out, (q_BKTGH, k_BKTH, v_BKTH, segment_ids_BT, prefix_segment_ids_BT, out, lse, flags)


def _attention_bwd(block, residuals, dout):
    q, k, v, seg, pre, out, lse, flags = residuals  # flags: the forward's block test, not recomputed
    dq, dk, dv = _backward(q, k, v, seg, pre, out, lse, flags, dout, block)
    return dq, dk, dv, None, None  # segment ids are integers: no cotangent


_attention.defvjp(_attention_fwd, _attention_bwd)


def block_sparse_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, prefix_segment_ids_BT=None, *,
                           block: int = BLOCK):
    """Packed-row attention (the mask of attention.segment_mask) that skips the blocks it masks entirely.

    q [B, T, N, H], k / v [B, T, K, H] with N a multiple of K. Returns [B, T, N, H] in q's dtype; float32
    softmax statistics and accumulation. Rows shorter than `block` use one block of their length; longer
    rows are padded to a multiple of `block` with a segment id no real token has (causal: no real query
    sees the padding, which is sliced off).
    """
    batch, length, heads, dim = q_BTNH.shape
    kv_heads = k_BTKH.shape[2]
    block = min(block, length)
    segment_ids_BT = jnp.asarray(segment_ids_BT, jnp.int32)
    if prefix_segment_ids_BT is not None:
        prefix_segment_ids_BT = jnp.asarray(prefix_segment_ids_BT, jnp.int32)
    q_BTKGH = q_BTNH.reshape(batch, length, kv_heads, heads // kv_heads, dim)
    pad = -length % block
    if pad:
        unused_id = jnp.min(segment_ids_BT) - 1
        if prefix_segment_ids_BT is not None:
            unused_id = jnp.minimum(unused_id, jnp.min(prefix_segment_ids_BT) - 1)

        def pad_time(x, value=0):
            return jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2), constant_values=value)

        q_BTKGH, k_BTKH, v_BTKH = pad_time(q_BTKGH), pad_time(k_BTKH), pad_time(v_BTKH)
        segment_ids_BT = pad_time(segment_ids_BT, unused_id)
        if prefix_segment_ids_BT is not None:
            prefix_segment_ids_BT = pad_time(prefix_segment_ids_BT, unused_id)
    # head-major once per call (autodiff transposes the cotangents back): the walk's products need no copies
    out_BKTGH = _attention(_head_major(q_BTKGH), _head_major(k_BTKH), _head_major(v_BTKH), segment_ids_BT,
                           prefix_segment_ids_BT, block)
    return jnp.moveaxis(out_BKTGH, 1, 2)[:, :length].reshape(batch, length, heads, dim)
