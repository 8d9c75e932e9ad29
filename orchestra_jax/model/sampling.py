"""Batched, jitted prefill and decode on a KV cache (temperature, top-p, greedy; stop ids; per-row lengths).

Shapes are static: batch B, cache size S, new-token window T (prefill) and N = max_new_tokens (decode).
Rows advance independently: each call appends a per-row number of tokens to its own cache row, so after a
tool call only the observation tokens of that row are prefilled and the history is never re-encoded.

Log-prob convention: for every sampled token the sampler returns two log-probs,
  - ``policy_logp``: log p(token | context) under the unmodified policy (temperature 1, no top-p). This is
    the ``old_logp`` of the GRPO loss and follows ARCHITECTURE.md (logp of token t stored at index t).
  - ``sample_logp``: log-prob under the distribution actually sampled from (temperature, top-p); 0 when greedy.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from orchestra_jax.model.kv_cache import map_rows
from orchestra_jax.model.transformer import Policy

# Why a row stopped generating in `decode` (stop_reason_B).
STOP_NONE = 0        # the row was not active (or did not stop: cannot happen after decode returns)
STOP_TOKEN = 1       # sampled one of stop_ids (e.g. </tool_call>, <|im_end|>); the stop token is kept
STOP_MAX_NEW = 2     # generated max_new_tokens tokens without a stop id
STOP_CACHE_FULL = 3  # the cache row is full (cache.lengths == S); no room for another token
STOP_REASON_NAMES = ("none", "stop_token", "max_new_tokens", "cache_full")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How one assistant turn is sampled.

    temperature: softmax temperature (> 0) used when not greedy.
    top_p: nucleus sampling mass in (0, 1]; 1 disables it. The most likely token is always kept.
    greedy: argmax decoding (temperature and top_p ignored).
    max_new_tokens: most tokens sampled in one call of `decode` (one turn).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    max_new_tokens: int = 64

    def __post_init__(self):
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"SamplingConfig.temperature must be > 0 when greedy is False, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")


def _extend(model_cfg, params, cache, tokens_BT, num_new_B, last_only=False):
    return Policy(model_cfg).apply({"params": params}, tokens_BT, cache, num_new_B, last_only,
                                   method=Policy.extend)


def top_p_logits(logits_BV: jax.Array, top_p: float) -> jax.Array:
    """Keeps the smallest set of most likely tokens whose probability mass reaches top_p; others -> -inf.

    A token is kept when the mass of the tokens strictly more likely than it is < top_p, so the most likely
    token is always kept and top_p -> 0 is greedy. Ties at the cut-off logit are all kept.
    """
    if top_p >= 1.0:
        return logits_BV
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    keep_sorted_BV = (mass_before_BV < top_p).at[..., 0].set(True)
    cutoff_B1 = jnp.min(jnp.where(keep_sorted_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BV >= cutoff_B1, logits_BV, -jnp.inf)


def inverse_cdf_sample(probs_BV: jax.Array, u_B: jax.Array) -> jax.Array:
    """int32 [B]: per row, the first token whose cumulative probability exceeds u_B * (total mass), u in
    [0, 1). One uniform per row instead of the V Gumbel draws of jax.random.categorical (4x faster per
    decode step on CPU); a token of probability 0 (top-p's cut) is never drawn: the sum does not rise there.

    Two levels when V splits into blocks of about sqrt(V) (a power of two): the block holding the draw is
    found on the blocks' cumulative mass, then the token inside that block alone: XLA's CPU cumsum over the
    whole vocabulary took 186 us a draw at [32, 1,024] in an ad-hoc timing, the two levels 63 us
    (benchmarks/README.md: rollout and vs_trl, side by side).
    The sums run in another order than one long cumsum, so a draw within float rounding of a token boundary
    may pick the neighbouring token (tests: the same token in >= 99.9% of draws, the same frequencies)."""
    batch, vocab = probs_BV.shape
    # a power of two near sqrt(V) that divides V (Qwen's 151,936 = 1,187 x 128: blocks of 128)
    block = math.gcd(vocab, 1 << max(0, (math.ceil(math.sqrt(vocab)) - 1).bit_length()))
    if vocab < 128 or block < 16:
        cdf_BV = jnp.cumsum(probs_BV, axis=-1)
        below_BV = cdf_BV < (u_B * cdf_BV[:, -1])[:, None]
        return jnp.minimum(jnp.sum(below_BV, axis=-1), vocab - 1).astype(jnp.int32)
    n = vocab // block
    probs_Bnk = probs_BV.reshape(batch, n, block)
    block_cdf_Bn = jnp.cumsum(jnp.sum(probs_Bnk, axis=-1), axis=-1)
    target_B = u_B * block_cdf_Bn[:, -1]
    k_B = jnp.minimum(jnp.sum(block_cdf_Bn < target_B[:, None], axis=-1), n - 1)
    before_B = jnp.where(k_B > 0, jnp.take_along_axis(block_cdf_Bn, jnp.maximum(k_B - 1, 0)[:, None], axis=-1)[:, 0],
                         0.0)
    inside_Bk = jnp.take_along_axis(probs_Bnk, k_B[:, None, None], axis=1)[:, 0]
    count_B = jnp.sum(jnp.cumsum(inside_Bk, axis=-1) < (target_B - before_B)[:, None], axis=-1)
    # rounding can leave the block's own sum just under the target: then its last token of positive mass
    last_positive_B = block - 1 - jnp.argmax((inside_Bk > 0)[:, ::-1], axis=-1)
    offset_B = jnp.where(count_B >= block, last_positive_B, count_B)
    return (k_B * block + offset_B).astype(jnp.int32)


def greedy_tokens(logits_BV: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(int32 [B] first index of each row's maximum, as jnp.argmax; float32 [B] the maximum). Two plain
    reductions: XLA's CPU backend runs argmax's (value, index) reduction about 3x slower (an ad-hoc timing at
    [32, 1024]: 63 vs 18 us a call)."""
    vocab = logits_BV.shape[-1]
    max_B = jnp.max(logits_BV, axis=-1)
    first_B = jnp.min(jnp.where(logits_BV == max_B[:, None], jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)
    return jnp.minimum(first_B, vocab - 1), max_B  # the cap: a row of NaNs has no index equal to its max


def sample_tokens(logits_BV: jax.Array, key: jax.Array, cfg: SamplingConfig, row_ids_B: jax.Array | None = None):
    """Samples one token per row. Returns (tokens_B int32, sample_logp_B, policy_logp_B), float32 log-probs.

    sample_logp is under the sampling distribution (temperature, top-p; 0 when greedy); policy_logp is under
    the unmodified policy softmax(logits) (temperature 1). row_ids_B: when given, row b draws with its own key
    fold_in(key, row_ids_B[b]), so a row's sample does not depend on which batch slot it sits in (the
    rollout's row compaction moves rows); None draws the whole batch from `key`. Draws by inverse CDF
    (`inverse_cdf_sample`): one uniform per row.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    if cfg.greedy:
        tokens_B, max_B = greedy_tokens(logits_BV)
        # log_softmax at the argmax = -log(sum(exp(logits - max))): no [B, V] log-probs and no gather
        policy_logp_B = -jnp.log(jnp.sum(jnp.exp(logits_BV - max_B[:, None]), axis=-1))
        return tokens_B, jnp.zeros(tokens_B.shape, jnp.float32), policy_logp_B
    policy_logp_BV = jax.nn.log_softmax(logits_BV, axis=-1)
    scaled_BV = top_p_logits(logits_BV / cfg.temperature, cfg.top_p)
    if row_ids_B is None:
        u_B = jax.random.uniform(key, scaled_BV.shape[:1])
    else:
        keys_B = jax.vmap(jax.random.fold_in, (None, 0))(key, row_ids_B.astype(jnp.uint32))
        u_B = jax.vmap(jax.random.uniform)(keys_B)
    sample_logp_BV = jax.nn.log_softmax(scaled_BV, axis=-1)
    tokens_B = inverse_cdf_sample(jnp.exp(sample_logp_BV), u_B)
    sample_logp_B = jnp.take_along_axis(sample_logp_BV, tokens_B[:, None], axis=-1)[:, 0]
    policy_logp_B = jnp.take_along_axis(policy_logp_BV, tokens_B[:, None], axis=-1)[:, 0]
    return tokens_B, sample_logp_B, policy_logp_B


def _prefill(model_cfg, chunk, params, cache, tokens_BT, num_new_B, prev_last_logits_BV):
    num_new_B = num_new_B.astype(jnp.int32)
    batch, window = tokens_BT.shape
    last_BV = (jnp.zeros((batch, model_cfg.vocab_size), jnp.float32) if prev_last_logits_BV is None
               else prev_last_logits_BV.astype(jnp.float32))
    # Chunks bound the activations to [B, chunk, ...]; the logits are only the last new token's, [B, 1, V].
    for start in range(0, window, chunk):
        width = min(chunk, window - start)
        n_B = jnp.clip(num_new_B - start, 0, width)
        logits_B1V, cache = _extend(model_cfg, params, cache, tokens_BT[:, start:start + width], n_B, last_only=True)
        chunk_last_BV = logits_B1V[:, 0].astype(jnp.float32)
        last_BV = jnp.where((n_B > 0)[:, None], chunk_last_BV, last_BV)
    return last_BV, cache


def _program(fn, name: str, donate: bool):
    """fn jitted (static model and sampling configs) as a distinct Python function (jax keys its compile
    cache on the function), optionally donating the cache (argument 3): the caller's cache buffers are then
    reused for the returned cache instead of copied on entry (47 MB per call at the quickstart's shape)."""
    def program(*args):
        return fn(*args)

    program.__name__ = program.__qualname__ = name + ("_donating" if donate else "")
    return jax.jit(program, static_argnums=(0, 1), donate_argnums=(3,) if donate else ())


# The rollout's prompt prefill (P = B / G rows when a group's prompt is shared) is a jitted function of its
# own, so that each sampler function compiles one program per run: prompts, observations, decode.
_PREFILL = {(prompts, donate): _program(_prefill, "_prefill_prompts" if prompts else "_prefill", donate)
            for prompts in (False, True) for donate in (False, True)}


def prefill(model_cfg, params, cache, tokens_BT, num_new_B, prev_last_logits_BV=None, chunk_size=None,
            prompts: bool = False, donate_cache: bool = False):
    """Appends num_new_B[b] tokens of tokens_BT[b] to cache row b; returns (last_logits_BV float32, cache).

    tokens_BT: int32 [B, T], real tokens left-aligned (the rest is ignored); num_new_B: int32 [B], 0..T.
    last_logits_BV[b] are the logits after row b's last new token; rows with num_new_B[b] == 0 carry
    prev_last_logits_BV[b] (zeros when not given). chunk_size: run the window in chunks of this many
    tokens (None = one chunk), which bounds the activations to [B, chunk_size, ...] (the logits are [B, 1, V]). Jitted; compiles
    once per (B, T, S, chunk_size). prompts: use the separate jitted function for prompts (the rollout's
    first prefill), so its row count does not add a second program to the observation prefill's.
    donate_cache: the given cache's buffers become the returned cache's (no copy); the given cache must not
    be used again. The caller must keep cache.lengths + num_new_B <= S.
    """
    tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
    chunk = tokens_BT.shape[1] if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"prefill chunk_size must be >= 1, got {chunk_size}")
    jitted = _PREFILL[bool(prompts), bool(donate_cache)]
    return jitted(model_cfg, chunk, params, cache, tokens_BT, jnp.asarray(num_new_B, jnp.int32), prev_last_logits_BV)


def repeat_rows(cache, last_logits_BV, group_size: int):
    """Each cache row (and its last logits) repeated group_size times: row b -> rows b*G .. b*G + G - 1.

    Prefill each group's prompt once on a [P]-row cache, then call this to start the G samples of the group
    from the same cache contents (the prompt's k/v and last logits are identical for all of them).
    """
    if int(group_size) < 1:
        raise ValueError(f"repeat_rows: group_size must be >= 1, got {group_size}")
    rep = lambda x, axis: jnp.repeat(x, int(group_size), axis=axis)  # noqa: E731
    return map_rows(cache, rep), rep(jnp.asarray(last_logits_BV), 0)


@jax.jit
def _take_rows(cache, last_logits_BV, rows_R):
    return (map_rows(cache, lambda x, axis: jnp.take(x, rows_R, axis=axis)),
            jnp.take(last_logits_BV, rows_R, axis=0))


def take_rows(cache, last_logits_BV, rows):
    """(cache, last_logits) of the given rows only, in that order: [B] -> [R] rows (a row may repeat).

    The rollout compacts its cache with this when episodes finish, so the later turns compute R < B rows.
    Jitted; compiles once per (B, R).
    """
    return _take_rows(cache, jnp.asarray(last_logits_BV, jnp.float32), jnp.asarray(rows, jnp.int32))


def prefill_groups(model_cfg, params, cache_P, prompts_PT, num_new_P, group_size: int, chunk_size=None):
    """Prefill P prompts once each (on a P-row cache) and share them across G rows per group.

    Returns (last_logits_BV, cache) with B = P * G rows ordered group-major (row p * G + g is sample g of
    prompt p), ready for `decode`. Same values as prefilling every one of the B rows (tested), at 1/G cost.
    """
    last_PV, cache_P = prefill(model_cfg, params, cache_P, prompts_PT, num_new_P, chunk_size=chunk_size)
    cache, last_BV = repeat_rows(cache_P, last_PV, group_size)
    return last_BV, cache


class _DecodeTuple(NamedTuple):
    tokens_BN: jax.Array         # int32, sampled ids; 0 after each row's num_generated
    logp_BN: jax.Array           # float32, policy log-prob (temperature 1) of each sampled token; 0 after
    num_generated_B: jax.Array   # int32, tokens sampled per row (includes the stop token)
    stop_reason_B: jax.Array     # int32, STOP_* code; STOP_NONE for rows that were not active
    cache: Any                   # KVCache with every sampled token appended
    last_logits_BV: jax.Array    # float32, logits after each row's last token (carried for inactive rows)


class DecodeOutput(_DecodeTuple):
    """The contract's 6-tuple (unpacks as tokens, logp, num_generated, stop_reason, cache, last_logits)
    plus ``sample_logp_BN``: float32 log-probs under the sampling distribution (0 when greedy)."""

    sample_logp_BN: jax.Array  # set by `decode` (an attribute, not a tuple element)


class _Carry(NamedTuple):
    step: jax.Array
    key: jax.Array
    tokens_BN: jax.Array
    logp_BN: jax.Array
    sample_logp_BN: jax.Array
    num_generated_B: jax.Array
    running_B: jax.Array
    stop_reason_B: jax.Array
    cache: Any
    last_logits_BV: jax.Array


def _decode(model_cfg, cfg, params, cache, last_logits_BV, key, active_B, stop_ids_K, row_ids_B):
    batch = last_logits_BV.shape[0]
    n_new, size = cfg.max_new_tokens, cache.max_len
    active_B = active_B.astype(bool)
    has_room_B = cache.lengths < size
    init = _Carry(
        step=jnp.zeros((), jnp.int32),
        key=key,
        tokens_BN=jnp.zeros((batch, n_new), jnp.int32),
        logp_BN=jnp.zeros((batch, n_new), jnp.float32),
        sample_logp_BN=jnp.zeros((batch, n_new), jnp.float32),
        num_generated_B=jnp.zeros((batch,), jnp.int32),
        running_B=active_B & has_room_B,
        stop_reason_B=jnp.where(active_B & ~has_room_B, STOP_CACHE_FULL, STOP_NONE).astype(jnp.int32),
        cache=cache,
        last_logits_BV=last_logits_BV.astype(jnp.float32),
    )

    def cond(c: _Carry):
        return (c.step < n_new) & jnp.any(c.running_B)

    def body(c: _Carry):
        key, step_key = jax.random.split(c.key)
        run_B = c.running_B
        tok_B, sample_logp_B, policy_logp_B = sample_tokens(c.last_logits_BV, step_key, cfg, row_ids_B)
        tok_B = jnp.where(run_B, tok_B, 0)
        tokens_BN = c.tokens_BN.at[:, c.step].set(tok_B)
        logp_BN = c.logp_BN.at[:, c.step].set(jnp.where(run_B, policy_logp_B, 0.0))
        sample_logp_BN = c.sample_logp_BN.at[:, c.step].set(jnp.where(run_B, sample_logp_B, 0.0))
        # Only running rows append their token; the others' cache rows and last logits are untouched.
        logits_B1V, cache = _extend(model_cfg, params, c.cache, tok_B[:, None], run_B.astype(jnp.int32))
        last_logits_BV = jnp.where(run_B[:, None], logits_B1V[:, 0].astype(jnp.float32), c.last_logits_BV)
        num_generated_B = c.num_generated_B + run_B.astype(jnp.int32)
        reason_B = jnp.where(
            jnp.isin(tok_B, stop_ids_K), STOP_TOKEN,
            jnp.where(num_generated_B >= n_new, STOP_MAX_NEW,
                      jnp.where(cache.lengths >= size, STOP_CACHE_FULL, STOP_NONE)))
        stops_B = run_B & (reason_B != STOP_NONE)
        return _Carry(
            step=c.step + 1, key=key, tokens_BN=tokens_BN, logp_BN=logp_BN, sample_logp_BN=sample_logp_BN,
            num_generated_B=num_generated_B, running_B=run_B & ~stops_B,
            stop_reason_B=jnp.where(stops_B, reason_B, c.stop_reason_B).astype(jnp.int32),
            cache=cache, last_logits_BV=last_logits_BV)

    out = jax.lax.while_loop(cond, body, init)
    return (out.tokens_BN, out.logp_BN, out.num_generated_B, out.stop_reason_B, out.cache, out.last_logits_BV,
            out.sample_logp_BN)


_DECODE = {donate: _program(_decode, "_decode", donate) for donate in (False, True)}
_decode_jit = _DECODE[False]


def compile_counts() -> dict[str, int]:
    """Compiled programs of the jitted prompt prefill, observation prefill and decode held by this process
    (one per shape / config, with or without donating the cache; a rollout with fixed shapes: one each)."""
    def count(fns):
        return sum(fn._cache_size() for fn in fns)

    return {"prefill_prompts": count(_PREFILL[True, d] for d in (False, True)),
            "prefill": count(_PREFILL[False, d] for d in (False, True)),
            "decode": count(_DECODE.values()), "take_rows": _take_rows._cache_size()}


def clear_compile_caches() -> None:
    """Drops the sampler's compiled programs (a test that counts one run's compiles starts from zero)."""
    for fn in (*_PREFILL.values(), *_DECODE.values(), _take_rows):
        fn.clear_cache()


def decode(model_cfg, params, cache, last_logits_BV, key, active_B, stop_ids, cfg: SamplingConfig,
           row_ids_B=None, donate_cache: bool = False) -> DecodeOutput:
    """Samples up to cfg.max_new_tokens tokens for each active row, appending each to the cache.

    last_logits_BV: float32 [B, V], logits after each row's current last token (from `prefill` or the
    previous `decode`); key: PRNG key, split once per step; active_B: bool [B], rows to generate for;
    stop_ids: int sequence [K] of single-token stop ids (the stop token is sampled, kept and counted).
    A row stops at a stop id (STOP_TOKEN), after max_new_tokens tokens (STOP_MAX_NEW) or when its cache row
    is full (STOP_CACHE_FULL). The loop ends as soon as no row is running. row_ids_B: optional int [B], a
    per-row sampling key fold_in(step key, id) (see sample_tokens). Jitted; compiles once per
    (B, S, V, cfg, row ids given or not). Returns DecodeOutput: the tuple (tokens_BN, logp_BN, num_generated_B, stop_reason_B,
    cache, last_logits_BV), plus the attribute sample_logp_BN. donate_cache: as in `prefill` (the given cache
    must not be used again).
    """
    stop_ids_K = jnp.asarray(stop_ids, jnp.int32).reshape(-1)
    if stop_ids_K.size == 0:
        stop_ids_K = jnp.full((1,), -1, jnp.int32)  # no stop ids: a value no token can take
    *fields, sample_logp_BN = _DECODE[bool(donate_cache)](
        model_cfg, cfg, params, cache, jnp.asarray(last_logits_BV, jnp.float32), key, jnp.asarray(active_B, bool),
        stop_ids_K, None if row_ids_B is None else jnp.asarray(row_ids_B, jnp.int32))
    out = DecodeOutput(*fields)
    out.sample_logp_BN = sample_logp_BN
    return out
