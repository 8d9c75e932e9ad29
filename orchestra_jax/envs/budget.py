"""Per-episode accounting and budgets: turns, tokens, dollars, latency, calls per alias.

``Ledger`` holds the counters of a batch of episodes. Every charge goes through ``Ledger.charge``, which
enforces the token and dollar budgets *before* anything is recorded: a call that would cross a budget is
cut off at the budget (charged only the remaining tokens/dollars, latency pro rata) and the episode ends
unsolved with reason "max_tokens" / "max_usd". So no episode ever exceeds its budgets, and a runaway
episode gets reward 0. ``end_turn`` ends episodes that used their last turn without finishing.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from orchestra_jax.envs.base import EpisodeResults, feature_names


@dataclasses.dataclass(frozen=True)
class Budget:
    """Per-episode limits; a runaway episode ends unsolved (reward 0)."""

    max_turns: int = 6
    max_tokens: int = 60_000
    max_usd: float = 0.25

    def __post_init__(self):
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not self.max_usd > 0:
            raise ValueError(f"max_usd must be > 0, got {self.max_usd}")


class Ledger:
    """Counters for B episodes and A aliases (numpy arrays, mutated in place)."""

    def __init__(self, batch_size: int, num_aliases: int, budget: Budget, max_usd=None):
        """``max_usd``: optional [B] per-episode dollar budgets (each <= budget.max_usd), e.g. a budget the
        user states per task; default budget.max_usd for every episode."""
        self.budget = budget
        B = batch_size
        self.max_usd = np.full(B, budget.max_usd, np.float64) if max_usd is None else np.minimum(
            np.asarray(max_usd, np.float64), budget.max_usd)
        if self.max_usd.shape != (B,) or not (self.max_usd > 0).all():
            raise ValueError(f"Ledger: max_usd must be [{B}] positive budgets, got {max_usd}")
        self.turns = np.zeros(B, np.int32)
        self.tokens = np.zeros(B, np.int64)
        self.usd = np.zeros(B, np.float64)
        self.latency = np.zeros(B, np.float64)
        self.calls = np.zeros((B, num_aliases), np.float64)
        self.done = np.zeros(B, bool)
        self.solved = np.zeros(B, bool)
        self.n_invalid = np.zeros(B, np.int32)
        self.end_reason = ["running"] * B
        self.call_log: list[list[dict]] = [[] for _ in range(B)]

    def charge(self, i: int, usd: float, tokens: int, latency_s: float) -> tuple[bool, float, float]:
        """Charges one call to episode i. Returns (within_budget, usd_charged, latency_charged).

        When the call would cross the token or dollar budget it is cut off: the episode pays up to the
        budget exactly, ends unsolved, and ``within_budget`` is False.
        """
        usd, tokens, latency_s = max(0.0, float(usd)), max(0, int(tokens)), max(0.0, float(latency_s))
        left_usd = self.max_usd[i] - self.usd[i]
        left_tok = self.budget.max_tokens - self.tokens[i]
        if usd <= left_usd and tokens <= left_tok:
            self.usd[i] += usd
            self.tokens[i] += tokens
            self.latency[i] += latency_s
            return True, usd, latency_s
        frac = min(left_usd / usd if usd > left_usd else 1.0, left_tok / tokens if tokens > left_tok else 1.0)
        frac = max(0.0, frac)
        usd_c, lat_c = min(usd * frac, left_usd), latency_s * frac
        self.usd[i] += usd_c
        self.tokens[i] += min(int(tokens * frac), int(left_tok))
        self.latency[i] += lat_c
        reason = "max_usd" if usd > left_usd else "max_tokens"
        self.finish(i, solved=False, reason=reason)
        return False, usd_c, lat_c

    def record_call(self, i: int, alias_index: int) -> None:
        if alias_index >= 0:
            self.calls[i, alias_index] += 1

    def log_call(self, i: int, entry: dict) -> None:
        """Appends one tool call's record to episode i's call log (see ``EpisodeResults.call_log``)."""
        self.call_log[i].append(dict(entry))

    def finish(self, i: int, solved: bool, reason: str) -> None:
        if not self.done[i]:
            self.done[i] = True
            self.solved[i] = bool(solved)
            self.end_reason[i] = reason

    def end_turn(self, i: int) -> None:
        """Counts a turn of episode i; ends it (unsolved, "max_turns") when it used its last turn."""
        self.turns[i] += 1
        if not self.done[i] and self.turns[i] >= self.budget.max_turns:
            self.finish(i, solved=False, reason="max_turns")

    def results(self, tool_aliases, preference: np.ndarray, task_ids, domains) -> EpisodeResults:
        outcome = self.solved.astype(np.float64)
        features = np.concatenate([self.calls, outcome[:, None], self.usd[:, None], self.latency[:, None]], 1)
        return EpisodeResults(
            features=features, solved=self.solved.copy(), preference=np.asarray(preference, np.float32),
            n_turns=self.turns.copy(), cost_usd=self.usd.copy(), latency_s=self.latency.copy(),
            tokens=self.tokens.copy(), n_invalid=self.n_invalid.copy(), done=self.done.copy(),
            end_reason=list(self.end_reason), task_ids=list(task_ids), domains=list(domains),
            feature_names=feature_names(tool_aliases), call_log=[list(c) for c in self.call_log])


def orchestrator_charge(price_in: float, price_out: float, tokens_in, tokens_out, i: int) -> tuple[float, int]:
    """$ and tokens of the orchestrator's own turn i (prices in $/1M); None arrays count as 0."""
    tin = 0 if tokens_in is None else int(tokens_in[i])
    tout = 0 if tokens_out is None else int(tokens_out[i])
    if tin < 0 or tout < 0:
        raise ValueError(f"policy token counts must be >= 0, got in={tin} out={tout} for episode {i}")
    return (tin * price_in + tout * price_out) / 1e6, tin + tout
