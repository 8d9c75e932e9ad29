"""Policy model: config, Flax decoder, KV cache, Hugging Face checkpoint import/export."""
from orchestra_jax.model.config import ModelConfig
from orchestra_jax.model.kv_cache import KVCache, init_cache
from orchestra_jax.model.logprobs import chunked_logprobs, logprobs_from_logits, previous_token_index
from orchestra_jax.model.transformer import (Policy, init_params, param_logical_axes, stack_layer_params,
                                            token_logprobs, unstack_layer_params)

__all__ = ["ModelConfig", "Policy", "init_params", "param_logical_axes", "KVCache", "init_cache",
           "chunked_logprobs", "logprobs_from_logits", "previous_token_index", "stack_layer_params",
           "unstack_layer_params", "token_logprobs"]
