"""Policy model: config, Flax decoder, KV cache, Hugging Face checkpoint import/export."""
from orchestra_jax.model.config import ModelConfig
from orchestra_jax.model.kv_cache import KVCache, init_cache
from orchestra_jax.model.transformer import Policy, init_params, param_logical_axes

__all__ = ["ModelConfig", "Policy", "init_params", "param_logical_axes", "KVCache", "init_cache"]
