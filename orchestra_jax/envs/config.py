"""Environment configs (frozen dataclasses, OmegaConf-structured compatible); YAML in conf/env/."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

# FunctionsConfig lives here (not in envs/functions/) so that this module imports no env: no cycle.
TRAIN_DOMAINS = ("railway", "restaurant", "finance", "sport", "ecommerce", "medicine", "entertainment")
HELDOUT_DOMAINS = ("education", "travel", "weather")


@dataclasses.dataclass(frozen=True)
class FunctionsConfig:
    """Function-calling setting: domains, databases, task tiers and the simulated experts.

    Budgets, tool subsets, prices and preferences come from the enclosing EnvConfig; `max_turns` here
    overrides env.max_turns when > 0. `heldout_domains` are only drawn in split "heldout_domains"
    (train/val/test/unseen_* draw from the other domains), as in the paper's tau2-bench evaluation.
    """

    domains: tuple[str, ...] = TRAIN_DOMAINS + HELDOUT_DOMAINS
    heldout_domains: tuple[str, ...] = HELDOUT_DOMAINS
    db_seed: int = 0                      # seed of the generated databases (fixed per env)
    db_size: int = 500                    # rows of each main table unless its spec sets a size (400-900)
    min_requests: int = 1                 # fewest user requests in a base task
    max_requests: int = 2                 # most user requests in a base task (evolution may add one)
    level_weights: tuple[float, ...] = (0.4, 0.35, 0.25)  # task mix over evolution depth 0, 1, 2
    level_offsets: tuple[float, ...] = (0.0, 0.6, 1.2)   # expert difficulty (logits x slope) per level
    hidden_difficulty_std: float = 0.5    # per-task logit offset of the experts the policy never sees
    distractor_prob: float = 0.3          # chance a base task carries a distractor sentence
    check_touched: bool = True            # success also needs the set of written entries to match gold
    end_on_wrong_write: bool = True       # a write that leaves the gold path ends the episode, error shown
    experts_path: str = ""                # expert pool YAML; "" = envs/functions/experts.yaml
    expert_read_chars: int = 240          # > 0: an expert reports what it read cut to this many characters
    function_latency_s: float = 0.05      # seconds one domain function call takes
    estimate_orchestrator_tokens: bool = True  # no policy token counts given: charge context/4 in, action/4 out
    max_message_chars: int = 600          # a longer final message fails the required-information check
    max_turns: int = 14                   # > 0: overrides env.max_turns for this setting

    def __post_init__(self):
        if not self.domains:
            raise ValueError("functions.domains must name at least one domain")
        bad = [d for d in self.heldout_domains if d not in self.domains]
        if bad:
            raise ValueError(f"functions.heldout_domains {bad} are not in functions.domains {list(self.domains)}")
        if len(set(self.heldout_domains)) >= len(set(self.domains)):
            raise ValueError("functions.heldout_domains must leave at least one training domain")
        if self.db_size < 20:
            raise ValueError(f"functions.db_size must be >= 20, got {self.db_size}")
        if not 1 <= self.min_requests <= self.max_requests <= 4:
            raise ValueError(f"functions.min_requests/max_requests must satisfy 1 <= min <= max <= 4, got "
                             f"{self.min_requests}/{self.max_requests}")
        if len(self.level_weights) != 3 or min(self.level_weights) < 0 or sum(self.level_weights) <= 0:
            raise ValueError(f"functions.level_weights needs 3 non-negative weights, got {self.level_weights}")
        if len(self.level_offsets) != 3:
            raise ValueError(f"functions.level_offsets needs one offset per level (3), got {self.level_offsets}")
        if not 0 <= self.distractor_prob <= 1:
            raise ValueError(f"functions.distractor_prob must be in [0, 1], got {self.distractor_prob}")
        if self.expert_read_chars < 0:
            raise ValueError(f"functions.expert_read_chars must be >= 0, got {self.expert_read_chars}")
        if self.max_turns < 0:
            raise ValueError(f"functions.max_turns must be >= 0, got {self.max_turns}")


SETTINGS = ("qa", "functions")
DESCRIPTION_STYLES = ("compact", "full")
PREFERENCE_MODES = ("fixed", "random")
MENU_LAYOUTS = ("name_first", "name_last", "name_after_facts")


@dataclasses.dataclass(frozen=True)
class QAConfig:
    """QA setting: task mix, visible and hidden difficulty, the model pool and how context changes success.

    A task's success logit with model m is ``skill_m[domain] - slope_m * (difficulty_step * (steps - 1) +
    hidden) + context``, hidden ~ N(0, hidden_difficulty_std) truncated at +-2.5 std; ``steps`` (1..4) shows
    only through the problem's structure."""

    domains: tuple[str, ...] = ("math", "code", "science", "factual")
    domain_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    step_weights: tuple[float, ...] = (0.3, 0.3, 0.25, 0.15)   # task mix over 1..4 steps
    difficulty_step: float = 0.9            # visible difficulty per extra step (logits x slope)
    hidden_difficulty_std: float = 1.0      # per-task hidden difficulty (logits x slope)
    filler_prob: float = 0.3                # chance of a filler sentence (longer, not harder)
    pool_seed: int = 0                      # seed of the synthetic model pool (envs.pool.make_pool)
    menu_size: int = 4                      # models offered per episode (= the call-count feature slots)
    alias_style: str = "random"             # random: fresh names ("kelo-7") per episode | slot: "model-1".."model-K"
    #   in menu order (the profile and price behind each slot still change per episode); slot names are easy to
    #   copy for a tiny CPU policy, random ones need the policy to copy an arbitrary name from its prompt
    menu_layout: str = "name_first"        # name_first: "model-1: 3B, good math, ..." | name_last: "3B, good math,
    #   ... = model-1" (a causal policy reading the line reaches the name after its facts: the name's position can
    #   gather them, so choosing a model is copying the name whose line matches) | name_after_facts: "model-1: 3B
    #   model-1, good math model-1, ..." (the name right after every fact, so the token after any fact of a line
    #   is its name: choosing a model by a fact is an induction lookup, see experiments/binding_probe.py --layout after)
    retrieval_bonus: float = 0.0            # search: P(find next needed doc) = sigmoid(base + bonus)
    reasoning_bonus: float = -1.0           # enhance_reasoning: P(correct candidate) = sigmoid(base + bonus)
    missing_doc_penalty: float = 4.0        # factual answer logit penalty x fraction of needed docs missing
    doc_bonus: float = 1.0                  # factual answer logit bonus with every needed doc in context
    candidate_bonus: float = 3.0            # answer logit bonus with a correct candidate in context
    wrong_candidate_penalty: float = 1.5    # answer logit penalty with a wrong candidate in context
    no_candidate_penalty: float = 1.5       # math/code answer logit penalty without any computed candidate
    crash_prob: float = 0.4                 # a wrong math/code candidate crashes visibly with this chance
    check_pass_if_right: float = 0.8        # a right candidate's self-check passes with this chance
    check_pass_if_wrong: float = 0.25       # a wrong (not crashed) candidate's self-check passes
    tool_prob: float = 0.5                  # random preferences: chance of a tool preference
    task_budget_usd: tuple[float, ...] = (0.02, 0.3)   # per-task $ budget, log-uniform, stated in the prompt
    #                                         ("Budget: $x."), at least 1.2 x a fair route's cost; () = none
    prompt_tokens: int = 1200               # tool-model input tokens: problem + instructions
    doc_tokens: int = 500                   # tool-model input tokens per retrieved document
    candidate_tokens: int = 300             # tool-model input tokens per candidate in context

    def __post_init__(self):
        if len(self.domain_weights) != len(self.domains):
            raise ValueError(f"env.qa.domain_weights has {len(self.domain_weights)} entries for "
                             f"{len(self.domains)} domains")
        if len(self.step_weights) != 4:
            raise ValueError(f"env.qa.step_weights needs 4 entries (1..4 steps), got {self.step_weights}")
        for name in ("domain_weights", "step_weights"):
            w = getattr(self, name)
            if any(x < 0 for x in w) or sum(w) <= 0:
                raise ValueError(f"env.qa.{name} must be >= 0 with a positive sum, got {w}")
        if self.alias_style not in ("random", "slot"):
            raise ValueError(f"env.qa.alias_style must be one of ('random', 'slot'), got {self.alias_style!r}")
        if self.menu_layout not in MENU_LAYOUTS:
            raise ValueError(f"env.qa.menu_layout must be one of {MENU_LAYOUTS}, got {self.menu_layout!r}")
        if not 2 <= self.menu_size <= 12:
            raise ValueError(f"env.qa.menu_size must be in [2, 12], got {self.menu_size}")
        for name in ("filler_prob", "crash_prob", "check_pass_if_right", "check_pass_if_wrong", "tool_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"env.qa.{name} must be in [0, 1], got {getattr(self, name)}")
        b = self.task_budget_usd
        if b and (len(b) != 2 or not 0 < b[0] <= b[1]):
            raise ValueError(f"env.qa.task_budget_usd must be () or (lo, hi) with 0 < lo <= hi, got {b}")
        if self.hidden_difficulty_std < 0:
            raise ValueError(f"env.qa.hidden_difficulty_std must be >= 0, got {self.hidden_difficulty_std}")


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
