"""The expert pool and the simulated expert agent behind ``call_expert(expert)``.

An expert takes the conversation and the database and works on the next unfinished request (or, when
all are done, writes the final reply): it makes the request's reads and its write as tool calls, each
billed by the tokens it reads (its instructions + the conversation + what it has read so far) and writes
(``tokens_per_step``), at its prices. With probability 1 - sigmoid(skill) it makes one mistake real agents
make: the wrong entity (another train / order of the same user), a wrong argument (cabin, quantity,
value, amount), a skipped step (it reads, does not write, and says it is done), or a premature reply
(it answers the user now, ending the conversation). On read-only requests a wrong entity means it read
another row, so the fact it later reports is wrong.

SEAM: ``load_expert_pool`` reads ``experts.yaml``; the shared model pool (envs helper) will replace it by
a view (pool model + per-request-kind skills) with the same ``ExpertProfile`` interface.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from orchestra_jax.envs.tools import ModelSpec, call_cost_usd, resolve_path, sample_latency_s, sigmoid

DEFAULT_POOL = Path(__file__).resolve().parent / "experts.yaml"
MISTAKES = ("wrong_entity", "wrong_argument", "skipped_step", "premature_reply")


@dataclasses.dataclass(frozen=True)
class ExpertProfile:
    alias: str
    model: ModelSpec                       # prices, domain skills, slope, latency (tools.ModelSpec)
    kind_skill: Mapping[str, float]
    tokens_per_step: float

    def p_success(self, domain: str, kind: str, difficulty: float, hidden: float) -> float:
        return sigmoid(self.model.skill_in(domain) + float(self.kind_skill.get(kind, 0.0))
                       - self.model.slope * difficulty - hidden)

    def cost_usd(self, tokens_in: int, tokens_out: int, price_scale: float) -> float:
        return call_cost_usd(self.model, tokens_in, tokens_out, price_scale)

    def latency_s(self, tokens_out: int, rng: np.random.Generator) -> float:
        return sample_latency_s(self.model, tokens_out, rng)


@dataclasses.dataclass(frozen=True)
class ExpertPool:
    experts: tuple[ExpertProfile, ...]
    mistakes: Mapping[str, float]
    instruction_tokens: int

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(e.alias for e in self.experts)

    def get(self, alias: str) -> ExpertProfile:
        for e in self.experts:
            if e.alias == alias:
                return e
        raise ValueError(f"unknown expert {alias!r}; pool has {list(self.aliases)}")


def _num(v: Any, where: str, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo:
        raise ValueError(f"{where} must be a number >= {lo}, got {v!r}")
    return float(v)


def pool_from_dict(d: Any, source: str = "<dict>") -> ExpertPool:
    """Validated pool; errors name the source and the key."""
    if not isinstance(d, Mapping) or set(d) - {"experts", "mistakes", "instruction_tokens"}:
        raise ValueError(f"{source}: expert pool must be a mapping with experts, mistakes, instruction_tokens")
    exps = d.get("experts")
    if not isinstance(exps, Mapping) or not exps:
        raise ValueError(f"{source}: experts must be a non-empty mapping alias -> profile")
    keys = {"display", "tag", "price_in", "price_out", "tokens_per_step", "tokens_per_s", "latency_base_s",
            "latency_sigma", "slope", "skill", "kind_skill"}
    out = []
    for alias, e in exps.items():
        where = f"{source}: experts.{alias}"
        if not isinstance(e, Mapping):
            raise ValueError(f"{where} must be a mapping")
        unknown = sorted(set(e) - keys)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed {sorted(keys)}")
        skill = e.get("skill")
        if not isinstance(skill, Mapping) or "default" not in skill:
            raise ValueError(f"{where}.skill must be a mapping with a 'default' entry")
        kind_skill = e.get("kind_skill", {}) or {}
        if not isinstance(kind_skill, Mapping):
            raise ValueError(f"{where}.kind_skill must be a mapping request kind -> logit")
        model = ModelSpec(
            name=str(alias), display=str(e.get("display", alias)), tag=str(e.get("tag", "general")),
            price_in=_num(e.get("price_in"), f"{where}.price_in"), price_out=_num(e.get("price_out"), f"{where}.price_out"),
            skill={str(k): _num(v, f"{where}.skill.{k}", -20) for k, v in skill.items()},
            slope=_num(e.get("slope", 1.0), f"{where}.slope"), tokens_out={"default": 1.0}, tokens_sigma=0.3,
            latency_base_s=_num(e.get("latency_base_s", 1.0), f"{where}.latency_base_s"),
            tokens_per_s=_num(e.get("tokens_per_s", 60.0), f"{where}.tokens_per_s", 1e-6),
            latency_sigma=_num(e.get("latency_sigma", 0.4), f"{where}.latency_sigma"))
        out.append(ExpertProfile(str(alias), model, {str(k): _num(v, f"{where}.kind_skill.{k}", -20)
                                                     for k, v in kind_skill.items()},
                                 _num(e.get("tokens_per_step", 200), f"{where}.tokens_per_step", 1)))
    mistakes = d.get("mistakes", {m: 1.0 for m in MISTAKES})
    if not isinstance(mistakes, Mapping) or set(mistakes) != set(MISTAKES):
        raise ValueError(f"{source}: mistakes must give a weight to each of {list(MISTAKES)}")
    return ExpertPool(tuple(out), {m: _num(mistakes[m], f"{source}: mistakes.{m}") for m in MISTAKES},
                      int(_num(d.get("instruction_tokens", 400), f"{source}: instruction_tokens")))


_CACHE: dict[str, ExpertPool] = {}


def load_expert_pool(path: str = "") -> ExpertPool:
    p = resolve_path(path) if path else DEFAULT_POOL
    key = str(p)
    if key not in _CACHE:
        if not p.exists():
            raise ValueError(f"expert pool file not found: {p}")
        _CACHE[key] = pool_from_dict(yaml.safe_load(p.read_text(encoding="utf-8")), str(p))
    return _CACHE[key]


def draw_mistake(pool: ExpertPool, rng: np.random.Generator, write: bool) -> str:
    """Which mistake a failing expert makes (reads: no wrong argument)."""
    names = [m for m in MISTAKES if write or m != "wrong_argument"]
    w = np.array([pool.mistakes[m] for m in names])
    return names[int(rng.choice(len(names), p=w / w.sum()))]
