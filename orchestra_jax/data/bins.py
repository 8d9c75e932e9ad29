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
    once more per split: more tokens computed, fewer rows), by whichever of two placements (rows opened one
    by one, or a fixed row count from the lower bound up) needs fewer. groups: [(prefix len, members,
    continuation lengths)]."""
    whole = whole_group_units(groups, row_len)
    if not fill_gaps:
        return whole
    # fewest rows first, then fewest tokens (prompts stored again), then the earlier candidate
    candidates = [whole, gap_filling_units(groups, row_len), fewest_rows_units(groups, row_len)]
    return min(candidates, key=lambda c: (c[2], _unit_tokens(c[0], groups)))


def _unit_tokens(units, groups) -> int:
    cont = {i: c for _, members, conts in groups for i, c in zip(members, conts)}
    return sum(p + sum(cont[i] for i in members) for p, _, members in units)


def units_in_rows(groups, row_len: int, num_rows: int):
    """Groups (largest first) into exactly ``num_rows`` open rows, or None when they do not fit: a group goes
    whole into the fullest row that holds it (best fit), else its continuations (longest first) fill the
    roomiest rows' gaps, its prompt stored again in each. Seeing every row's gap from the start is what lets
    it need fewer rows than opening rows one by one (gap_filling_units)."""
    order = sorted(range(len(groups)), key=lambda g: (-(groups[g][0] + sum(groups[g][2])), g))
    free = [row_len] * num_rows
    units, rows = [], []
    for g in order:
        p, members, conts = groups[g]
        remaining = sorted(zip(members, conts), key=lambda x: (-x[1], x[0]))
        while remaining:
            need = p + sum(c for _, c in remaining)
            fits = [r for r in range(num_rows) if free[r] >= need]
            if fits:
                r, take = min(fits, key=lambda r: (free[r], r)), remaining
            else:
                r = max(range(num_rows), key=lambda r: (free[r], -r))
                take, room = [], free[r] - p
                for i, c in remaining:
                    if c <= room:
                        take.append((i, c))
                        room -= c
                if not take:
                    return None
            taken = {i for i, _ in take}
            remaining = [x for x in remaining if x[0] not in taken]
            units.append((p, members[0], [i for i, _ in take]))
            rows.append(r)
            free[r] -= p + sum(c for _, c in take)
    used = sorted(set(rows))  # rows left empty are dropped
    return units, np.asarray([used.index(r) for r in rows], np.int64), len(used)


def fewest_rows_units(groups, row_len: int):
    """``units_in_rows`` with the fewest rows it manages, trying from the token lower bound upward."""
    total = sum(p + sum(conts) for p, _, conts in groups)
    num_rows = max(-(-total // row_len), 1)
    while True:
        out = units_in_rows(groups, row_len, num_rows)
        if out is not None:
            return out
        num_rows += 1
