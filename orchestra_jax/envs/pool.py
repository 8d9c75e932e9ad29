"""A pool of synthetic model profiles for the QA setting, and the descriptions generated from them.

A ``Profile`` is a simulated LLM: a size class (base skill and how fast it falls with difficulty), strong
and weak task domains, list prices ($ per 1M tokens in and out), decode speed, a latency tail and whether
it is served locally. ``make_pool(seed)`` builds the pool deterministically: profiles with the skill mixes
in ``TRAIN_MIXES`` are used in train/val/test, those with ``HELDOUT_MIXES`` (strength combinations never
seen in training, not renamed copies) only in split ``unseen_tools``.

``describe(profile, price_scale, style)`` is the only thing a policy learns about an alias; it states the
size, strengths, weaknesses, this episode's prices and the speed. ``parse_description`` reads it back (the
scripted routers use it; the tests check it inverts ``describe``). The true skill carries a per-profile
jitter the description does not show.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

DOMAINS = ("math", "code", "science", "factual")
# size class -> (label, base skill logit, slope per difficulty unit, list $/1M out, tokens/s, base latency s)
SIZES = (
    ("3B", 0.0, 1.25, 0.10, 220.0, 0.4),
    ("8B", 0.8, 1.15, 0.20, 160.0, 0.6),
    ("14B", 1.4, 1.05, 0.40, 120.0, 0.8),
    ("32B", 2.0, 0.95, 0.90, 90.0, 1.2),
    ("70B", 2.6, 0.85, 2.50, 65.0, 2.0),
    ("frontier", 3.4, 0.75, 10.0, 50.0, 3.0),
)
STRONG_BONUS = 1.6      # logit added in a domain the description calls strong
WEAK_PENALTY = 1.6      # logit removed in a domain the description calls weak
SKILL_JITTER = 0.3      # per profile and domain, never described
# (strong domains, weak domains); every size class gets each mix
TRAIN_MIXES = (
    ((), ()),
    (("math",), ("factual",)),
    (("code",), ("science",)),
    (("math", "code"), ("factual",)),
    (("factual",), ("math",)),
    (("science", "factual"), ("code",)),
)
HELDOUT_MIXES = (
    (("math", "factual"), ("code",)),
    (("code", "science"), ("math",)),
)
TOOLS = ("search", "enhance_reasoning", "answer")
TOKENS_OUT = {"search": 600.0, "enhance_reasoning": 2800.0, "answer": 1400.0}


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str                       # hidden identity (never shown to the policy)
    size: str
    strong: tuple[str, ...]
    weak: tuple[str, ...]
    skill: tuple[float, ...]        # true logit per DOMAINS entry at difficulty 0
    slope: float
    price_in: float                 # list $ per 1M input tokens
    price_out: float                # list $ per 1M output tokens
    tokens_per_s: float
    latency_base_s: float
    latency_sigma: float            # log-normal tail of the latency
    verbosity: float                # multiplies TOKENS_OUT
    local: bool
    heldout: bool

    def skill_in(self, domain: str) -> float:
        return self.skill[DOMAINS.index(domain)]

    def mean_tokens_out(self, tool: str) -> float:
        return TOKENS_OUT[tool] * self.verbosity


def size_index(size: str) -> int:
    for i, s in enumerate(SIZES):
        if s[0] == size:
            return i
    raise ValueError(f"unknown size class {size!r}; sizes are {[s[0] for s in SIZES]}")


def _profile(rng: np.random.Generator, idx: int, size_i: int, strong, weak, heldout: bool) -> Profile:
    label, base, slope, out_price, tps, lat = SIZES[size_i]
    skill = tuple(float(round(base + STRONG_BONUS * (d in strong) - WEAK_PENALTY * (d in weak)
                              + SKILL_JITTER * rng.standard_normal(), 3)) for d in DOMAINS)
    local = bool(size_i <= 3 and rng.random() < 0.5)   # open-weight sizes, served on our own hardware
    price_out = out_price * float(np.exp(0.25 * rng.standard_normal())) * (0.6 if local else 1.0)
    ratio = float(rng.uniform(3.0, 8.0))
    return Profile(
        name=f"profile-{idx:02d}", size=label, strong=tuple(strong), weak=tuple(weak), skill=skill,
        slope=float(slope), price_in=float(round(price_out / ratio, 4)), price_out=float(round(price_out, 4)),
        tokens_per_s=float(round(tps * float(np.exp(0.15 * rng.standard_normal())), 1)),
        latency_base_s=float(lat) * (0.6 if local else 1.0), latency_sigma=float(rng.choice([0.25, 0.8])),
        verbosity=float(round(rng.uniform(0.8, 1.25), 3)), local=local, heldout=heldout)


def make_pool(seed: int = 0) -> tuple[Profile, ...]:
    """Every size class x every mix: 36 training profiles and 12 held-out ones (deterministic in seed)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 4242]))
    out = []
    for heldout, mixes in ((False, TRAIN_MIXES), (True, HELDOUT_MIXES)):
        for strong, weak in mixes:
            for s in range(len(SIZES)):
                out.append(_profile(rng, len(out), s, strong, weak, heldout))
    return tuple(out)


# ---------------------------------------------------------------- descriptions

SPEED_WORDS = ((130.0, "fast"), (75.0, "medium speed"), (0.0, "slow"))


def speed_word(tokens_per_s: float) -> str:
    for lo, w in SPEED_WORDS:
        if tokens_per_s >= lo:
            return w
    return "slow"


def price_text(x: float) -> str:
    """Short price string: 10 -> '10', 1.25 -> '1.2', 0.25 -> '0.25', 0.0123 -> '0.012'."""
    if x >= 10:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.1f}".rstrip("0").rstrip(".")
    return f"{x:.2f}".rstrip("0").rstrip(".") if x >= 0.1 else f"{x:.3f}".rstrip("0").rstrip(".")


def describe(p: Profile, price_scale: float, style: str = "compact") -> str:
    """The text a policy sees for one alias (without the alias): size, strengths, prices, speed."""
    return fact_separator(style).join(describe_facts(p, price_scale, style))


def fact_separator(style: str) -> str:
    """What ``describe`` puts between the facts of a description style."""
    return "; " if style == "full" else ", "


def describe_facts(p: Profile, price_scale: float, style: str = "compact") -> list[str]:
    """``describe``'s facts, one string each (menu_layout name_after_facts writes the name after each)."""
    size = "frontier-size" if p.size == "frontier" else p.size
    pin, pout = price_text(p.price_in * price_scale), price_text(p.price_out * price_scale)
    if style == "compact":
        parts = [size + (" local" if p.local else "")]
        if p.strong:
            parts.append("good " + "+".join(p.strong))
        if p.weak:
            parts.append("bad " + "+".join(p.weak))
        parts.append(f"${pin}/${pout}")
        parts.append(speed_word(p.tokens_per_s))
        return parts
    parts = [f"a {size} model" + (", served locally" if p.local else "")]
    parts.append("strong at " + " and ".join(p.strong) if p.strong else "an all-rounder")
    if p.weak:
        parts.append("weak at " + " and ".join(p.weak))
    parts.append(f"${pin} in / ${pout} out per 1M tokens")
    parts.append(speed_word(p.tokens_per_s) + (", latency spiky" if p.latency_sigma > 0.5 else ", latency steady"))
    return parts


@dataclasses.dataclass(frozen=True)
class Described:
    """What a description says about a model (``parse_description``)."""

    size: str
    local: bool
    strong: tuple[str, ...]
    weak: tuple[str, ...]
    price_in: float
    price_out: float
    speed: str


_SIZE_RE = re.compile(r"\b(3B|8B|14B|32B|70B|frontier)\b")
_PRICE_C = re.compile(r"\$([\d.]+)/\$([\d.]+)")
_PRICE_F = re.compile(r"\$([\d.]+) in / \$([\d.]+) out")
_DOMS = "|".join(DOMAINS)
_GOOD = re.compile(rf"(?:good|strong at) ((?:{_DOMS})(?:(?:\+| and )(?:{_DOMS}))*)")
_BAD = re.compile(rf"(?:bad|weak at) ((?:{_DOMS})(?:(?:\+| and )(?:{_DOMS}))*)")


def parse_description(text: str) -> Described | None:
    """Inverse of ``describe`` for both styles; None when the text is not a model description."""
    size = _SIZE_RE.search(text)
    price = _PRICE_C.search(text) or _PRICE_F.search(text)
    if not size or not price:
        return None
    g, b = _GOOD.search(text), _BAD.search(text)
    split = lambda m: tuple(re.split(r"\+| and ", m.group(1))) if m else ()  # noqa: E731
    speed = next((w for _, w in SPEED_WORDS if w in text), "medium speed")
    return Described(size=size.group(1), local="local" in text, strong=split(g), weak=split(b),
                     price_in=float(price.group(1)), price_out=float(price.group(2)), speed=speed)
