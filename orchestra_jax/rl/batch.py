"""Episodes -> packed rows for the update: the static shape of a step (StepConfig), how many rows a step packs
into (fixed, or the fewest bucket that holds it), and the packing itself with its metrics."""
from __future__ import annotations

import dataclasses
import enum

import jax
import numpy as np

from orchestra_jax.data.bins import ffd_assign
from orchestra_jax.data.shared_packing import pack_groups, pack_shared
from orchestra_jax.model.attention import supports_shared_prefix
from orchestra_jax.rl.rollout import Rollout, invalid_turn_tokens


class InvalidTurns(enum.StrEnum):
    """What the loss does with the tokens of a turn the env refused as malformed (algo.invalid_turns)."""

    train = "train"  # like every other sampled token: the episode's advantage
    drop = "drop"  # no loss (the released ToolOrchestra code trains only on turns parsed as valid calls)
    penalise = "penalise"  # never a positive advantage: min(A, 0), so a malformed call is only ever pushed down



@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The static shape of a step."""

    tasks_per_step: int  # tasks per process per step
    rows_per_host: int  # packed rows per process (the most with row_bucket); a multiple of micro_batches x devices/host
    row_len: int  # tokens per packed row
    truncate: bool  # cut episodes longer than row_len (counted in packing/truncated_*) instead of raising
    seed: int  # train seed (env seeds derive from it and the step)
    batch_tasks: int = 0  # rollout chunk in tasks (0 = all of this process's tasks at once)
    share_prefix: bool = True  # store each group's prompt once per packed unit (build_batch)
    fill_gaps: bool = True  # shared units may split a group to fill rows' gaps when that saves rows
    row_bucket: int = 0  # > 0: pack into the fewest multiple of row_bucket rows that holds the step (step_rows)
    loss_positions: int = 0  # > 0: the update's output head runs at this many positions per row (its loss
    # tokens), not row_len; a step with a row holding more loss tokens uses row_len
    short_row_lens: tuple[int, ...] = ()  # ascending, < row_len: lengths a bucket of rows is cut to (bucket_row_lens)


def _pack_inputs(ro: Rollout, keep_N: np.ndarray, cfg: StepConfig, attention_backend: str, dtype: str,
                 loss_masks: list[np.ndarray]):
    """The kept episodes (ids, lengths, groups, loss masks) and rows_needed(n): rows the first n of them fill."""
    idx = [int(i) for i in np.flatnonzero(np.asarray(keep_N, bool) & (ro.lengths > 1))]
    lengths = ro.lengths[idx].astype(np.int64)
    if not cfg.truncate and np.any(lengths > cfg.row_len):
        raise ValueError(f"an episode of {int(lengths.max())} tokens exceeds train.row_len={cfg.row_len}; "
                         "set train.row_len >= rollout.max_seq_len or train.truncate=true")
    share = cfg.share_prefix and supports_shared_prefix(attention_backend, dtype)
    groups = [i // ro.group_size for i in idx]
    masks = [loss_masks[i] for i in idx]  # a shared prompt ends before the first loss token

    def rows_needed(n: int) -> int:
        if share:  # units of a prompt + the continuations that fit, first-fit-decreasing (as pack_shared)
            return pack_shared([ro.tokens[i] for i in idx[:n]], groups[:n], cfg.row_len,
                               fields={"loss_mask": masks[:n]}, truncate=cfg.truncate,
                               fill_gaps=cfg.fill_gaps).num_rows
        return ffd_assign(np.minimum(lengths[:n], cfg.row_len), cfg.row_len)[1]
    return idx, lengths, groups, masks, rows_needed


def step_rows(ro: Rollout, keep_N: np.ndarray, cfg: StepConfig, *, attention_backend: str = "auto",
              dtype: str = "float32", invalid_turns: InvalidTurns = InvalidTurns.train) -> int:
    """Rows this process's step packs into: cfg.rows_per_host, or with cfg.row_bucket the fewest multiple of
    it that holds every kept episode (at most rows_per_host). Every process must then pack the same count
    (grpo_step takes the maximum over processes); each count used compiles the update once."""
    if not cfg.row_bucket:
        return cfg.rows_per_host
    loss_masks, _, _ = _token_fields(ro, np.zeros(len(ro.tokens), np.float32), invalid_turns)
    idx, _, _, _, rows_needed = _pack_inputs(ro, keep_N, cfg, attention_backend, dtype, loss_masks)
    need = max(rows_needed(len(idx)), 1)
    return min(-(-need // cfg.row_bucket) * cfg.row_bucket, cfg.rows_per_host)


def _token_fields(ro: Rollout, advantages_N: np.ndarray, invalid_turns: InvalidTurns):
    """(loss masks, advantages, refused-turn tokens or None), per episode [T_i]; see token_advantages."""
    invalid_turns = InvalidTurns(invalid_turns)
    masks = [m.astype(np.float32) for m in ro.assistant_mask]
    advs = [np.full(len(m), a, np.float32) for m, a in zip(masks, np.asarray(advantages_N, np.float32))]
    if invalid_turns == InvalidTurns.train:
        return masks, advs, None
    bad_tokens = invalid_turn_tokens(ro)
    for mask, adv, bad in zip(masks, advs, bad_tokens):
        if invalid_turns == InvalidTurns.drop:
            mask[bad] = 0.0
        else:
            adv[bad] = np.minimum(adv[bad], 0.0)
    return masks, advs, bad_tokens


def token_advantages(ro: Rollout, advantages_N: np.ndarray, invalid_turns: InvalidTurns = InvalidTurns.train):
    """Per episode, (loss_mask float32 [T_i], advantages float32 [T_i]): the assistant mask and the
    episode's advantage on every token, with the tokens of refused turns treated as ``invalid_turns`` says."""
    masks, advs, _ = _token_fields(ro, advantages_N, invalid_turns)
    return masks, advs


def build_batch(ro: Rollout, advantages_N: np.ndarray, keep_N: np.ndarray, cfg: StepConfig, *,
                attention_backend: str = "auto", dtype: str = "float32", num_rows: int | None = None,
                invalid_turns: InvalidTurns = InvalidTurns.train):
    """This process's kept episodes packed into exactly ``num_rows`` (default cfg.rows_per_host) rows of
    cfg.row_len.

    loss_mask = assistant mask, advantages broadcast per token (``token_advantages``: refused turns as
    ``invalid_turns`` says). Episodes that do not fit the rows are
    left out (the latest first) and counted in ``packing/dropped_episodes``; with truncate, episodes longer
    than a row are cut and counted in ``packing/truncated_*``.

    cfg.share_prefix (and a backend that can express the mask, `data.shared_packing.pack_groups`): each group's
    common prompt is stored and computed once per unit (SharedPackedBatch: prefix_segment_ids, prev_index),
    with the same loss as unshared rows; the fit is then counted in shared units, so fewer rows hold the
    step (a unit is a prompt plus the continuations that fit one row: rows much longer than an episode are
    what lets a group share). Returns (batch, metrics); packing/tokens_computed over
    packing/tokens_unshared is the saving, packing/utilisation the share of the rows' slots holding tokens.
    """
    num_rows = cfg.rows_per_host if num_rows is None else num_rows
    loss_masks, advs, bad_tokens = _token_fields(ro, advantages_N, invalid_turns)
    idx, lengths, groups, masks, rows_needed = _pack_inputs(ro, keep_N, cfg, attention_backend, dtype, loss_masks)
    n = len(idx)
    while n and rows_needed(n) > num_rows:
        n -= 1
    dropped, idx, lengths, groups, masks = len(idx) - n, idx[:n], lengths[:n], groups[:n], masks[:n]
    fields = {"loss_mask": masks, "advantages": [advs[i] for i in idx]}
    batch = pack_groups([ro.tokens[i] for i in idx], groups, cfg.row_len, share_prefix=cfg.share_prefix,
                        attention_backend=attention_backend, dtype=dtype, fields=fields,
                        num_rows=num_rows, truncate=cfg.truncate, fill_gaps=cfg.fill_gaps)
    unshared = int(np.sum(np.minimum(lengths, cfg.row_len)))
    m = {"packing/truncated_episodes": float(np.sum(lengths > cfg.row_len)),
         "packing/truncated_tokens": float(np.sum(np.maximum(lengths - cfg.row_len, 0))),
         "packing/dropped_episodes": float(dropped), "packing/utilisation": float(batch.utilisation),
         "packing/rows": float(batch.num_rows), "packing/episodes": float(len(idx)),
         "packing/tokens_computed": float(batch.num_tokens), "packing/tokens_unshared": float(unshared),
         "packing/tokens_computed_ratio": float(batch.num_tokens / unshared) if unshared else 1.0}
    if bad_tokens is not None:
        m[f"loss/invalid_tokens_{InvalidTurns(invalid_turns).value}"] = float(sum(int(bad_tokens[i].sum()) for i in idx))
    return batch, m


def _loss_tokens(loss_mask_RL: np.ndarray, segment_ids_RL: np.ndarray) -> np.ndarray:
    """bool [R, L]: the tokens the loss counts (host-side `rl.losses.effective_mask`)."""
    return (np.asarray(loss_mask_RL) > 0) & (np.asarray(segment_ids_RL) != 0)


def loss_positions(loss_mask_RL: np.ndarray, segment_ids_RL: np.ndarray, width: int) -> np.ndarray:
    """int32 [R, width]: each row's loss-token positions in order, -1 after them (the update's output head
    then runs only there: `rl.step.token_logprobs`)."""
    mask_RL = _loss_tokens(loss_mask_RL, segment_ids_RL)
    counts = mask_RL.sum(axis=1)
    if counts.max(initial=0) > width:
        raise ValueError(f"a packed row has {int(counts.max())} loss tokens, more than the {width} loss positions")
    out = np.full((mask_RL.shape[0], width), -1, np.int32)
    r, t = np.nonzero(mask_RL)  # row-major: positions ascending within each row
    out[r, np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)] = t
    return out


def max_loss_tokens_per_row(loss_mask_RL: np.ndarray, segment_ids_RL: np.ndarray) -> int:
    return int(_loss_tokens(loss_mask_RL, segment_ids_RL).sum(axis=1).max(initial=0))


def agree_max(value: int) -> int:
    """The largest of every process's value (e.g. a row count: the global batch needs one shape)."""
    return agree_max_each([value])[0]


def agree_max_each(values: list[int]) -> list[int]:
    """Element-wise, the largest of every process's values (each process passes as many)."""
    if jax.process_count() == 1:
        return [int(v) for v in values]
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64)))
    return [int(v) for v in gathered.reshape(-1, len(values)).max(axis=0)]


def bucket_row_lens(segment_ids_RL: np.ndarray, per: int, row_len: int, short_row_lens: tuple[int, ...] = ()
                    ) -> tuple[np.ndarray, list[int]]:
    """(row order, length of each bucket): the rows, fullest first, in buckets of ``per``; each bucket cut to
    the shortest of ``short_row_lens`` + (row_len,) that holds its rows' tokens (a packed row's tokens start at
    its first slot, padding after them), the same on every process. Without short lengths: the rows in order,
    every bucket row_len."""
    seg = np.asarray(segment_ids_RL)
    rows = seg.shape[0]
    if not short_row_lens:
        return np.arange(rows), [row_len] * (-(-rows // per))
    used = np.where(seg.any(axis=1), seg.shape[1] - np.argmax(seg[:, ::-1] != 0, axis=1), 0)
    order = np.argsort(-used, kind="stable")
    choices = sorted(set(short_row_lens)) + [row_len]
    lens = [next(n for n in choices if n >= used[order[i:i + per]].max()) for i in range(0, rows, per)]
    return order, agree_max_each(lens)


def global_packing_metrics(m: dict[str, float]) -> dict[str, float]:
    """Packing metrics over all processes: counts summed, utilisation averaged."""
    if jax.process_count() == 1:
        return m
    from jax.experimental import multihost_utils

    keys = sorted(m)
    values = np.asarray(multihost_utils.process_allgather(np.asarray([m[k] for k in keys], np.float64)))
    out = {k: float(values[:, i].mean() if k == "packing/utilisation" else values[:, i].sum())
           for i, k in enumerate(keys)}
    if out.get("packing/tokens_unshared"):
        out["packing/tokens_computed_ratio"] = out["packing/tokens_computed"] / out["packing/tokens_unshared"]
    return out
