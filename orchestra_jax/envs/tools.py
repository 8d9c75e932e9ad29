"""Tool and model-tool specs: prices, token counts, latency model, skills; loaded from YAML.

A *model* (``ModelSpec``) is a simulated LLM with $/1M-token prices in and out, a skill (success logit)
per task domain, a mean number of tokens it writes per tool call and a latency model
``base_s + tokens_out / tokens_per_s`` times a log-normal tail. An *alias* (``AliasSpec``) is what the
policy calls: ``tool(model=alias)``, e.g. ``answer(model="answer-math-2")`` runs the ``answer`` tool with
the Math-7B-like model. The roster (models + alias menus per setting + basic-tool fees) lives in
``conf/env/roster/*.yaml`` so a researcher adds a model or an alias without code.

All sampling functions take an explicit ``np.random.Generator``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROSTER = "conf/env/roster/paper.yaml"
DEFAULT_SKILL_KEY = "default"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A simulated model-tool. Prices in $ per 1M tokens; skills are logits (see ``success_logit``)."""

    name: str
    display: str
    tag: str
    price_in: float
    price_out: float
    skill: Mapping[str, float]
    slope: float
    tokens_out: Mapping[str, float]
    tokens_sigma: float
    latency_base_s: float
    tokens_per_s: float
    latency_sigma: float

    def skill_in(self, domain: str) -> float:
        """Skill logit in ``domain`` (falls back to the ``default`` entry)."""
        if domain in self.skill:
            return float(self.skill[domain])
        if DEFAULT_SKILL_KEY in self.skill:
            return float(self.skill[DEFAULT_SKILL_KEY])
        raise ValueError(f"model {self.name!r} has no skill for domain {domain!r} and no 'default' skill")

    def mean_tokens_out(self, tool: str) -> float:
        if tool in self.tokens_out:
            return float(self.tokens_out[tool])
        return float(self.tokens_out.get(DEFAULT_SKILL_KEY, 500.0))


@dataclasses.dataclass(frozen=True)
class AliasSpec:
    """What the policy calls: ``tool(model=alias)`` runs ``tool`` with model ``model``."""

    alias: str
    tool: str
    model: str


@dataclasses.dataclass(frozen=True)
class BasicFees:
    """Fees and latencies of the non-model tools (paper's code: sandbox $/s, search $/call)."""

    sandbox_usd_per_s: float = 8.3e-6
    search_usd_per_call: float = 0.0
    sandbox_latency_s: float = 0.5
    search_latency_s: float = 0.4


@dataclasses.dataclass(frozen=True)
class Roster:
    """Models, alias menus per setting (ordered: the order of the call-count features), basic fees."""

    models: Mapping[str, ModelSpec]
    aliases: Mapping[str, tuple[AliasSpec, ...]]
    orchestrator: str
    basic_fees: BasicFees

    def menu(self, setting: str) -> tuple[AliasSpec, ...]:
        """The ordered alias menu of a setting ("qa", "functions")."""
        if setting not in self.aliases:
            raise ValueError(f"roster has no alias menu for setting {setting!r}; has {sorted(self.aliases)}")
        return self.aliases[setting]

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise ValueError(f"unknown model {name!r}; roster has {sorted(self.models)}")
        return self.models[name]

    def alias_model(self, setting: str, alias: str) -> ModelSpec:
        for a in self.menu(setting):
            if a.alias == alias:
                return self.models[a.model]
        raise ValueError(f"unknown alias {alias!r} in setting {setting!r}")

    @property
    def orchestrator_model(self) -> ModelSpec:
        return self.models[self.orchestrator]


_MODEL_FLOATS = ("price_in", "price_out", "slope", "tokens_sigma", "latency_base_s", "tokens_per_s",
                 "latency_sigma")


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _float_map(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{where} must be a non-empty mapping, got {value!r}")
    return {str(k): _float(v, f"{where}.{k}") for k, v in value.items()}


def _parse_model(name: str, d: Any, where: str) -> ModelSpec:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(ModelSpec)} - {"name"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed {sorted(known)}")
    missing = sorted(k for k in ("price_in", "price_out", "skill") if k not in d)
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    vals = {k: _float(d[k], f"{where}.{k}") for k in _MODEL_FLOATS if k in d}
    for k in ("price_in", "price_out", "tokens_sigma", "latency_base_s", "latency_sigma"):
        if k in vals and vals[k] < 0:
            raise ValueError(f"{where}.{k} must be >= 0, got {vals[k]}")
    if vals.get("tokens_per_s", 1.0) <= 0:
        raise ValueError(f"{where}.tokens_per_s must be > 0")
    return ModelSpec(
        name=name,
        display=str(d.get("display", name)),
        tag=str(d.get("tag", "general")),
        price_in=vals["price_in"],
        price_out=vals["price_out"],
        skill=_float_map(d["skill"], f"{where}.skill"),
        slope=vals.get("slope", 1.0),
        tokens_out=_float_map(d.get("tokens_out", {"default": 500.0}), f"{where}.tokens_out"),
        tokens_sigma=vals.get("tokens_sigma", 0.3),
        latency_base_s=vals.get("latency_base_s", 1.0),
        tokens_per_s=vals.get("tokens_per_s", 60.0),
        latency_sigma=vals.get("latency_sigma", 0.5),
    )


def roster_from_dict(d: Any, source: str = "<dict>") -> Roster:
    """Validates and builds a Roster from the YAML structure; errors name ``source`` and the key."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{source}: roster must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - {"models", "aliases", "orchestrator", "basic_fees"})
    if unknown:
        raise ValueError(f"{source}: unknown top-level key(s) {unknown}")
    if not isinstance(d.get("models"), Mapping) or not d["models"]:
        raise ValueError(f"{source}: 'models' must be a non-empty mapping")
    models = {str(n): _parse_model(str(n), m, f"{source}: models.{n}") for n, m in d["models"].items()}
    aliases: dict[str, tuple[AliasSpec, ...]] = {}
    if not isinstance(d.get("aliases"), Mapping) or not d["aliases"]:
        raise ValueError(f"{source}: 'aliases' must be a non-empty mapping of setting -> alias menu")
    seen_alias: set[str] = set()
    for setting, menu in d["aliases"].items():
        if not isinstance(menu, Mapping) or not menu:
            raise ValueError(f"{source}: aliases.{setting} must be a non-empty mapping")
        entries = []
        for alias, spec in menu.items():
            where = f"{source}: aliases.{setting}.{alias}"
            if not isinstance(spec, Mapping) or set(spec) != {"tool", "model"}:
                raise ValueError(f"{where} must be a mapping with exactly 'tool' and 'model'")
            if spec["model"] not in models:
                raise ValueError(f"{where}: unknown model {spec['model']!r}; known {sorted(models)}")
            if alias in seen_alias:
                raise ValueError(f"{where}: alias defined twice")
            seen_alias.add(alias)
            entries.append(AliasSpec(str(alias), str(spec["tool"]), str(spec["model"])))
        aliases[str(setting)] = tuple(entries)
    orch = str(d.get("orchestrator", "orchestrator"))
    if orch not in models:
        raise ValueError(f"{source}: orchestrator model {orch!r} is not in models")
    fees_d = d.get("basic_fees", {}) or {}
    if not isinstance(fees_d, Mapping):
        raise ValueError(f"{source}: basic_fees must be a mapping")
    known = {f.name for f in dataclasses.fields(BasicFees)}
    bad = sorted(set(fees_d) - known)
    if bad:
        raise ValueError(f"{source}: basic_fees: unknown key(s) {bad}; allowed {sorted(known)}")
    fees = BasicFees(**{k: _float(v, f"{source}: basic_fees.{k}") for k, v in fees_d.items()})
    return Roster(models=models, aliases=aliases, orchestrator=orch, basic_fees=fees)


def resolve_path(path: str) -> Path:
    """A config path: absolute, relative to the working directory, or relative to the repository root."""
    p = Path(os.path.expanduser(path))
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


_ROSTER_CACHE: dict[str, Roster] = {}


def load_roster(path: str = "") -> Roster:
    """Loads (and caches) the roster YAML; ``""`` = the paper roster ``conf/env/roster/paper.yaml``."""
    p = resolve_path(path or DEFAULT_ROSTER)
    key = str(p.resolve()) if p.exists() else str(p)
    if key in _ROSTER_CACHE:
        return _ROSTER_CACHE[key]
    if not p.exists():
        raise ValueError(f"roster file not found: {p}")
    try:
        with open(p, encoding="utf-8") as f:
            d = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML ({e})") from None
    roster = roster_from_dict(d, str(p))
    _ROSTER_CACHE[key] = roster
    return roster


# ---------------------------------------------------------------- cost, tokens, latency


def call_cost_usd(model: ModelSpec, tokens_in: float, tokens_out: float, price_scale: float = 1.0) -> float:
    """Dollar cost of one call: tokens x $/1M prices, times the episode's price multiplier."""
    return price_scale * (tokens_in * model.price_in + tokens_out * model.price_out) / 1e6


def sample_tokens_out(model: ModelSpec, tool: str, rng: np.random.Generator) -> int:
    """Tokens the model writes for one call of ``tool``: log-normal around its mean (mean preserved)."""
    mean = model.mean_tokens_out(tool)
    s = model.tokens_sigma
    return max(1, int(round(mean * math.exp(s * rng.standard_normal() - 0.5 * s * s))))


def sample_latency_s(model: ModelSpec, tokens_out: float, rng: np.random.Generator) -> float:
    """Wall-clock seconds of one call: (base + tokens / speed) x log-normal tail (median 1, heavy right tail)."""
    return (model.latency_base_s + tokens_out / model.tokens_per_s) * math.exp(
        model.latency_sigma * rng.standard_normal())


def expected_call_cost_usd(model: ModelSpec, tool: str, tokens_in: float, price_scale: float = 1.0) -> float:
    """Mean $ cost of one call of ``tool`` with ``tokens_in`` context tokens (for stats and descriptions)."""
    return call_cost_usd(model, tokens_in, model.mean_tokens_out(tool), price_scale)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def success_logit(model: ModelSpec, domain: str, difficulty: float, hidden_difficulty: float) -> float:
    """Base success logit of ``model`` on a task: skill - slope * difficulty - hidden difficulty.

    ``difficulty`` is the offset of the task's visible level (e.g. 0 basic, 1.5 standard, 3 expert);
    ``hidden_difficulty`` a per-task offset the policy never sees. Settings add context terms (retrieved
    documents, a code result).
    """
    return model.skill_in(domain) - model.slope * difficulty - hidden_difficulty


def price_text(x: float) -> str:
    """Short price string for descriptions: 10 -> '10', 0.25 -> '0.25', 1.234 -> '1.2'."""
    if x >= 10:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.1f}".rstrip("0").rstrip(".")
    return f"{x:.2f}".rstrip("0").rstrip(".") if x >= 0.01 else f"{x:.3f}"
