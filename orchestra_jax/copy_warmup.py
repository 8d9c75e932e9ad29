"""A dense copying task trained before behaviour cloning (``sft.copy_warmup_steps``).

Each example is a run of random tokens, a separator, and the same run again with every repeated token a target.
A small random policy learns it within tens of steps. In the synthetic binding probe
(``experiments/binding_probe.py --layout after --induction-task repeat``) a menu lookup that stayed at chance
without this stage was learned after 200 steps of it; on the QA quickstart's menus the SFT policy writes one
fixed model slot without it and reads the menu in part after it, with either menu layout (README, "The copying
stage on the QA menus").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def copying_examples(rng: np.random.Generator, token_ids: Sequence[int], separator: int, n: int,
                     run_len: int = 20) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` examples ``run, separator, run`` of ``run_len`` tokens drawn uniformly from ``token_ids``, as
    (tokens, loss mask) pairs with the second run's tokens the targets."""
    ids = np.asarray(sorted(set(int(t) for t in token_ids)), np.int32)
    if len(ids) < 2:
        raise ValueError(f"copying warm-up needs at least 2 distinct token ids, got {len(ids)}")
    if run_len < 1:
        raise ValueError(f"copying warm-up run_len must be >= 1, got {run_len}")
    mask = np.asarray([0] * (run_len + 1) + [1] * run_len, np.int32)
    out = []
    for _ in range(n):
        run = rng.choice(ids, run_len)
        out.append((np.concatenate([run, [separator], run]).astype(np.int32), mask))
    return out


def used_token_ids(sequences: Sequence[tuple[np.ndarray, np.ndarray]], exclude: Sequence[int] = ()) -> list[int]:
    """The distinct token ids of ``sequences`` (tokens, mask) minus ``exclude``: the vocabulary the copying
    runs draw from, so the circuit forms on the embeddings the policy's own text uses."""
    used = set()
    for tokens, _ in sequences:
        used.update(int(t) for t in np.unique(tokens))
    return sorted(used - set(int(t) for t in exclude))
