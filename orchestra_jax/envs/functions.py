"""Function-calling setting (ToolScale / tau2-like): synthetic domains with a database.

Each domain has a seeded, generated database (typed records in dicts), read and write functions
with JSON schemas, and tasks made of a user instruction, a gold action sequence and required
information. An episode is solved when the final database equals the gold database (the initial
one with the gold actions applied), the final answer holds every required fact, and (optionally)
the set of touched entries matches the gold one.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FunctionsConfig:
    """Function-calling setting: domains, databases, task tiers, experts and budgets."""

    domains: tuple[str, ...] = ("railway", "restaurant", "finance")
    db_seed: int = 0                      # seed of the generated databases (fixed per env)
    db_size: int = 240                    # entries in each domain's main table (>= 200)
    min_actions: int = 1                  # fewest write actions in a task's gold sequence
    max_actions: int = 3                  # most write actions in a task's gold sequence
    distractor_prob: float = 0.3          # chance a task mentions irrelevant entries
    check_touched: bool = True            # success also needs the touched-entries set to match
    experts: tuple[str, ...] = ("expert-1", "expert-2", "expert-3")
    expert_models: tuple[str, ...] = ("gpt-5", "gpt-5-mini", "qwen3-32b")  # model names in tools.py
    expert_tokens_out: int = 120          # tokens an expert writes for one step
    max_turns: int = 24                   # episode budget: turns
    max_tokens: int = 32768               # episode budget: policy + expert tokens
    max_usd: float = 0.5                  # episode budget: dollars
