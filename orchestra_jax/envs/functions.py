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
    """Function-calling setting: domains, databases, task tiers and the simulated experts.

    Budgets, the roster (expert aliases -> models), tool subsets, prices and preferences come from the
    enclosing EnvConfig; `max_turns` here overrides env.max_turns when > 0 (tasks need more turns than QA).
    """

    domains: tuple[str, ...] = ("railway", "restaurant", "finance")
    db_seed: int = 0                      # seed of the generated databases (fixed per env)
    db_size: int = 240                    # entries in each domain's main tables (>= 200)
    min_actions: int = 1                  # fewest write actions (user requests) in a task
    max_actions: int = 3                  # most write actions (user requests) in a task
    distractor_prob: float = 0.4          # chance a task's instruction carries 1-2 distractor sentences
    hidden_difficulty_std: float = 0.5    # per-task logit offset of the experts the policy never sees
    check_touched: bool = True            # success also needs the set of written entries to match gold
    wrong_action_prob: float = 0.5        # a failing expert writes a plausible wrong call (else does nothing)
    function_latency_s: float = 0.05      # seconds one domain function call takes (free of charge)
    expert_context_tokens: int = 400      # expert input tokens besides the conversation (its instructions)
    max_turns: int = 16                   # > 0: overrides env.max_turns for this setting
