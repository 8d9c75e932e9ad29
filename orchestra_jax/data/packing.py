"""First-fit-decreasing packing of variable-length token sequences into fixed-length rows (host side, numpy).

Layout of a packed batch with ``R`` rows of length ``L``:

- ``tokens``      int32 [R, L]: sequence tokens, 0 on padding;
- ``positions``   int32 [R, L]: 0, 1, 2, ... restarting at every segment, 0 on padding;
- ``segment_ids`` int32 [R, L]: 1..n for the n sequences of a row (in order of their original index),
  0 on padding (padding is identified by segment id 0 only, never by token id);
- ``fields[name]`` [R, L]: any per-token array (loss_mask, advantages, old_logp, ...) with its own dtype,
  0 on padding;
- ``placements``  int32 [N, 3]: (row, start, length) of sequence i.

Rows are assigned by first-fit-decreasing: sequences sorted by length (longest first, ties by index), each
goes into the first row with room. Inside a row the segments are then laid out in original-index order.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from orchestra_jax.data.bins import ffd_assign, place_units

_RESERVED = ("tokens", "positions", "segment_ids")
_INT32 = np.iinfo(np.int32)


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """Packed rows plus where each original sequence went (see module docstring)."""

    tokens: np.ndarray        # int32 [R, L]
    positions: np.ndarray     # int32 [R, L]
    segment_ids: np.ndarray   # int32 [R, L]
    fields: dict              # name -> [R, L], padding 0
    placements: np.ndarray    # int32 [N, 3] (row, start, length)

    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def row_len(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.placements[:, 2].sum()) if len(self.placements) else 0

    @property
    def utilisation(self) -> float:
        """Real tokens / (rows * row_len); 0.0 for an empty batch."""
        size = self.tokens.size
        return self.num_tokens / size if size else 0.0

    def as_dict(self) -> dict[str, np.ndarray]:
        """``{"tokens", "positions", "segment_ids", **fields}``."""
        return {"tokens": self.tokens, "positions": self.positions, "segment_ids": self.segment_ids,
                **self.fields}

    def unpack(self, name_or_array: str | Any) -> list[np.ndarray]:
        """Per-sequence arrays in original order, read from a named array of this batch or from any array
        whose leading dims are [R, L] (e.g. per-token log-probs computed on the packed batch)."""
        if isinstance(name_or_array, str):
            data = self.as_dict()
            if name_or_array not in data:
                raise ValueError(f"unknown packed array {name_or_array!r}; have {sorted(data)}")
            arr = data[name_or_array]
        else:
            arr = np.asarray(name_or_array)
            if arr.shape[:2] != self.tokens.shape:
                raise ValueError(f"array to unpack has shape {arr.shape}; expected leading dims "
                                 f"{self.tokens.shape} (rows, row_len)")
        return [arr[r, s:s + n].copy() for r, s, n in self.placements.tolist()]


def _as_sequence(seq: Any, index: int) -> np.ndarray:
    arr = np.asarray(seq)
    if arr.ndim != 1:
        raise ValueError(f"sequence {index} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"sequence {index} must hold integer token ids, got dtype {arr.dtype}")
    return arr


def pack(sequences: Sequence[Any], row_len: int, *, fields: Mapping[str, Sequence[Any]] | None = None,
         num_rows: int | None = None, truncate: bool = False) -> PackedBatch:
    """Pack ``sequences`` (list of 1-D int arrays) into rows of ``row_len`` tokens by first-fit-decreasing.

    fields: per-token arrays, ``fields[name][i]`` has the length of ``sequences[i]``; packed with their dtype.
    num_rows: pad the batch to exactly this many rows (error if first-fit-decreasing needs more).
    truncate: cut sequences (and their fields) longer than ``row_len`` to their first ``row_len`` tokens
      instead of raising; ``placements`` then records the truncated length.
    """
    if not isinstance(row_len, (int, np.integer)) or row_len < 1:
        raise ValueError(f"row_len must be a positive int, got {row_len!r}")
    row_len = int(row_len)
    seqs = [_as_sequence(s, i) for i, s in enumerate(sequences)]
    n = len(seqs)
    lengths = np.fromiter((len(s) for s in seqs), np.int64, count=n)
    if n and lengths.min() == 0:
        raise ValueError(f"sequence {int(np.argmin(lengths))} is empty; every sequence needs >= 1 token")
    if n and lengths.max() > row_len:
        if not truncate:
            i = int(np.argmax(lengths > row_len))
            raise ValueError(f"sequence {i} has length {int(lengths[i])} > row_len {row_len} "
                             f"(pass truncate=True to cut it)")
        seqs = [s[:row_len] for s in seqs]

    fields = dict(fields or {})
    field_arrays = {}
    for name, values in fields.items():
        if name in _RESERVED:
            raise ValueError(f"field name {name!r} is reserved (one of {_RESERVED})")
        if len(values) != n:
            raise ValueError(f"field {name!r} has {len(values)} entries for {n} sequences")
        arrs = []
        for i, v in enumerate(values):
            a = np.asarray(v)
            if a.ndim != 1 or len(a) != lengths[i]:
                raise ValueError(f"field {name!r} of sequence {i} has shape {a.shape}; expected "
                                 f"({int(lengths[i])},) like the sequence")
            arrs.append(a[:row_len])
        field_arrays[name] = arrs
    lengths = np.minimum(lengths, row_len)

    rows, needed = ffd_assign(lengths, row_len)
    if num_rows is None:
        num_rows = needed
    elif needed > num_rows:
        raise ValueError(f"sequences need {needed} rows of length {row_len} (first-fit-decreasing) "
                         f"but num_rows={num_rows}")
    num_rows = int(num_rows)

    if n == 0:
        zeros = np.zeros((num_rows, row_len), np.int32)
        return PackedBatch(tokens=zeros, positions=zeros.copy(), segment_ids=zeros.copy(),
                           fields={k: np.zeros((num_rows, row_len), np.float32) for k in field_arrays},
                           placements=np.zeros((0, 3), np.int32))

    # Lay out each row's segments in original-index order: order by (row, index).
    by_row = np.lexsort((np.arange(n), rows))
    sorted_rows = rows[by_row]
    sorted_len = lengths[by_row]
    ends_in_row = np.cumsum(sorted_len)
    row_first = np.ones(n, bool)
    row_first[1:] = sorted_rows[1:] != sorted_rows[:-1]
    # start of a segment = cumulative length minus the cumulative length at the start of its row
    row_base = np.maximum.accumulate(np.where(row_first, ends_in_row - sorted_len, 0))
    starts_sorted = ends_in_row - sorted_len - row_base
    seg_sorted = np.arange(n) - np.maximum.accumulate(np.where(row_first, np.arange(n), 0)) + 1
    starts = np.empty(n, np.int64)
    seg = np.empty(n, np.int64)
    starts[by_row] = starts_sorted
    seg[by_row] = seg_sorted

    # Flat destination of every token, sequences concatenated in original order.
    total = int(lengths.sum())
    seq_offset = np.cumsum(lengths) - lengths
    within = np.arange(total) - np.repeat(seq_offset, lengths)
    dest = np.repeat(rows * row_len + starts, lengths) + within

    def scatter(flat: np.ndarray, dtype) -> np.ndarray:
        out = np.zeros(num_rows * row_len, dtype)
        out[dest] = flat
        return out.reshape(num_rows, row_len)

    flat_tokens = np.concatenate(seqs)
    if flat_tokens.min() < _INT32.min or flat_tokens.max() > _INT32.max:
        raise ValueError("token ids do not fit in int32")
    tokens = scatter(flat_tokens, np.int32)
    positions = scatter(within, np.int32)
    segment_ids = scatter(np.repeat(seg, lengths), np.int32)
    packed_fields = {}
    for name, arrs in field_arrays.items():
        flat = np.concatenate(arrs)
        packed_fields[name] = scatter(flat, flat.dtype)
    placements = np.stack([rows, starts, lengths], axis=1).astype(np.int32)
    return PackedBatch(tokens=tokens, positions=positions, segment_ids=segment_ids, fields=packed_fields,
                       placements=placements)


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
class SharedPackedBatch:
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
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def row_len(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def num_tokens(self) -> int:
        """Tokens actually stored and computed (each unit's prompt once)."""
        return int((self.segment_ids != 0).sum())

    @property
    def num_episode_tokens(self) -> int:
        """Tokens the unshared packing would compute: the sum of the episodes' lengths."""
        return int(self.placements[:, 2].sum() + self.prefix_placements[:, 2].sum())

    @property
    def utilisation(self) -> float:
        """Stored tokens / (rows * row_len); 0.0 for an empty batch."""
        size = self.tokens.size
        return self.num_tokens / size if size else 0.0

    def as_dict(self) -> dict[str, np.ndarray]:
        """``{"tokens", "positions", "segment_ids", "prefix_segment_ids", "prev_index", **fields}``."""
        return {"tokens": self.tokens, "positions": self.positions, "segment_ids": self.segment_ids,
                "prefix_segment_ids": self.prefix_segment_ids, "prev_index": self.prev_index, **self.fields}

    def unpack(self, name_or_array: str | Any) -> list[np.ndarray]:
        """Per-episode arrays in original order, each = its prompt's values then its continuation's: equal to
        ``PackedBatch.unpack`` of the unshared packing for any per-token quantity (tokens, log-probs, ...)."""
        if isinstance(name_or_array, str):
            data = self.as_dict()
            if name_or_array not in data:
                raise ValueError(f"unknown packed array {name_or_array!r}; have {sorted(data)}")
            arr = data[name_or_array]
        else:
            arr = np.asarray(name_or_array)
            if arr.shape[:2] != self.tokens.shape:
                raise ValueError(f"array to unpack has shape {arr.shape}; expected leading dims "
                                 f"{self.tokens.shape} (rows, row_len)")
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
    if not isinstance(row_len, (int, np.integer)) or row_len < 1:
        raise ValueError(f"row_len must be a positive int, got {row_len!r}")
    row_len = int(row_len)
    seqs = [_as_sequence(s, i) for i, s in enumerate(sequences)]
    n = len(seqs)
    group_ids = list(group_ids)
    if len(group_ids) != n:
        raise ValueError(f"group_ids has {len(group_ids)} entries for {n} sequences")
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise ValueError(f"sequence {i} is empty; every sequence needs >= 1 token")
        if len(s) > row_len and not truncate:
            raise ValueError(f"sequence {i} has length {len(s)} > row_len {row_len} (pass truncate=True to cut it)")
    fields = dict(fields or {})
    field_arrays = {}
    for name, values in fields.items():
        if name in _RESERVED + ("prefix_segment_ids", "prev_index"):
            raise ValueError(f"field name {name!r} is reserved")
        if len(values) != n:
            raise ValueError(f"field {name!r} has {len(values)} entries for {n} sequences")
        arrs = []
        for i, v in enumerate(values):
            a = np.asarray(v)
            if a.ndim != 1 or len(a) != len(seqs[i]):
                raise ValueError(f"field {name!r} of sequence {i} has shape {a.shape}; expected "
                                 f"({len(seqs[i])},) like the sequence")
            arrs.append(a[:row_len])
        field_arrays[name] = arrs
    seqs = [s[:row_len] for s in seqs]
    if any(s.size and (s.min() < _INT32.min or s.max() > _INT32.max) for s in seqs):
        raise ValueError("token ids do not fit in int32")

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
    if num_rows is None:
        num_rows = needed
    elif needed > num_rows:
        raise ValueError(f"episodes need {needed} rows of length {row_len} (prefix-shared, first-fit-decreasing) "
                         f"but num_rows={num_rows}")
    num_rows = int(num_rows)

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
