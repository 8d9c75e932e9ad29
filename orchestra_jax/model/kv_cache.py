"""KVCache: per-layer keys and values of one sequence per batch row, slot index == position."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from orchestra_jax.model.config import DTYPES, ModelConfig


@struct.dataclass
class KVCache:
    """k: keys, layer i's k[i] is [B, Hkv, D, S]; v: values, v[i] is [B, Hkv, S, D]; lengths: [B] int32
    (filled slots per row; slot s holds position s).

    k and v are tuples of one array per layer (unrolled layers: each layer's cache is its own buffer, read
    and written in place), or one stacked [L, ...] array each when the layers run under nn.scan
    (cfg.scan_layers). Keys keep their slots minor so that q.k and p.v read the cache as it lies
    (cached_attention.py).
    """

    k: Any
    v: Any
    lengths: jax.Array

    @property
    def max_len(self) -> int:
        """S, the number of slots per row."""
        return self.k[0].shape[-1]

    @property
    def batch_size(self) -> int:
        """B, the number of rows."""
        return self.k[0].shape[0]

    @property
    def stacked(self) -> bool:
        """True when k and v are stacked [L, ...] arrays (the nn.scan layout)."""
        return not isinstance(self.k, (tuple, list))


def map_rows(cache: KVCache, fn) -> KVCache:
    """The cache with fn(x, axis) applied to every array along its row (batch) axis."""
    rows = lambda x: fn(x, x.ndim - 4)  # noqa: E731  the batch axis is 4th from last in both layouts
    return KVCache(k=jax.tree.map(rows, cache.k), v=jax.tree.map(rows, cache.v), lengths=fn(cache.lengths, 0))


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype: str | None = None) -> KVCache:
    """An empty cache (zeros, lengths 0) for `batch_size` rows of up to `max_len` tokens, in the layout
    cfg's layers use (stacked under cfg.scan_layers, else one array per layer).

    dtype: a ModelConfig dtype name ("float32", "bfloat16"); default cfg.dtype.
    """
    if batch_size <= 0 or max_len <= 0:
        raise ValueError(f"init_cache needs batch_size > 0 and max_len > 0, got {batch_size}, {max_len}")
    dtype = dtype or cfg.dtype
    if dtype not in DTYPES:
        raise ValueError(f"init_cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    k_shape = (batch_size, cfg.num_kv_heads, cfg.head_dim, max_len)
    v_shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
    if cfg.scan_layers:
        k = jnp.zeros((cfg.num_layers,) + k_shape, DTYPES[dtype])
        v = jnp.zeros((cfg.num_layers,) + v_shape, DTYPES[dtype])
    else:
        k = tuple(jnp.zeros(k_shape, DTYPES[dtype]) for _ in range(cfg.num_layers))
        v = tuple(jnp.zeros(v_shape, DTYPES[dtype]) for _ in range(cfg.num_layers))
    return KVCache(k=k, v=v, lengths=jnp.zeros((batch_size,), jnp.int32))
