"""User preferences: a vector P over [tool aliases..., outcome, cost, latency] and its instruction text.

The reward (paper Eq. 2, ``rl.rewards.paper_reward``) is ``M_norm . P`` for a solved episode, with M the
feature vector [calls per alias..., outcome, -cost, -latency] normalised within a rollout group. Here we
build P per task (fixed weights, or sampled from templates with a matching natural-language instruction
that is appended to the task) and score adherence for evaluation (``preference_score``).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PreferenceTemplate:
    """One kind of preference: weights on outcome / cost / latency, an optional preferred alias, text."""

    name: str
    outcome: float
    cost: float
    latency: float
    text: str                     # may contain "{alias}"
    wants_alias: bool = False     # P[alias] = 1 for one randomly chosen available alias


TEMPLATES: tuple[PreferenceTemplate, ...] = (
    PreferenceTemplate("accuracy", 1.0, 0.0, 0.0, "Only accuracy matters."),
    PreferenceTemplate("cheap", 1.0, 1.0, 0.0, "Keep the cost low."),
    PreferenceTemplate("fast", 1.0, 0.0, 1.0, "Answer fast."),
    PreferenceTemplate("balanced", 1.0, 0.5, 0.5, "Keep cost and time low."),
    PreferenceTemplate("tool", 1.0, 0.3, 0.0, "Prefer {alias}.", wants_alias=True),
)


def fixed_preference(num_aliases: int, outcome: float, cost: float, latency: float) -> tuple[float, ...]:
    """P with zero weight on every alias and the given outcome / cost / latency weights."""
    return (0.0,) * num_aliases + (float(outcome), float(cost), float(latency))


def sample_preference(rng: np.random.Generator, tool_aliases: Sequence[str], available: Sequence[str],
                      templates: Sequence[PreferenceTemplate] = TEMPLATES) -> tuple[tuple[float, ...], str]:
    """Draws a template (uniformly) and returns (P, instruction). A tool preference names an available alias."""
    t = templates[int(rng.integers(len(templates)))]
    p = [0.0] * len(tool_aliases)
    text = t.text
    if t.wants_alias:
        if not available:
            raise ValueError("sample_preference: a tool preference needs at least one available alias")
        alias = available[int(rng.integers(len(available)))]
        p[list(tool_aliases).index(alias)] = 1.0
        text = text.format(alias=alias)
    return tuple(p) + (t.outcome, t.cost, t.latency), text


@dataclasses.dataclass(frozen=True)
class ScoreScales:
    """Fixed global scales that map raw features to [0, 1] for ``preference_score``."""

    calls: float = 1.0            # calls of an alias at which its term saturates
    cost_usd: float = 0.05        # cost at (or above) which the cost term is 0
    latency_s: float = 120.0      # latency at (or above) which the latency term is 0


def preference_score(features: np.ndarray, solved: np.ndarray, preference: np.ndarray,
                     scales: ScoreScales = ScoreScales()) -> float:
    """Preference adherence in [0, 1], in the spirit of the paper's App. L (Eq. 5-6).

    Per episode i with P_i over [aliases..., outcome, cost, latency] and raw features f_i:
        phi_i = [min(calls_a / scales.calls, 1) for each alias a,  solved_i,
                 1 - min(cost_i / scales.cost_usd, 1),  1 - min(latency_i / scales.latency_s, 1)]
        s_i   = solved_i * (P_i . phi_i) / sum(P_i)        (0 when sum(P_i) = 0)
    and the score is mean_i s_i. Unlike the training reward it uses fixed scales (not group min-max), so
    scores are comparable across policies and runs. features [N, F], solved [N], preference [N, F].
    """
    f = np.asarray(features, np.float64)
    p = np.asarray(preference, np.float64)
    s = np.asarray(solved, bool)
    if f.ndim != 2 or p.shape != f.shape or s.shape != (f.shape[0],):
        raise ValueError(f"preference_score: features {f.shape}, preference {p.shape}, solved {s.shape}: "
                         "expected [N, F], [N, F], [N]")
    if f.shape[0] == 0:
        raise ValueError("preference_score: no episodes")
    phi = np.concatenate([
        np.minimum(f[:, :-3] / scales.calls, 1.0),
        s[:, None].astype(np.float64),
        1.0 - np.minimum(f[:, -2:-1] / scales.cost_usd, 1.0),
        1.0 - np.minimum(f[:, -1:] / scales.latency_s, 1.0),
    ], axis=1)
    total = p.sum(1)
    per = np.where(total > 0, (p * phi).sum(1) / np.maximum(total, 1e-12), 0.0) * s
    return float(per.mean())
