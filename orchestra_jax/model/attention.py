"""Attention kernels for packed rows (segment ids); the KV-cache read is in cached_attention.py.

All functions take q [B, T, N, H] and k, v [B, S, K, H] with N a multiple of K (grouped-query attention:
query head n reads key/value head n // (N // K), the Hugging Face `repeat_kv` convention) and return
[B, T, N, H] in q's dtype. Softmax statistics are float32.

Backends (ModelConfig.attention_backend):
  reference  plain einsum + softmax; the naive ground truth for tests.
  xla        jax.nn.dot_product_attention(implementation="xla") with a boolean [B, 1, T, S] mask.
  cudnn      jax.nn.dot_product_attention(implementation="cudnn"); GPU only, bfloat16/float16 only.
  splash     Pallas splash attention (TPU) with SegmentIds; no T x T mask is materialised.
  block_sparse  pure-JAX flash attention that skips fully masked blocks (block_sparse_attention.py).
  auto       block_sparse on a single CPU device (xla on a CPU mesh: its row loop would gather sharded
             rows), cudnn on GPU (xla when computing in float32), splash on TPU.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from orchestra_jax.model.block_sparse_attention import block_sparse_attention

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def resolve_backend(backend: str, dtype, platform: str | None = None) -> str:
    """The concrete backend for `backend` on `platform` (default: jax.default_backend()).

    Raises ValueError when an explicit accelerator backend cannot run on this platform.
    """
    platform = platform or jax.default_backend()
    is_gpu = platform in ("gpu", "cuda", "rocm")
    if backend == "auto":
        if platform == "tpu":
            return "splash"
        if is_gpu and jnp.dtype(dtype) in [jnp.dtype(d) for d in CUDNN_DTYPES]:
            return "cudnn"
        if platform == "cpu" and jax.device_count() == 1:
            return "block_sparse"
        return "xla"
    if backend == "cudnn":
        if not is_gpu:
            raise ValueError(f"attention_backend='cudnn' needs a GPU, but JAX runs on {platform!r}; "
                             "use 'auto' or 'xla'")
        if jnp.dtype(dtype) not in [jnp.dtype(d) for d in CUDNN_DTYPES]:
            raise ValueError(f"attention_backend='cudnn' needs dtype bfloat16 or float16, got "
                             f"{jnp.dtype(dtype).name}; use 'auto' or 'xla' for float32")
        return "cudnn"
    if backend == "splash" and platform != "tpu":
        raise ValueError(f"attention_backend='splash' (Pallas TPU kernel) needs a TPU, but JAX runs on "
                         f"{platform!r}; use 'auto' or 'xla'")
    if backend not in ("xla", "reference", "splash", "block_sparse"):
        raise ValueError(f"unknown attention backend {backend!r}")
    return backend


def supports_shared_prefix(backend: str, dtype, platform: str | None = None) -> bool:
    """Whether `backend` (as resolved on `platform`) can express the prefix-shared mask (prefix_segment_ids).

    The dense backends (reference, xla, cudnn: the mask becomes a bias) and block_sparse can; splash cannot (its SegmentIds
    are one equality per query, and the extra prompt segment is a second one), so callers pack unshared rows.
    """
    if backend == "splash":
        return False
    return resolve_backend(backend, dtype, platform) in ("reference", "xla", "cudnn", "block_sparse")


def visible_segments(segment_ids_BT: jax.Array, prefix_segment_ids_BT: jax.Array | None = None) -> jax.Array:
    """Boolean [B, T, T]: key s's segment is the query's own segment or its prefix segment (not causal yet)."""
    key_seg_B1S = segment_ids_BT[:, None, :]
    same = segment_ids_BT[:, :, None] == key_seg_B1S
    if prefix_segment_ids_BT is not None:
        same = same | (prefix_segment_ids_BT[:, :, None] == key_seg_B1S)
    return same


def segment_mask(segment_ids_BT: jax.Array, prefix_segment_ids_BT: jax.Array | None = None) -> jax.Array:
    """Boolean [B, T, T]: key s visible to query t iff s <= t (causal) and segment_ids[s] is the query's
    segment or (when given) its prefix segment prefix_segment_ids[t]."""
    t = segment_ids_BT.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    return visible_segments(segment_ids_BT, prefix_segment_ids_BT) & causal[None]


def reference_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS):
    """Naive attention: softmax(q k^T / sqrt(H) masked) v, float32 statistics."""
    num_groups = q_BTNH.shape[2] // k_BSKH.shape[2]
    k_BSNH = jnp.repeat(k_BSKH, num_groups, axis=2)
    v_BSNH = jnp.repeat(v_BSKH, num_groups, axis=2)
    scale = 1.0 / jnp.sqrt(jnp.float32(q_BTNH.shape[-1]))
    logits_BNTS = jnp.einsum("btnh,bsnh->bnts", q_BTNH, k_BSNH,
                             preferred_element_type=jnp.float32) * scale
    logits_BNTS = jnp.where(mask_BTS[:, None], logits_BNTS, jnp.finfo(jnp.float32).min)
    probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1)
    out = jnp.einsum("bnts,bsnh->btnh", probs_BNTS.astype(v_BSNH.dtype), v_BSNH,
                     preferred_element_type=jnp.float32)
    return out.astype(q_BTNH.dtype)


def dense_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS, *, is_causal: bool, implementation: str):
    """jax.nn.dot_product_attention with a boolean [B, T, S] mask (True = visible)."""
    return jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=mask_BTS[:, None],
                                        is_causal=is_causal, implementation=implementation)


# Rows longer than this run the dense XLA path in query blocks of Q_BLOCK (scores [B, N, Q_BLOCK, T] instead of
# [B, N, T, T]; each block is rematerialised in the backward pass).
Q_BLOCK = 512


def _blocked_dense_attention(q_BTNH, k_BTKH, v_BTKH, visible_BTS_fn, *, implementation: str):
    """Causal dense attention in query blocks; visible_BTS_fn(start, size) -> bool [B, size, T] (segments)."""
    batch, length, heads, dim = q_BTNH.shape
    blocks = length // Q_BLOCK
    t_T = jnp.arange(length, dtype=jnp.int32)

    @jax.checkpoint
    def one_block(start):
        q_blk = jax.lax.dynamic_slice_in_dim(q_BTNH, start, Q_BLOCK, axis=1)
        causal_CT = (start + jnp.arange(Q_BLOCK, dtype=jnp.int32))[:, None] >= t_T[None, :]
        mask_BCT = visible_BTS_fn(start, Q_BLOCK) & causal_CT[None]
        return dense_attention(q_blk, k_BTKH, v_BTKH, mask_BCT, is_causal=False, implementation=implementation)

    out_nBCNH = jax.lax.map(one_block, jnp.arange(blocks, dtype=jnp.int32) * Q_BLOCK)
    return jnp.moveaxis(out_nBCNH, 0, 1).reshape(batch, length, heads, dim)


def _splash_block(seq_len: int) -> int:
    for block in (512, 256, 128):
        if seq_len % block == 0:
            return block
    raise ValueError(f"splash attention needs the sequence length to be a multiple of 128, got {seq_len}; "
                     "pad rows to a multiple of 128")


@functools.lru_cache(maxsize=32)
def _splash_kernel(num_heads: int, seq_len: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    block = _splash_block(seq_len)
    mask = sa.MultiHeadMask([sa.CausalMask((seq_len, seq_len)) for _ in range(num_heads)])
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                          block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                          block_q_dq=block, block_kv_dq=block)
    # The kernel holds mask-info arrays; build them concretely even when first called under jit, so the
    # cached kernel never captures a tracer.
    with jax.ensure_compile_time_eval():
        return sa.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)


def splash_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, *, interpret: bool = False):
    """Pallas splash attention (causal, segment ids) vmapped over the batch.

    The kernel is single-device: under a multi-device mesh call it inside shard_map.
    `interpret=True` runs the Pallas kernel in the interpreter (slow; for CPU tests).
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    _, seq_len, num_heads, head_dim = q_BTNH.shape
    kernel = _splash_kernel(num_heads, seq_len, interpret)
    scale = 1.0 / jnp.sqrt(jnp.float32(head_dim))  # splash does not scale q itself
    q_BNTH = (q_BTNH * scale.astype(q_BTNH.dtype)).transpose(0, 2, 1, 3)
    k_BKTH = k_BTKH.transpose(0, 2, 1, 3)
    v_BKTH = v_BTKH.transpose(0, 2, 1, 3)
    segments = sa.SegmentIds(q=segment_ids_BT, kv=segment_ids_BT)
    out_BNTH = jax.vmap(kernel)(q_BNTH, k_BKTH, v_BKTH, segments)
    return out_BNTH.transpose(0, 2, 1, 3).astype(q_BTNH.dtype)


def packed_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, backend: str, prefix_segment_ids_BT=None, *,
                     block: int = 0):
    """Self-attention over packed rows: causal inside a segment, never across segments, except that a
    token also sees (causally) the segment prefix_segment_ids[t] when given (prefix-shared groups).

    Padding (segment 0) attends only to padding, so no row is fully masked; its outputs are garbage
    that callers mask out. `backend` must already be resolved (see resolve_backend). `block`: block_sparse's
    block (0: its default); the other backends ignore it.
    """
    if backend == "block_sparse":
        sizes = {"block": block} if block else {}
        return block_sparse_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, prefix_segment_ids_BT, **sizes)
    if backend == "reference":
        return reference_attention(q_BTNH, k_BTKH, v_BTKH, segment_mask(segment_ids_BT, prefix_segment_ids_BT))
    if backend == "xla" and segment_ids_BT.shape[1] > 2 * Q_BLOCK and segment_ids_BT.shape[1] % Q_BLOCK == 0:
        def visible(start, size):
            seg_q = jax.lax.dynamic_slice_in_dim(segment_ids_BT, start, size, axis=1)
            pre_q = (None if prefix_segment_ids_BT is None
                     else jax.lax.dynamic_slice_in_dim(prefix_segment_ids_BT, start, size, axis=1))
            same = seg_q[:, :, None] == segment_ids_BT[:, None, :]
            return same if pre_q is None else same | (pre_q[:, :, None] == segment_ids_BT[:, None, :])
        return _blocked_dense_attention(q_BTNH, k_BTKH, v_BTKH, visible, implementation="xla")
    if backend in ("xla", "cudnn"):
        same_BTS = visible_segments(segment_ids_BT, prefix_segment_ids_BT)
        return dense_attention(q_BTNH, k_BTKH, v_BTKH, same_BTS, is_causal=True,
                                implementation=backend)
    if backend == "splash":
        if prefix_segment_ids_BT is not None:
            raise ValueError("attention_backend 'splash' cannot express prefix_segment_ids (shared prompts); "
                             "pack unshared rows (data.shared_packing.pack_groups does so with a warning)")
        return splash_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)
    raise ValueError(f"unresolved attention backend {backend!r}")
