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


# ---------------------------------------------------------------- stated continuous preferences (QA)

# Bucket edges of a continuous weight and the value a reader of the text should assume for each bucket.
BUCKETS = ("none", "low", "mid", "high")
BUCKET_EDGES = (0.05, 0.35, 0.7)
BUCKET_VALUES = {"none": 0.0, "low": 0.2, "mid": 0.52, "high": 0.85}
PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "cost": {
        "none": ("Cost is no concern.", "Spend what it takes.", "Ignore the price.", "Money is no object."),
        "low": ("Cost matters a little.", "Mind the bill a bit.", "Be slightly thrifty.", "Some savings are welcome."),
        "mid": ("Keep the cost moderate.", "Watch the spending.", "Be cost-aware.", "Balance price and quality."),
        "high": ("Keep the cost very low.", "Spend as little as possible.", "Be frugal.", "Cheap is key."),
    },
    "latency": {
        "none": ("Time is no concern.", "No rush.", "Take your time.", "Speed does not matter."),
        "low": ("A bit of speed helps.", "Do not dawdle.", "Slightly prefer quick.", "Some haste is welcome."),
        "mid": ("Be reasonably quick.", "Mind the wait.", "Keep it brisk.", "Balance speed and quality."),
        "high": ("Answer very fast.", "Speed is key.", "Minimise the wait.", "Be as quick as possible."),
    },
}
TOOL_PHRASES = {
    "local": ("Prefer local models.", "Use models served locally.", "Favour local models."),
    "prefer": ("Prefer {alias}.", "Use {alias} if you can.", "Favour {alias}."),
    "avoid": ("Avoid {alias}.", "Do not use {alias}.", "Stay away from {alias}."),
}
TOOL_KINDS = tuple(TOOL_PHRASES)


def bucket_of(w: float) -> str:
    for name, edge in zip(BUCKETS, BUCKET_EDGES):
        if w <= edge:
            return name
    return BUCKETS[-1]


@dataclasses.dataclass(frozen=True)
class StatedPreference:
    """A continuous preference over [slots..., outcome, cost, latency] and the instruction stating it.

    Tool terms act on the call-count features of menu slots: "local" puts ``tool_weight`` on every slot
    served locally, "prefer" on the named alias's slot, "avoid" on every *other* slot (the reward has no
    negative weights, so avoiding X means preferring the rest)."""

    vector: tuple[float, ...]
    text: str
    tool_kind: str = ""          # "" | local | prefer | avoid
    tool_slot: int = -1          # the named slot (prefer / avoid), else -1


def sample_stated_preference(rng: np.random.Generator, aliases: Sequence[str], local: Sequence[bool],
                             tool_prob: float = 0.4, zero_prob: float = 0.25) -> StatedPreference:
    """Outcome weight ~ U(0.7, 1) (not stated); cost and latency weights 0 with ``zero_prob`` else U(0, 1),
    each stated by one of 4 phrasings of its bucket; with ``tool_prob`` a tool preference of a random kind
    and weight U(0.3, 1). 16 x 16 x (1 + 9) phrasings."""
    k = len(aliases)
    if k == 0 or len(local) != k:
        raise ValueError(f"sample_stated_preference: {k} aliases and {len(local)} local flags")
    outcome = float(round(rng.uniform(0.7, 1.0), 3))
    weights, parts = {}, []
    for name in ("cost", "latency"):
        w = 0.0 if rng.random() < zero_prob else float(round(rng.uniform(0.0, 1.0), 3))
        weights[name] = w
        variants = PHRASES[name][bucket_of(w)]
        parts.append(variants[int(rng.integers(len(variants)))])
    slots = [0.0] * k
    kind, slot = "", -1
    if rng.random() < tool_prob:
        kind = TOOL_KINDS[int(rng.integers(len(TOOL_KINDS)))]
        if kind == "local" and not any(local):
            kind = "prefer"
        tw = float(round(rng.uniform(0.3, 1.0), 3))
        variants = TOOL_PHRASES[kind]
        phrase = variants[int(rng.integers(len(variants)))]
        if kind == "local":
            slots = [tw if lo else 0.0 for lo in local]
        else:
            slot = int(rng.integers(k))
            slots = ([tw if j == slot else 0.0 for j in range(k)] if kind == "prefer"
                     else [0.0 if j == slot else tw for j in range(k)])
            phrase = phrase.format(alias=aliases[slot])
        parts.append(phrase)
    if rng.random() < 0.5:
        parts[0], parts[1] = parts[1], parts[0]
    return StatedPreference(tuple(slots) + (outcome, weights["cost"], weights["latency"]), " ".join(parts),
                            kind, slot)


_PHRASE_INDEX = {p: (field, b) for field, d in PHRASES.items() for b, ps in d.items() for p in ps}


def parse_stated_preference(text: str, aliases: Sequence[str], local: Sequence[bool]) -> tuple[float, ...]:
    """What a reader of the instruction should assume P is: bucket values for cost and latency (0 when not
    stated), outcome 0.85 (the mean), tool weight 0.65 (the mean) on the slots the tool phrase names."""
    w = {"cost": 0.0, "latency": 0.0}
    for phrase, (field, b) in _PHRASE_INDEX.items():
        if phrase in text:
            w[field] = BUCKET_VALUES[b]
    k = len(aliases)
    slots = [0.0] * k
    tw = 0.65
    if any(p in text for p in TOOL_PHRASES["local"]):
        slots = [tw if lo else 0.0 for lo in local]
    else:
        for kind in ("prefer", "avoid"):
            for j, a in enumerate(aliases):
                if any(p.format(alias=a) in text for p in TOOL_PHRASES[kind]):
                    slots = ([tw if i == j else 0.0 for i in range(k)] if kind == "prefer"
                             else [0.0 if i == j else tw for i in range(k)])
    return tuple(slots) + (0.85, w["cost"], w["latency"])
