"""Several seeds of one setting -> mean and spread of every scalar metric."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def aggregate_values(values: Sequence[float]) -> dict[str, float]:
    """mean, std (ddof=1; 0 for one value), min, max, n of a list of per-seed values."""
    v = np.asarray([float(x) for x in values], np.float64)
    if v.size == 0:
        raise ValueError("aggregate_values: no values")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def aggregate_policies(policies_per_seed: Sequence[dict]) -> dict[str, dict[str, dict]]:
    """[{policy: {metric: value}} per seed] -> {policy: {metric: aggregate_values}} over the scalar metrics
    that every seed has for that policy (a policy missing from a seed is an error naming it)."""
    if not policies_per_seed:
        raise ValueError("aggregate_policies: no seeds")
    names = list(policies_per_seed[0])
    out = {}
    for name in names:
        per = []
        for k, pols in enumerate(policies_per_seed):
            if name not in pols:
                raise ValueError(f"aggregate_policies: seed {k} has no policy {name!r}")
            per.append(pols[name])
        keys = [k for k, v in per[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and all(isinstance(p.get(k), (int, float)) for p in per)]
        out[name] = {k: aggregate_values([p[k] for p in per]) for k in keys}
    return out
