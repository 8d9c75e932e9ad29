"""Per-token log-probs and entropies from final hidden states, without a [B, T, V] float32 logits buffer.

Convention (docs/ARCHITECTURE.md): logp_BT[b, t] = log p(tokens[b, t] | what precedes it in its segment), read
from the logits at the previous token. The previous token is given explicitly as prev_index_BT[b, t] (a row
index, -1 for none), so prefix-shared packing (a continuation's first token is predicted by its prompt's last
token; see data.shared_packing.pack_shared) uses the same code; for ordinary packed rows it is
previous_token_index(segment_ids). Tokens with prev_index -1 (first token of a segment, padding) get 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def previous_token_index(segment_ids_BT: jax.Array) -> jax.Array:
    """int32 [B, T]: t - 1 where token t - 1 is in the same (non-padding) segment as token t, else -1."""
    segment_ids_BT = jnp.asarray(segment_ids_BT)
    t_T = jnp.arange(segment_ids_BT.shape[1], dtype=jnp.int32)
    same = (segment_ids_BT[:, 1:] == segment_ids_BT[:, :-1]) & (segment_ids_BT[:, 1:] != 0)
    same = jnp.concatenate([jnp.zeros_like(same[:, :1]), same], axis=1)
    return jnp.where(same, t_T[None, :] - 1, -1).astype(jnp.int32)


def _gather_prev(x_BT_, prev_index_BT):
    idx = jnp.maximum(prev_index_BT, 0)
    return jnp.take_along_axis(x_BT_, idx.reshape(idx.shape + (1,) * (x_BT_.ndim - 2)), axis=1)


def logprobs_from_logits(logits_BTV, tokens_BT, prev_index_BT):
    """Naive (logp_BT, entropy_BT) from full float32 logits: the reference for chunked_logprobs."""
    logits = _gather_prev(logits_BTV.astype(jnp.float32), prev_index_BT)
    log_norm = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, tokens_BT[..., None].astype(jnp.int32), axis=-1)[..., 0]
    probs = jnp.exp(logits - log_norm[..., None])
    entropy = log_norm - jnp.sum(probs * logits, axis=-1)
    valid = prev_index_BT >= 0
    return jnp.where(valid, target - log_norm, 0.0), jnp.where(valid, entropy, 0.0)


def chunked_logprobs(h_BTD, head_VD, tokens_BT, prev_index_BT, *, chunk_size: int = 128,
                     with_entropy: bool = True):
    """(logp_BT, entropy_BT or None) float32 from final-normed hidden states h_BTD and the output head
    head_VD ([V, D], the tied embedding table or the transposed lm_head kernel).

    tokens and prev_index may also be [B, K] with K != T: K selected targets per row, each read from the
    hidden state at its prev_index (e.g. only the tokens a loss counts: the head then runs on K positions
    per row instead of T). The time axis is processed in chunks of chunk_size under jax.checkpoint inside a scan, so neither the
    forward nor the backward pass holds more than one [B, chunk_size, V] float32 logits block. Logits are
    computed as in Policy.head_logits (compute dtype inputs, float32 accumulation).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch = h_BTD.shape[0]
    if tokens_BT.shape != prev_index_BT.shape or tokens_BT.ndim != 2 or tokens_BT.shape[0] != batch:
        raise ValueError(f"tokens {tokens_BT.shape} and prev_index {prev_index_BT.shape} must both be [B, K] "
                         f"with B = {batch} like the hidden states")
    length = tokens_BT.shape[1]
    chunk = min(chunk_size, length)
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    h_prev = _gather_prev(h_BTD, prev_index_BT)
    valid = prev_index_BT >= 0
    tokens = tokens_BT.astype(jnp.int32)
    if pad:
        h_prev = jnp.pad(h_prev, ((0, 0), (0, pad), (0, 0)))
        tokens = jnp.pad(tokens, ((0, 0), (0, pad)))

    def to_chunks(x):
        return jnp.moveaxis(x.reshape((batch, num_chunks, chunk) + x.shape[2:]), 1, 0)

    head = head_VD.astype(h_BTD.dtype)

    @jax.checkpoint
    def one_chunk(h_BCD, tok_BC):
        logits = jnp.einsum("bcd,vd->bcv", h_BCD, head, preferred_element_type=jnp.float32)
        log_norm = jax.nn.logsumexp(logits, axis=-1)
        target = jnp.take_along_axis(logits, tok_BC[..., None], axis=-1)[..., 0]
        if not with_entropy:
            return target - log_norm, jnp.zeros_like(log_norm)
        probs = jnp.exp(logits - log_norm[..., None])
        return target - log_norm, log_norm - jnp.sum(probs * logits, axis=-1)

    _, (logp_NBC, ent_NBC) = jax.lax.scan(lambda c, xs: (c, one_chunk(*xs)), None,
                                          (to_chunks(h_prev), to_chunks(tokens)))

    def from_chunks(x):
        return jnp.moveaxis(x, 0, 1).reshape(batch, num_chunks * chunk)[:, :length]

    logp = jnp.where(valid, from_chunks(logp_NBC), 0.0)
    entropy = jnp.where(valid, from_chunks(ent_NBC), 0.0) if with_entropy else None
    return logp, entropy
