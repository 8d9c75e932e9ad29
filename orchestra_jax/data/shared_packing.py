"""Prefix-shared packing of GRPO groups (host side, numpy): one prompt segment plus G continuation segments
per group, so the prompt the group's episodes share is stored and computed once per row it sits in.
`pack_groups` picks it or the plain first-fit-decreasing `orchestra_jax.data.packing.pack`."""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from orchestra_jax.data.bins import place_units
from orchestra_jax.data.packing import RESERVED_FIELDS, PackedRows, pack, row_count, validated_inputs

# ---------------------------------------------------------------------------------------------------------
# Prefix-shared groups: one prompt segment plus G continuation segments per group.
#
# The G episodes of a GRPO group start with the same prompt. `pack_shared` stores that prompt once per
# "unit" (a prompt segment followed by as many of the group's continuations as fit in a row; a group that
# does not fit in one row is split into several units, each repeating the prompt) and adds two per-token
# arrays the model needs:
#   prefix_segment_ids int32 [R, L]: the segment id a token may attend to besides its own (causally): the
#       unit's prompt segment for continuation tokens, the token's own segment id otherwise (prompt tokens,
#       padding, episodes without a shared prefix). Attention mask: key s is visible to query t iff s <= t
#       and segment_ids[s] in {segment_ids[t], prefix_segment_ids[t]}.
#   prev_index int32 [R, L]: row index of the token whose logits predict this token (t - 1 inside a segment;
#       the prompt's last token for a continuation's first token); -1 for a prompt's first token and
#       padding, whose log-prob is 0 by the ARCHITECTURE.md convention.
# Positions of a continuation continue from its prompt (P, P + 1, ...), so every continuation token sees
# exactly the keys, positions and predecessor it has in the unshared packing of prompt + continuation.
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SharedPackedBatch(PackedRows):
    """Prefix-shared packed rows (see the section comment above) plus where each episode went."""

    tokens: np.ndarray              # int32 [R, L]
    positions: np.ndarray           # int32 [R, L]
    segment_ids: np.ndarray         # int32 [R, L]
    prefix_segment_ids: np.ndarray  # int32 [R, L]
    prev_index: np.ndarray          # int32 [R, L]
    fields: dict                    # name -> [R, L], padding 0; prompt tokens carry the group's first episode's
    placements: np.ndarray          # int32 [N, 3] (row, start, length) of episode i's continuation
    prefix_placements: np.ndarray   # int32 [N, 3] (row, start, length) of the prompt segment episode i reads
    prefix_lens: np.ndarray         # int32 [num_groups] shared prefix length of each group (by first appearance)

    @property
    def num_tokens(self) -> int:
        """Tokens actually stored and computed (each unit's prompt once)."""
        return int((self.segment_ids != 0).sum())

    @property
    def num_episode_tokens(self) -> int:
        """Tokens the unshared packing would compute: the sum of the episodes' lengths."""
        return int(self.placements[:, 2].sum() + self.prefix_placements[:, 2].sum())

    def as_dict(self) -> dict[str, np.ndarray]:
        """``{"tokens", "positions", "segment_ids", "prefix_segment_ids", "prev_index", **fields}``."""
        return {"tokens": self.tokens, "positions": self.positions, "segment_ids": self.segment_ids,
                "prefix_segment_ids": self.prefix_segment_ids, "prev_index": self.prev_index, **self.fields}

    def unpack(self, name_or_array: str | Any) -> list[np.ndarray]:
        """Per-episode arrays in original order, each = its prompt's values then its continuation's: equal to
        ``PackedBatch.unpack`` of the unshared packing for any per-token quantity (tokens, log-probs, ...)."""
        arr = self.rows_array(name_or_array)
        return [np.concatenate([arr[pr, ps:ps + pn], arr[r, s:s + n]])
                for (pr, ps, pn), (r, s, n) in zip(self.prefix_placements.tolist(), self.placements.tolist())]


def shared_prefix_len(sequences: Sequence[np.ndarray], loss_masks: Sequence[np.ndarray] | None = None) -> int:
    """Length of the prefix a group can share: the longest common prefix of its sequences, cut before any
    member's first loss token (so no trained token is shared) and so every member keeps >= 1 token of its
    own. 0 for a group of one."""
    if len(sequences) < 2:
        return 0
    limit = min(len(s) for s in sequences) - 1
    if loss_masks is not None:
        for m in loss_masks:
            nz = np.flatnonzero(np.asarray(m))
            if nz.size:
                limit = min(limit, int(nz[0]))
    first = sequences[0][:max(limit, 0)]
    common = len(first)
    for s in sequences[1:]:
        diff = np.flatnonzero(s[:common] != first[:common])
        if diff.size:
            common = int(diff[0])
    return max(common, 0)


def pack_shared(sequences: Sequence[Any], group_ids: Sequence[int], row_len: int, *,
                fields: Mapping[str, Sequence[Any]] | None = None, num_rows: int | None = None,
                truncate: bool = False, loss_mask_field: str | None = "loss_mask",
                fill_gaps: bool = True) -> SharedPackedBatch:
    """Pack episodes with their group's shared prefix stored once per unit (see SharedPackedBatch).

    sequences: per-episode 1-D int token arrays (full episodes: prompt + everything after it).
    group_ids: one hashable id per episode; episodes with equal ids share their longest common prefix
      (see shared_prefix_len; fields[loss_mask_field], when present, caps it before the first loss token).
    fields: per-episode, per-token arrays like sequences; a prompt segment carries the values of its group's
      first episode (the cap makes those tokens loss-masked in every member).
    num_rows / truncate: as in `pack`. Units (a prompt plus the continuations that fit) are placed by
      first-fit-decreasing and laid out in group order inside a row.
    fill_gaps: when it needs fewer rows, split groups so that part of a group fills the gap a row leaves
      (its prompt stored once more there); never more rows than whole groups.
    """
    row_len, seqs, field_arrays = validated_inputs(sequences, row_len, fields, truncate,
                                                   RESERVED_FIELDS + ("prefix_segment_ids", "prev_index"))
    n = len(seqs)
    group_ids = list(group_ids)
    if len(group_ids) != n:
        raise ValueError(f"group_ids has {len(group_ids)} entries for {n} sequences")

    groups: dict[Any, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    masks = field_arrays.get(loss_mask_field) if loss_mask_field else None
    prefix_lens, group_list = [], []
    for members in groups.values():
        p = shared_prefix_len([seqs[i] for i in members], None if masks is None else [masks[i] for i in members])
        prefix_lens.append(p)
        group_list.append((p, members, [len(seqs[i]) - p for i in members]))
    units, rows_of_unit, needed = place_units(group_list, row_len, fill_gaps)
    num_rows = row_count(needed, num_rows, row_len, "episodes", "prefix-shared, first-fit-decreasing")

    shape = (num_rows, row_len)
    tokens, positions, segs, prefix_segs = (np.zeros(shape, np.int32) for _ in range(4))
    prev = np.full(shape, -1, np.int32)
    out_fields = {k: np.zeros(shape, v[0].dtype if v else np.float32) for k, v in field_arrays.items()}
    placements = np.zeros((n, 3), np.int32)
    prefix_placements = np.zeros((n, 3), np.int32)
    fill = np.zeros(num_rows, np.int64)
    next_seg = np.ones(num_rows, np.int64)

    def put(r, start, src, lo, pos0, seg, prefix_seg, first_prev):
        length = len(src) - lo
        sl = slice(start, start + length)
        tokens[r, sl] = src[lo:]
        positions[r, sl] = np.arange(pos0, pos0 + length)
        segs[r, sl] = seg
        prefix_segs[r, sl] = prefix_seg
        prev[r, sl] = np.arange(start - 1, start + length - 1)
        prev[r, start] = first_prev

    for u in np.lexsort((np.arange(len(units)), rows_of_unit)).tolist():  # row order, then unit order
        p, first, members = units[u]
        r = int(rows_of_unit[u])
        start = int(fill[r])
        prompt_seg = own = int(next_seg[r])
        if p:
            put(r, start, seqs[first][:p], 0, 0, prompt_seg, prompt_seg, -1)
            for k, arrs in field_arrays.items():
                out_fields[k][r, start:start + p] = arrs[first][:p]
            next_seg[r] += 1
        cursor = start + p
        for i in members:
            own = int(next_seg[r])
            c = len(seqs[i]) - p
            put(r, cursor, seqs[i], p, p, own, prompt_seg if p else own, start + p - 1 if p else -1)
            for k, arrs in field_arrays.items():
                out_fields[k][r, cursor:cursor + c] = arrs[i][p:]
            placements[i] = (r, cursor, c)
            prefix_placements[i] = (r, start, p)
            cursor += c
            next_seg[r] += 1
        fill[r] = cursor
    return SharedPackedBatch(tokens=tokens, positions=positions, segment_ids=segs, prefix_segment_ids=prefix_segs,
                             prev_index=prev, fields=out_fields, placements=placements,
                             prefix_placements=prefix_placements, prefix_lens=np.asarray(prefix_lens, np.int32))


def pack_groups(sequences: Sequence[Any], group_ids: Sequence[int], row_len: int, *, share_prefix: bool = True,
                attention_backend: str = "auto", dtype: str = "float32", **kwargs):
    """`pack_shared` when share_prefix and the attention backend can express the prefix mask, else `pack`
    (unshared rows) with a warning naming the backend. kwargs: fields, num_rows, truncate (both) and
    loss_mask_field, fill_gaps (shared only)."""
    from orchestra_jax.model.attention import supports_shared_prefix

    if share_prefix and supports_shared_prefix(attention_backend, dtype):
        return pack_shared(sequences, group_ids, row_len, **kwargs)
    if share_prefix:
        warnings.warn(f"attention backend {attention_backend!r} cannot express the shared-prefix mask; "
                      "packing unshared rows (each episode with its own copy of the prompt)", stacklevel=2)
    kwargs.pop("loss_mask_field", None)
    kwargs.pop("fill_gaps", None)
    return pack(sequences, row_len, **kwargs)
