"""Rows for packing: first-fit-decreasing bins for sequences, and the placement of prefix-shared group units
(a prompt plus continuations) with optional gap filling. Pure numpy / Python, no arrays built here."""
from __future__ import annotations

import numpy as np


def ffd_assign(lengths: np.ndarray, row_len: int) -> tuple[np.ndarray, int]:
    """First-fit-decreasing bin assignment. Returns (row index per sequence [N], number of rows).

    All lengths must be in [1, row_len].
    """
    n = len(lengths)
    rows = np.empty(n, np.int64)
    order = np.lexsort((np.arange(n), -lengths))  # longest first, ties by index: deterministic
    free = np.empty(max(n, 1), np.int64)          # free space per open row (at most n rows)
    num_rows = 0
    for i in order.tolist():
        length = lengths[i]
        fits = np.flatnonzero(free[:num_rows] >= length)
        if fits.size:
            r = int(fits[0])
        else:
            r = num_rows
            free[r] = row_len
            num_rows += 1
        free[r] -= length
        rows[i] = r
    return rows, num_rows


def whole_group_units(groups, row_len: int):
    """Each group as one unit (a prompt + its continuations), cut only where it overflows a row; FFD rows."""
    units, unit_len = [], []  # unit: (prefix len, first member, [members])
    for p, members, conts in groups:
        current, used = [], p
        for i, c in zip(members, conts):
            if current and used + c > row_len:
                units.append((p, members[0], current))
                unit_len.append(used)
                current, used = [], p
            current.append(i)
            used += c
        units.append((p, members[0], current))
        unit_len.append(used)
    rows, needed = ffd_assign(np.asarray(unit_len, np.int64), row_len) if units else (np.zeros(0, np.int64), 0)
    return units, rows, needed


def gap_filling_units(groups, row_len: int):
    """Groups largest first; a group that fits no open row whole fills the roomiest open row's gap with the
    continuations that fit there (its prompt stored again in that row), the rest going on likewise."""
    order = sorted(range(len(groups)), key=lambda g: (-(groups[g][0] + sum(groups[g][2])), g))
    units, rows, free = [], [], []
    for g in order:
        p, members, conts = groups[g]
        remaining = list(zip(members, conts))
        while remaining:
            need = p + sum(c for _, c in remaining)
            whole = [r for r, f in enumerate(free) if f >= need]
            if whole:
                r, take = whole[0], remaining
            else:
                gaps = [r for r, f in enumerate(free) if f >= p + min(c for _, c in remaining)]
                if gaps:
                    r = max(gaps, key=lambda r: (free[r], -r))
                else:
                    r = len(free)
                    free.append(row_len)
                take, room = [], free[r] - p
                for i, c in remaining:
                    if c <= room:  # p + c <= row_len for every episode: a fresh row takes at least one
                        take.append((i, c))
                        room -= c
            taken = {i for i, _ in take}
            remaining = [(i, c) for i, c in remaining if i not in taken]
            units.append((p, members[0], [i for i, _ in take]))
            rows.append(r)
            free[r] -= p + sum(c for _, c in take)
    return units, np.asarray(rows, np.int64), len(free)


def place_units(groups, row_len: int, fill_gaps: bool):
    """(units, row of each unit, rows used) for pack_shared: whole-group units by first-fit-decreasing, or,
    with fill_gaps and when it needs fewer rows, groups split to fill the gaps rows leave (a prompt stored
    once more per split: more tokens computed, fewer rows). groups: [(prefix len, members, continuation
    lengths)]."""
    whole = whole_group_units(groups, row_len)
    if not fill_gaps:
        return whole
    split = gap_filling_units(groups, row_len)
    return split if split[2] < whole[2] else whole
