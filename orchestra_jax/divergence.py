"""Divergence guards for the training loop, fed each step's metrics.

- Skipped updates (the step's non-finite guard: a NaN/inf loss, gradient or log-prob skips the update and
  reports ``skipped`` = 1) are counted; ``max_consecutive_skips`` in a row raise ``DivergenceError`` so the
  run stops with a message, before it saves, leaving the last good checkpoint as the newest one.
- A KL or entropy value outside the configured bounds (``kl_max``, ``entropy_min``, ``entropy_max``; None =
  off) is an alert: ``alert/<name>`` = 1 in the step's metrics, and a console line.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from typing import Mapping


class DivergenceError(RuntimeError):
    """Too many consecutive skipped (non-finite) updates."""


@dataclasses.dataclass(frozen=True)
class DivergenceBounds:
    max_consecutive_skips: int = 5  # 0 = never stop
    kl_max: float | None = None
    entropy_min: float | None = None
    entropy_max: float | None = None
    kl_key: str = "kl_ref"
    entropy_key: str = "entropy"


class DivergenceMonitor:
    def __init__(self, bounds: DivergenceBounds = DivergenceBounds()):
        if bounds.max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips must be >= 0, got {bounds.max_consecutive_skips}")
        self.bounds = bounds
        self.consecutive_skips = 0
        self.total_skips = 0

    def observe(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """The metrics to add for this step (counters and alerts); raises DivergenceError on N skips in a row."""
        b = self.bounds
        skipped = float(metrics.get("skipped", 0.0)) > 0 or not math.isfinite(float(metrics.get("loss", 0.0)))
        self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0
        self.total_skips += int(skipped)
        out = {"guard/skipped_total": float(self.total_skips), "guard/consecutive_skips": float(self.consecutive_skips)}
        if b.max_consecutive_skips and self.consecutive_skips >= b.max_consecutive_skips:
            raise DivergenceError(
                f"step {step}: {self.consecutive_skips} consecutive updates skipped for non-finite loss, gradients "
                f"or log-probs (limit max_consecutive_skips={b.max_consecutive_skips}); stopping, the last good "
                f"checkpoint is kept")
        checks = (("kl_high", b.kl_key, b.kl_max, 1), ("entropy_low", b.entropy_key, b.entropy_min, -1),
                  ("entropy_high", b.entropy_key, b.entropy_max, 1))
        for name, key, bound, sign in checks:
            if bound is None or key not in metrics:
                continue
            v = float(metrics[key])
            if math.isfinite(v) and sign * (v - bound) > 0:
                out[f"alert/{name}"] = 1.0
                print(f"ALERT step {step}: {key} = {v:.4g} {'>' if sign > 0 else '<'} bound {bound:g}",
                      file=sys.stderr, flush=True)
        return out
