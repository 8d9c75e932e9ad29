"""Menu pieces shared by the settings: per-episode aliases, price multipliers, budget texts.

- ``alias_names(rng, n)``: n distinct pronounceable aliases ("kelo-7"), fresh every episode, so an alias
  says nothing about the model behind it;
- ``sample_price_scales(rng, n, split, train_range, unseen_ranges)``: one log-uniform multiplier per
  model; split ``unseen_prices`` draws from ranges outside the training range;
- ``pick_subset(rng, n_pool, k)``: k distinct pool indices;
- ``budget_text(reason, budget)``: the observation that ends a runaway episode.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from orchestra_jax.envs.budget import Budget

_SYL = ("ka", "lo", "mi", "ra", "ven", "tor", "sel", "dun", "ar", "bel", "cor", "fin", "gal", "hor", "is",
        "jun", "lem", "nor", "pas", "quin", "ros", "tal", "ul", "vor", "wen", "yar", "zel", "po", "sa", "te")
UNSEEN_PRICES = "unseen_prices"


def alias_names(rng: np.random.Generator, n: int) -> tuple[str, ...]:
    """n distinct aliases of the form <two syllables>-<digit>."""
    out: list[str] = []
    while len(out) < n:
        a = "".join(_SYL[int(i)] for i in rng.integers(len(_SYL), size=2)) + f"-{int(rng.integers(1, 10))}"
        if a not in out:
            out.append(a)
    return tuple(out)


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_price_scales(rng: np.random.Generator, n: int, split: str, train_range: Sequence[float],
                        unseen_ranges: Sequence[float], randomize: bool = True) -> tuple[float, ...]:
    """One multiplier per model (rounded to 3 digits). ``unseen_ranges`` = (lo1, hi1, lo2, hi2): split
    ``unseen_prices`` picks one of the two ranges per model, 50/50; other splits use ``train_range`` (or
    1.0 everywhere when ``randomize`` is off)."""
    if split == UNSEEN_PRICES:
        lo1, hi1, lo2, hi2 = unseen_ranges
        return tuple(round(log_uniform(rng, *((lo1, hi1) if rng.random() < 0.5 else (lo2, hi2))), 3)
                     for _ in range(n))
    if not randomize:
        return (1.0,) * n
    lo, hi = train_range
    return tuple(round(log_uniform(rng, lo, hi), 3) for _ in range(n))


def pick_subset(rng: np.random.Generator, n_pool: int, k: int) -> tuple[int, ...]:
    if not 0 < k <= n_pool:
        raise ValueError(f"cannot pick {k} of {n_pool} models")
    return tuple(int(i) for i in rng.choice(n_pool, size=k, replace=False))


def budget_text(reason: str, budget: Budget, max_usd: float | None = None) -> str:
    """'Budget exceeded (<what>): episode ended.' for reason max_usd | max_tokens | max_turns; ``max_usd``
    overrides the budget's dollars (a per-episode budget)."""
    what = {"max_usd": f"${budget.max_usd if max_usd is None else max_usd:g}", "max_tokens": f"{budget.max_tokens} tokens",
            "max_turns": f"{budget.max_turns} turns"}
    if reason not in what:
        raise ValueError(f"budget_text: unknown reason {reason!r}")
    return f"Budget exceeded ({what[reason]}): episode ended."
