"""FunctionsConfig: the function-calling setting's own options (a leaf module: imports nothing of envs).

It lives here until the lead moves it into ``envs/config.py`` (then this module re-exports it from there).
"""
from __future__ import annotations

import dataclasses

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
