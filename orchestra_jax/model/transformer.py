"""Policy: a Llama / Qwen2 / Qwen3 decoder in flax.linen over packed rows, plus KV-cache extension.

Parameter tree (all names fixed; hf.py maps them to Hugging Face tensors):
  embed/embedding [V, D]
  layers_{i}/input_norm/scale [D]
  layers_{i}/attn/{q_proj [D, N, H], k_proj [D, K, H], v_proj [D, K, H]}/kernel  (+ bias [*, H] if qkv_bias)
  layers_{i}/attn/o_proj/kernel [N, H, D]
  layers_{i}/attn/{q_norm, k_norm}/scale [H]                                      (if qk_norm)
  layers_{i}/post_attn_norm/scale [D]
  layers_{i}/mlp/{gate_proj, up_proj}/kernel [D, F], mlp/down_proj/kernel [F, D]
  final_norm/scale [D]
  lm_head/kernel [D, V]                                                           (if not tied)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from orchestra_jax.model.config import ModelConfig
from orchestra_jax.model.kv_cache import KVCache
from orchestra_jax.model.layers import DecoderLayer, EmbeddingTable, OutputHead, RMSNorm, constrain
from orchestra_jax.model.logprobs import chunked_logprobs, previous_token_index


class _ScanDecoderLayer(DecoderLayer):
    """DecoderLayer with the nn.scan interface (carry, layer index) -> (carry, None). Packed forward
    (write_slots None): carry = x. Cache extend: carry = (x, stacked k, stacked v), written in place at
    the scanned layer index."""

    def __call__(self, carry, layer, positions_BT, segment_ids_BT, prefix_segment_ids_BT, write_slots_BT):
        if write_slots_BT is None:
            return DecoderLayer.__call__(self, carry, positions_BT, segment_ids_BT, prefix_segment_ids_BT), None
        x_BTD, k_all, v_all = carry
        return DecoderLayer.extend(self, x_BTD, positions_BT, k_all, v_all, layer, write_slots_BT), None


class Policy(nn.Module):
    """Decoder-only LM. `__call__(tokens, positions, segment_ids[, prefix_segment_ids]) -> logits_BTV` (float32).

    tokens / positions / segment_ids: int32 [B, T]; positions restart at 0 in each segment; attention is
    causal within a segment and never crosses segments; segment 0 is padding (its logits are garbage).
    prefix_segment_ids (optional, prefix-shared groups, see data.shared_packing.pack_shared): token t also attends
    causally to the segment prefix_segment_ids[t]. With cfg.scan_layers the layers run under nn.scan and
    their parameters are stacked under "layers" (see stack_layer_params / unstack_layer_params).
    """

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embed = EmbeddingTable(cfg)
        if cfg.scan_layers:
            block = nn.remat(_ScanDecoderLayer, prevent_cse=False) if cfg.remat else _ScanDecoderLayer
            self.scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                                   in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                                   length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})(
                                       cfg, name="layers")
        else:
            layer_cls = nn.remat(DecoderLayer) if cfg.remat else DecoderLayer
            self.layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.final_norm = RMSNorm(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = OutputHead(cfg)

    def embed_tokens(self, tokens_BT):
        """Input embeddings [B, T, D] in the compute dtype."""
        return constrain(self.embed(tokens_BT), ("batch", "sequence", "embed"))

    def logits_from_hidden(self, x_BTD):
        """Final norm + output head; float32 logits [B, T, V]."""
        return self.head_logits(self.final_norm(x_BTD))

    def _layers(self, x_BTD, positions_BT, segment_ids_BT, prefix_segment_ids_BT=None):
        positions_BT = positions_BT.astype(jnp.int32)
        segment_ids_BT = segment_ids_BT.astype(jnp.int32)
        if prefix_segment_ids_BT is not None:
            prefix_segment_ids_BT = prefix_segment_ids_BT.astype(jnp.int32)
        if self.cfg.scan_layers:
            x_BTD, _ = self.scanned(x_BTD, None, positions_BT, segment_ids_BT, prefix_segment_ids_BT, None)
            return x_BTD
        for layer in self.layers:
            x_BTD = layer(x_BTD, positions_BT, segment_ids_BT, prefix_segment_ids_BT)
        return x_BTD

    def final_hidden(self, tokens_BT, positions_BT, segment_ids_BT, prefix_segment_ids_BT=None):
        """Final-normed hidden states [B, T, D] (compute dtype): apply head_logits to chunks of them to
        avoid materialising the full [B, T, V] float32 logits of a large vocabulary."""
        return self.final_norm(self._layers(self.embed_tokens(tokens_BT), positions_BT, segment_ids_BT,
                                            prefix_segment_ids_BT))

    def head_VD(self):
        """The output head as a [V, D] matrix (the tied table, or the transposed lm_head kernel)."""
        if self.cfg.tie_word_embeddings:
            return self.embed.table()
        return self.lm_head.kernel_DV().T

    def head_logits(self, h_BTD):
        """Output head on final-normed hidden states: float32 logits [B, T, V]."""
        h = h_BTD
        if self.cfg.tie_word_embeddings:
            table_VD = self.embed.table().astype(self.cfg.jnp_dtype)
            logits = jnp.einsum("btd,vd->btv", h, table_VD, preferred_element_type=jnp.float32)
        else:
            logits = self.lm_head(h)
        return constrain(logits.astype(jnp.float32), ("batch", "sequence", "vocab"))

    def token_logprobs(self, tokens_BT, positions_BT, segment_ids_BT, prefix_segment_ids_BT=None,
                       prev_index_BT=None, chunk_size: int = 128, with_entropy: bool = True, target_index_BK=None):
        """(logp_BT, entropy_BT or None), float32, in the ARCHITECTURE.md convention, via chunked_logprobs
        (no [B, T, V] logits buffer). prev_index_BT defaults to previous_token_index(segment_ids); it is
        required with prefix_segment_ids (a continuation's first token is predicted by its prompt).

        target_index_BK: only the tokens at these row positions (-1: none), so the output head runs on K
        positions per row instead of T; the results are then [B, K] (0 where the index is -1)."""
        if prefix_segment_ids_BT is not None and prev_index_BT is None:
            raise ValueError("token_logprobs with prefix_segment_ids needs prev_index (from pack_shared)")
        h_BTD = self.final_hidden(tokens_BT, positions_BT, segment_ids_BT, prefix_segment_ids_BT)
        prev = previous_token_index(segment_ids_BT) if prev_index_BT is None else prev_index_BT.astype(jnp.int32)
        if target_index_BK is not None:
            index = jnp.asarray(target_index_BK, jnp.int32)
            at = jnp.maximum(index, 0)
            tokens_BT = jnp.take_along_axis(tokens_BT, at, axis=1)
            prev = jnp.where(index >= 0, jnp.take_along_axis(prev, at, axis=1), -1)
        return chunked_logprobs(h_BTD, self.head_VD(), tokens_BT, prev, chunk_size=chunk_size,
                                with_entropy=with_entropy)

    def forward_embeddings(self, x_BTD, positions_BT, segment_ids_BT, prefix_segment_ids_BT=None):
        """Logits from given input embeddings (lets tests differentiate w.r.t. embeddings)."""
        return self.logits_from_hidden(self._layers(x_BTD, positions_BT, segment_ids_BT, prefix_segment_ids_BT))

    def __call__(self, tokens_BT, positions_BT, segment_ids_BT, prefix_segment_ids_BT=None):
        shapes = [tokens_BT.shape, positions_BT.shape, segment_ids_BT.shape]
        if prefix_segment_ids_BT is not None:
            shapes.append(prefix_segment_ids_BT.shape)
        if len(set(shapes)) != 1 or tokens_BT.ndim != 2:
            raise ValueError("tokens, positions, segment_ids (and prefix_segment_ids) must all be [B, T], got "
                             f"{shapes}")
        return self.forward_embeddings(self.embed_tokens(tokens_BT), positions_BT, segment_ids_BT,
                                       prefix_segment_ids_BT)

    def extend(self, tokens_BT, cache: KVCache, num_new_B, last_only: bool = False):
        """Append num_new_B[b] (<= T) tokens of row b to the cache and return their logits.

        Row b's token t sits at position cache.lengths[b] + t and sees cache slots 0..that position.
        Tokens t >= num_new_B[b] are ignored: their logits are garbage and their k/v are not written.
        Callers keep cache.lengths + num_new_B <= cache.max_len (writes past the end are dropped).
        Returns (logits_BTV float32, new cache with lengths + num_new_B). last_only: the logits of each row's
        last new token only, [B, 1, V] (garbage for rows with no new token): a prefill needs no others, and
        the output head over all T tokens would cost about as much as the layers of a small model.
        """
        batch, seq = tokens_BT.shape
        if cache.batch_size != batch:
            raise ValueError(f"extend: tokens have batch {batch} but the cache has {cache.batch_size} rows")
        if cache.stacked != self.cfg.scan_layers:
            raise ValueError(f"extend: the cache is {'stacked' if cache.stacked else 'one array per layer'} but "
                             f"scan_layers={self.cfg.scan_layers}; build it with init_cache(cfg, ...) of this cfg")
        num_new_B = jnp.clip(jnp.asarray(num_new_B, jnp.int32), 0, seq)
        t_T = jnp.arange(seq, dtype=jnp.int32)
        positions_BT = cache.lengths[:, None] + t_T[None, :]
        write_slots_BT = jnp.where(t_T[None, :] < num_new_B[:, None], positions_BT, cache.max_len)
        x_BTD = self.embed_tokens(tokens_BT)
        if self.cfg.scan_layers:
            layers_L = jnp.arange(self.cfg.num_layers, dtype=jnp.int32)
            (x_BTD, k_all, v_all), _ = self.scanned((x_BTD, cache.k, cache.v), layers_L, positions_BT, None, None,
                                                    write_slots_BT)
        else:
            k_all, v_all = list(cache.k), list(cache.v)
            for i, layer in enumerate(self.layers):
                x_BTD, k_all[i], v_all[i] = layer.extend(x_BTD, positions_BT, k_all[i], v_all[i], None, write_slots_BT)
            k_all, v_all = tuple(k_all), tuple(v_all)
        if last_only:
            x_BTD = jnp.take_along_axis(x_BTD, jnp.maximum(num_new_B - 1, 0)[:, None, None], axis=1)
        logits = self.logits_from_hidden(x_BTD)
        return logits, KVCache(k=k_all, v=v_all, lengths=cache.lengths + num_new_B)


def stack_layer_params(params, num_layers: int):
    """Unrolled layout (layers_0 .. layers_{L-1}) -> scanned layout (layers, leading axis L)."""
    missing = [f"layers_{i}" for i in range(num_layers) if f"layers_{i}" not in params]
    if missing:
        raise ValueError(f"stack_layer_params: params lack {missing[:3]} (already stacked?)")
    rest = {k: v for k, v in params.items() if not k.startswith("layers_")}
    layers = [params[f"layers_{i}"] for i in range(num_layers)]
    return {**rest, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_layer_params(params, num_layers: int):
    """Scanned layout (layers, leading axis L) -> unrolled layout (layers_0 .. layers_{L-1})."""
    if "layers" not in params:
        raise ValueError("unstack_layer_params: params lack 'layers' (not in the scanned layout?)")
    rest = {k: v for k, v in params.items() if k != "layers"}
    return {**rest, **{f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], params["layers"])
                       for i in range(num_layers)}}


def token_logprobs(cfg: ModelConfig, params, tokens_BT, positions_BT, segment_ids_BT, prefix_segment_ids_BT=None,
                   prev_index_BT=None, *, chunk_size: int = 128, with_entropy: bool = True, target_index_BK=None):
    """Functional form of Policy.token_logprobs: (logp_BT, entropy_BT or None), [B, K] with target_index_BK."""
    return Policy(cfg).apply({"params": params}, tokens_BT, positions_BT, segment_ids_BT, prefix_segment_ids_BT,
                             prev_index_BT, chunk_size=chunk_size, with_entropy=with_entropy,
                             target_index_BK=target_index_BK, method=Policy.token_logprobs)


def _unbox(tree):
    return nn.meta.unbox(tree)


@functools.partial(jax.jit, static_argnums=0)
def _init_params_from_rbg(cfg: ModelConfig, key_data_4):
    # RngBitGenerator keys compile ~3x faster than threefry for the ~10 * num_layers parameter draws.
    key = jax.random.wrap_key_data(key_data_4, impl="rbg")
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = Policy(cfg).init(key, tokens, tokens, jnp.ones((1, 1), jnp.int32))
    return _unbox(variables["params"])


def init_params(cfg: ModelConfig, key: jax.Array):
    """Randomly initialised parameters: a plain (unboxed) pytree of arrays in cfg.param_dtype.

    Deterministic in `key` (typed or legacy uint32 key). Jitted; may be called inside jit
    (e.g. with out_shardings to initialise directly sharded).
    """
    return _init_params_from_rbg(cfg, jax.random.bits(key, (4,), jnp.uint32))


def param_logical_axes(cfg: ModelConfig):
    """Same structure as init_params(cfg, key); each leaf a tuple of logical axis names (no real init)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(lambda k: Policy(cfg).init(k, tokens, tokens, tokens + 1),
                              jax.random.key(0))
    return jax.tree.map(lambda boxed: tuple(boxed.names), abstract["params"],
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
