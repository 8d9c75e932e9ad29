"""The decoder's layers (flax.linen): RMSNorm, projections, RoPE, grouped-query attention (packed rows and
KV-cache extension), SwiGLU MLP, the pre-norm block, the embedding table and the untied output head. Every
parameter carries logical axis names (parallel.sharding maps them to a mesh). transformer.Policy stacks them."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from orchestra_jax.model.attention import packed_attention, resolve_backend
from orchestra_jax.model.cached_attention import cached_attention
from orchestra_jax.model.config import ModelConfig
from orchestra_jax.model.projection import project

KERNEL_INIT = nn.initializers.normal(stddev=0.02)


def logical_param(module: nn.Module, name: str, init, shape, axes):
    """A parameter of module.cfg.param_dtype carrying logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, module.cfg.jnp_param_dtype)


def constrain(x, axes):
    """x with its logical sharding axes (a no-op outside a mesh)."""
    return nn.with_logical_constraint(x, axes)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis: x / rms(x) * scale, statistics in float32."""

    cfg: ModelConfig
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x):
        scale = logical_param(self, "scale", nn.initializers.ones, (x.shape[-1],), (self.axis_name,))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.rms_norm_eps)
        return normed.astype(self.cfg.jnp_dtype) * scale.astype(self.cfg.jnp_dtype)


class Projection(nn.Module):
    """y[..., out] = x[..., in] @ kernel (+ bias), kernel axes given; used for q/k/v/o/mlp."""

    cfg: ModelConfig
    in_shape: tuple
    out_shape: tuple
    kernel_axes: tuple
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        kernel = logical_param(self, "kernel", KERNEL_INIT, self.in_shape + self.out_shape, self.kernel_axes)
        dtype = self.cfg.jnp_dtype
        n_in = len(self.in_shape)
        y = project(x.astype(dtype), kernel.astype(dtype), n_in)
        if self.use_bias:
            bias = logical_param(self, "bias", nn.initializers.zeros, self.out_shape, self.kernel_axes[n_in:])
            y = y + bias.astype(dtype)
        return y


def rope(x_BTNH, positions_BT, theta: float):
    """Rotary embedding, Hugging Face 'rotate_half' layout (first half / second half of head_dim)."""
    head_dim = x_BTNH.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_BTF = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    angles_BTH = jnp.concatenate([angles_BTF, angles_BTF], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles_BTH), jnp.sin(angles_BTH)
    x32 = x_BTNH.astype(jnp.float32)
    half = head_dim // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x_BTNH.dtype)


class Attention(nn.Module):
    """Grouped-query attention with RoPE, optional q/k RMSNorm (Qwen3) and q/k/v bias (Qwen2)."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = Projection(cfg, (d,), (n, h), ("embed", "heads", "head_dim"), cfg.qkv_bias)
        self.k_proj = Projection(cfg, (d,), (k, h), ("embed", "kv_heads", "head_dim"), cfg.qkv_bias)
        self.v_proj = Projection(cfg, (d,), (k, h), ("embed", "kv_heads", "head_dim"), cfg.qkv_bias)
        self.o_proj = Projection(cfg, (n, h), (d,), ("heads", "head_dim", "embed"))
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg, axis_name="head_dim")
            self.k_norm = RMSNorm(cfg, axis_name="head_dim")

    def _qkv(self, x_BTD, positions_BT):
        q = self.q_proj(x_BTD)
        k = self.k_proj(x_BTD)
        v = self.v_proj(x_BTD)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = rope(q, positions_BT, self.cfg.rope_theta)
        k = rope(k, positions_BT, self.cfg.rope_theta)
        q = constrain(q, ("batch", "sequence", "heads", "head_dim"))
        k = constrain(k, ("batch", "sequence", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "sequence", "kv_heads", "head_dim"))
        return q, k, v

    def _out(self, attn_BTNH):
        return constrain(self.o_proj(attn_BTNH), ("batch", "sequence", "embed"))

    def __call__(self, x_BTD, positions_BT, segment_ids_BT, prefix_segment_ids_BT=None):
        q, k, v = self._qkv(x_BTD, positions_BT)
        backend = resolve_backend(self.cfg.attention_backend, self.cfg.jnp_dtype)
        return self._out(packed_attention(q, k, v, segment_ids_BT, backend, prefix_segment_ids_BT,
                                          block=self.cfg.attention_block))

    def extend(self, x_BTD, positions_BT, k_cache, v_cache, layer, write_slots_BT):
        """Write this chunk's k/v into the layer's cache at write_slots (out-of-range slots are dropped) and
        attend it. k_cache [B, K, H, S] / v_cache [B, K, S, H] are this layer's (layer None), or the stacked
        caches of all layers and ``layer`` the index of this one; either way written and read in place."""
        q, k, v = self._qkv(x_BTD, positions_BT)
        rows_B1 = jnp.arange(x_BTD.shape[0])[:, None]
        at = () if layer is None else (layer,)
        # the indexed entries are [B, T, K, H] (advanced indices around slices go first)
        k_cache = k_cache.at[at + (rows_B1, slice(None), slice(None), write_slots_BT)].set(
            k.astype(k_cache.dtype), mode="drop")
        v_cache = v_cache.at[at + (rows_B1, slice(None), write_slots_BT)].set(v.astype(v_cache.dtype), mode="drop")
        backend = "reference" if self.cfg.attention_backend == "reference" else "xla"
        out = cached_attention(q, k_cache, v_cache, positions_BT, backend, layer=layer)
        return self._out(out), k_cache, v_cache


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTD):
        cfg = self.cfg
        d, f = cfg.hidden_size, cfg.intermediate_size
        gate = Projection(cfg, (d,), (f,), ("embed", "mlp"), name="gate_proj")(x_BTD)
        up = Projection(cfg, (d,), (f,), ("embed", "mlp"), name="up_proj")(x_BTD)
        hidden = constrain(nn.silu(gate) * up, ("batch", "sequence", "mlp"))
        return Projection(cfg, (f,), (d,), ("mlp", "embed"), name="down_proj")(hidden)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)); x + mlp(norm(x))."""

    cfg: ModelConfig

    def setup(self):
        self.input_norm = RMSNorm(self.cfg)
        self.attn = Attention(self.cfg)
        self.post_attn_norm = RMSNorm(self.cfg)
        self.mlp = MLP(self.cfg)

    def __call__(self, x_BTD, positions_BT, segment_ids_BT, prefix_segment_ids_BT=None):
        x_BTD = x_BTD + self.attn(self.input_norm(x_BTD), positions_BT, segment_ids_BT, prefix_segment_ids_BT)
        x_BTD = x_BTD + self.mlp(self.post_attn_norm(x_BTD))
        return constrain(x_BTD, ("batch", "sequence", "embed"))

    def extend(self, x_BTD, positions_BT, k_cache, v_cache, layer, write_slots_BT):
        attn, k_cache, v_cache = self.attn.extend(self.input_norm(x_BTD), positions_BT, k_cache, v_cache, layer,
                                                  write_slots_BT)
        x_BTD = x_BTD + attn
        x_BTD = x_BTD + self.mlp(self.post_attn_norm(x_BTD))
        return constrain(x_BTD, ("batch", "sequence", "embed")), k_cache, v_cache


class EmbeddingTable(nn.Module):
    """Token embedding table [V, D] (also the output head when tied)."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embedding = logical_param(self, "embedding", KERNEL_INIT, (cfg.vocab_size, cfg.hidden_size),
                                ("vocab", "embed"))

    def table(self):
        return self.embedding

    def __call__(self, tokens_BT):
        return jnp.take(self.embedding, tokens_BT, axis=0, mode="clip").astype(self.cfg.jnp_dtype)


class OutputHead(nn.Module):
    """Untied output head kernel [D, V]; float32 accumulation."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.kernel = logical_param(self, "kernel", KERNEL_INIT, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"))

    def kernel_DV(self):
        return self.kernel

    def __call__(self, h_BTD):
        return jnp.einsum("btd,dv->btv", h_BTD, self.kernel.astype(self.cfg.jnp_dtype),
                          preferred_element_type=jnp.float32)
