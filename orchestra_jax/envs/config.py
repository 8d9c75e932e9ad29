"""Environment configs (frozen dataclasses, OmegaConf-structured compatible); YAML in conf/env/."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

try:  # the function-calling setting's config lives with its env; functions.py must not import this module
    from orchestra_jax.envs.functions import FunctionsConfig
except ModuleNotFoundError as e:  # pragma: no cover - only before functions.py exists
    if e.name != "orchestra_jax.envs.functions":
        raise

    @dataclasses.dataclass(frozen=True)
    class FunctionsConfig:  # type: ignore[no-redef]
        """Placeholder until envs/functions.py provides the real one."""

SETTINGS = ("qa", "functions")
DESCRIPTION_STYLES = ("compact", "full")
PREFERENCE_MODES = ("fixed", "random")


@dataclasses.dataclass(frozen=True)
class QAConfig:
    """QA setting (HLE/FRAMES-like): task mix, difficulty and how context changes P(correct)."""

    domains: tuple[str, ...] = ("math", "science", "factual", "code")
    domain_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    levels: tuple[str, ...] = ("basic", "standard", "expert")   # difficulty cue words shown in the problem
    level_weights: tuple[float, ...] = (0.4, 0.35, 0.25)   # task mix over levels
    level_offsets: tuple[float, ...] = (0.0, 1.5, 3.0)     # difficulty of each level (x model slope, logits)
    hidden_difficulty_std: float = 0.5      # per-task logit offset the policy never sees
    n_distractors: int = 3                  # distractor documents in each task's pool
    search_domains: tuple[str, ...] = ("factual",)          # domains whose answer needs retrieved documents
    code_domains: tuple[str, ...] = ("math", "code")        # domains where a code result helps
    missing_doc_penalty: float = 4.0        # answer logit penalty x fraction of needed documents missing
    doc_bonus: float = 1.0                  # answer logit bonus when every needed document is in context
    expert_hops: int = 2                    # documents an expert-level search-domain task needs (else 1)
    retrieval_bonus: float = 1.5            # added to the search model's logit for finding the next document
    code_bonus: float = 2.5                 # answer logit bonus with a correct code result in context
    wrong_code_penalty: float = 0.3         # answer logit penalty with a wrong code result in context
    prompt_tokens: int = 300                # tool-model input tokens: problem + instructions
    doc_tokens: int = 250                   # tool-model input tokens per retrieved document
    code_tokens: int = 150                  # tool-model input tokens per code result


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Which setting, budgets, tool-menu randomisation, descriptions and preferences."""

    setting: str = "qa"                     # "qa" | "functions"
    roster_path: str = ""                   # model/alias YAML; "" = conf/env/roster/paper.yaml
    max_turns: int = 6                      # per-episode budget: turns (a runaway episode ends, reward 0)
    max_tokens: int = 60_000                # per-episode budget: orchestrator + tool tokens
    max_usd: float = 0.25                   # per-episode budget: dollars
    randomize_tools: bool = True            # per-task random subset of the alias menu
    keep_prob: float = 0.7                  # chance each alias is offered (at least one per tool is kept)
    heldout_aliases: tuple[str, ...] = ("answer-4", "search-3")  # only offered in split "unseen_tools" (when
    #                                         randomize_tools is off, every split but unseen_tools offers all)
    randomize_prices: bool = True           # per-task random price multiplier per model
    price_scale_train: tuple[float, float] = (0.5, 2.0)     # log-uniform range of multipliers (train/val/test)
    price_scale_unseen: tuple[float, float, float, float] = (0.15, 0.4, 2.5, 6.0)  # split "unseen_prices": two ranges
    description_style: str = "compact"      # "compact" (few tokens per alias) | "full"
    system_prompt: bool = True              # include a one-line system message
    preference_mode: str = "fixed"          # "fixed" (weights below) | "random" (templated instructions)
    pref_outcome: float = 1.0               # fixed preference weight of the outcome
    pref_cost: float = 0.5                  # fixed preference weight of (low) cost
    pref_latency: float = 0.0               # fixed preference weight of (low) latency
    qa: QAConfig = dataclasses.field(default_factory=QAConfig)
    functions: FunctionsConfig = dataclasses.field(default_factory=FunctionsConfig)

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ValueError(f"env.setting must be one of {SETTINGS}, got {self.setting!r}")
        if self.description_style not in DESCRIPTION_STYLES:
            raise ValueError(f"env.description_style must be one of {DESCRIPTION_STYLES}, "
                             f"got {self.description_style!r}")
        if self.preference_mode not in PREFERENCE_MODES:
            raise ValueError(f"env.preference_mode must be one of {PREFERENCE_MODES}, got {self.preference_mode!r}")
        if not 0 < self.keep_prob <= 1:
            raise ValueError(f"env.keep_prob must be in (0, 1], got {self.keep_prob}")
        lo, hi = self.price_scale_train
        if not 0 < lo <= hi:
            raise ValueError(f"env.price_scale_train must be 0 < lo <= hi, got {self.price_scale_train}")
        u = self.price_scale_unseen
        if len(u) != 4 or not (0 < u[0] <= u[1] and 0 < u[2] <= u[3]):
            raise ValueError(f"env.price_scale_unseen must be (lo1, hi1, lo2, hi2) with 0 < lo <= hi, got {u}")
        for name in ("pref_outcome", "pref_cost", "pref_latency"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"env.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_turns < 1 or self.max_tokens < 1 or not self.max_usd > 0:
            raise ValueError(f"env budgets must be positive: max_turns={self.max_turns} "
                             f"max_tokens={self.max_tokens} max_usd={self.max_usd}")


def _writable(node) -> None:
    from omegaconf import DictConfig, OmegaConf

    OmegaConf.set_readonly(node, False)
    if isinstance(node, DictConfig):
        for key in node:
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                _writable(child)


def env_config_from_dict(d: Mapping[str, Any] | Any) -> EnvConfig:
    """EnvConfig from a dict / DictConfig, validated by OmegaConf (unknown key or bad type -> error naming it)."""
    if isinstance(d, EnvConfig):
        return d
    from omegaconf import OmegaConf

    base = OmegaConf.structured(EnvConfig)
    _writable(base)  # frozen dataclasses make every node read-only; merging needs writable ones
    merged = OmegaConf.merge(base, OmegaConf.create(d) if not OmegaConf.is_config(d) else d)
    return OmegaConf.to_object(merged)
