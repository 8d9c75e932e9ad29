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
from typing import Any, Mapping, Sequence

import numpy as np

from orchestra_jax.data.bins import ffd_assign

RESERVED_FIELDS = ("tokens", "positions", "segment_ids")  # names a field cannot take
_INT32 = np.iinfo(np.int32)


class PackedRows:
    """What every packed batch shares: ``tokens`` [R, L], ``num_tokens`` and ``as_dict``; rows, row length,
    utilisation and the lookup of a per-token array to unpack."""

    @property
    def num_rows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def row_len(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def utilisation(self) -> float:
        """num_tokens / (rows * row_len); 0.0 for an empty batch."""
        size = self.tokens.size
        return self.num_tokens / size if size else 0.0

    def rows_array(self, name_or_array: str | Any) -> np.ndarray:
        """A named array of this batch, or any array whose leading dims are [R, L] (e.g. per-token log-probs
        computed on the packed batch); a ValueError naming the problem otherwise."""
        if isinstance(name_or_array, str):
            data = self.as_dict()
            if name_or_array not in data:
                raise ValueError(f"unknown packed array {name_or_array!r}; have {sorted(data)}")
            return data[name_or_array]
        arr = np.asarray(name_or_array)
        if arr.shape[:2] != self.tokens.shape:
            raise ValueError(f"array to unpack has shape {arr.shape}; expected leading dims "
                             f"{self.tokens.shape} (rows, row_len)")
        return arr


@dataclasses.dataclass(frozen=True)
class PackedBatch(PackedRows):
    """Packed rows plus where each original sequence went (see module docstring)."""

    tokens: np.ndarray        # int32 [R, L]
    positions: np.ndarray     # int32 [R, L]
    segment_ids: np.ndarray   # int32 [R, L]
    fields: dict              # name -> [R, L], padding 0
    placements: np.ndarray    # int32 [N, 3] (row, start, length)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.placements[:, 2].sum()) if len(self.placements) else 0

    def as_dict(self) -> dict[str, np.ndarray]:
        """``{"tokens", "positions", "segment_ids", **fields}``."""
        return {"tokens": self.tokens, "positions": self.positions, "segment_ids": self.segment_ids,
                **self.fields}

    def unpack(self, name_or_array: str | Any) -> list[np.ndarray]:
        """Per-sequence arrays in original order, read from a named array of this batch or from any array
        whose leading dims are [R, L] (e.g. per-token log-probs computed on the packed batch)."""
        arr = self.rows_array(name_or_array)
        return [arr[r, s:s + n].copy() for r, s, n in self.placements.tolist()]


def _as_sequence(seq: Any, index: int) -> np.ndarray:
    """Sequence ``index`` as a 1-D integer array, or a ValueError naming it."""
    arr = np.asarray(seq)
    if arr.ndim != 1:
        raise ValueError(f"sequence {index} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"sequence {index} must hold integer token ids, got dtype {arr.dtype}")
    return arr


def validated_inputs(sequences: Sequence[Any], row_len: Any, fields: Mapping[str, Sequence[Any]] | None,
                     truncate: bool, reserved: Sequence[str] = RESERVED_FIELDS
                     ) -> tuple[int, list[np.ndarray], dict[str, list[np.ndarray]]]:
    """The checks every packer makes before any work: (row_len as int, sequences, per-field arrays), the
    sequences and fields cut to row_len tokens (with ``truncate``; else a longer sequence is an error)."""
    if not isinstance(row_len, (int, np.integer)) or row_len < 1:
        raise ValueError(f"row_len must be a positive int, got {row_len!r}")
    row_len = int(row_len)
    seqs = [_as_sequence(s, i) for i, s in enumerate(sequences)]
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise ValueError(f"sequence {i} is empty; every sequence needs >= 1 token")
        if len(s) > row_len and not truncate:
            raise ValueError(f"sequence {i} has length {len(s)} > row_len {row_len} (pass truncate=True to cut it)")
    field_arrays = {}
    for name, values in dict(fields or {}).items():
        if name in reserved:
            raise ValueError(f"field name {name!r} is reserved (one of {tuple(reserved)})")
        if len(values) != len(seqs):
            raise ValueError(f"field {name!r} has {len(values)} entries for {len(seqs)} sequences")
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
    return row_len, seqs, field_arrays


def row_count(needed: int, num_rows: int | None, row_len: int, what: str, how: str) -> int:
    """The batch's row count: ``needed`` when num_rows is None, else num_rows if the placement fits in it."""
    if num_rows is None:
        return int(needed)
    if needed > num_rows:
        raise ValueError(f"{what} need {needed} rows of length {row_len} ({how}) but num_rows={num_rows}")
    return int(num_rows)


def pack(sequences: Sequence[Any], row_len: int, *, fields: Mapping[str, Sequence[Any]] | None = None,
         num_rows: int | None = None, truncate: bool = False) -> PackedBatch:
    """Pack ``sequences`` (list of 1-D int arrays) into rows of ``row_len`` tokens by first-fit-decreasing.

    fields: per-token arrays, ``fields[name][i]`` has the length of ``sequences[i]``; packed with their dtype.
    num_rows: pad the batch to exactly this many rows (error if first-fit-decreasing needs more).
    truncate: cut sequences (and their fields) longer than ``row_len`` to their first ``row_len`` tokens
      instead of raising; ``placements`` then records the truncated length.
    """
    row_len, seqs, field_arrays = validated_inputs(sequences, row_len, fields, truncate)
    n = len(seqs)
    lengths = np.fromiter((len(s) for s in seqs), np.int64, count=n)

    rows, needed = ffd_assign(lengths, row_len)
    num_rows = row_count(needed, num_rows, row_len, "sequences", "first-fit-decreasing")

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

    tokens = scatter(np.concatenate(seqs), np.int32)
    positions = scatter(within, np.int32)
    segment_ids = scatter(np.repeat(seg, lengths), np.int32)
    packed_fields = {}
    for name, arrs in field_arrays.items():
        flat = np.concatenate(arrs)
        packed_fields[name] = scatter(flat, flat.dtype)
    placements = np.stack([rows, starts, lengths], axis=1).astype(np.int32)
    return PackedBatch(tokens=tokens, positions=positions, segment_ids=segment_ids, fields=packed_fields,
                       placements=placements)
