"""ModelConfig: the shape and numerics of a Llama/Qwen-family decoder."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTENTION_BACKENDS = ("auto", "xla", "cudnn", "splash", "block_sparse", "reference")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer hyper-parameters (Llama / Qwen2 / Qwen3 family).

    Fields are primitives with defaults so `OmegaConf.structured(ModelConfig)` validates YAML.
    The defaults are the tiny CPU model of conf/model/tiny.yaml.
    """

    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    rope_theta: float = 1e4
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    qkv_bias: bool = False  # Qwen2: bias on the q, k, v projections
    param_dtype: str = "float32"  # storage dtype of parameters
    dtype: str = "float32"  # compute dtype of activations; logits are always float32
    attention_backend: str = "auto"  # auto | xla | cudnn | splash | block_sparse | reference
    # block_sparse's query/key block (0: its default, block_sparse_attention.BLOCK). Smaller blocks skip more
    # of a row whose segments are short (benchmarks/attention.py --blocks measures a workload's best).
    attention_block: int = 0
    remat: bool = False  # rematerialise each decoder layer in the backward pass (saves memory)
    # Run the layers under nn.scan (compile time independent of depth). Changes the parameter layout to one
    # stacked "layers" subtree (transformer.stack_layer_params / unstack_layer_params convert); default off.
    scan_layers: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"ModelConfig.num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2 != 0:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(
                    f"ModelConfig.{name} must be one of {sorted(DTYPES)}, got {getattr(self, name)!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"ModelConfig.attention_backend must be one of {ATTENTION_BACKENDS}, "
                             f"got {self.attention_backend!r}")
        if isinstance(self.attention_block, bool) or not isinstance(self.attention_block, int) \
                or self.attention_block < 0:
            raise ValueError(f"ModelConfig.attention_block must be an int >= 0 (0: the backend's default), "
                             f"got {self.attention_block!r}")
        if self.attention_block and self.attention_backend not in ("auto", "block_sparse"):
            raise ValueError(f"ModelConfig.attention_block applies to attention_backend 'block_sparse' (or 'auto', "
                             f"where it may resolve to it), not {self.attention_backend!r}; set it to 0")
        if not self.rope_theta > 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"ModelConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")

    @property
    def jnp_dtype(self):
        """Compute dtype as a jnp dtype."""
        return DTYPES[self.dtype]

    @property
    def jnp_param_dtype(self):
        """Parameter dtype as a jnp dtype."""
        return DTYPES[self.param_dtype]

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head (GQA group size)."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
