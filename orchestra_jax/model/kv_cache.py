"""KVCache: per-layer keys and values of one sequence per batch row, slot index == position."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from orchestra_jax.model.config import DTYPES, ModelConfig


@struct.dataclass
class KVCache:
    """k, v: [L, B, S, Hkv, D]; lengths: [B] int32 (filled slots per row; slot s holds position s)."""

    k: jax.Array
    v: jax.Array
    lengths: jax.Array

    @property
    def max_len(self) -> int:
        """S, the number of slots per row."""
        return self.k.shape[2]


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype: str | None = None) -> KVCache:
    """An empty cache (zeros, lengths 0) for `batch_size` rows of up to `max_len` tokens.

    dtype: a ModelConfig dtype name ("float32", "bfloat16"); default cfg.dtype.
    """
    if batch_size <= 0 or max_len <= 0:
        raise ValueError(f"init_cache needs batch_size > 0 and max_len > 0, got {batch_size}, {max_len}")
    dtype = dtype or cfg.dtype
    if dtype not in DTYPES:
        raise ValueError(f"init_cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    shape = (cfg.num_layers, batch_size, max_len, cfg.num_kv_heads, cfg.head_dim)
    zeros = jnp.zeros(shape, DTYPES[dtype])
    return KVCache(k=zeros, v=zeros, lengths=jnp.zeros((batch_size,), jnp.int32))
