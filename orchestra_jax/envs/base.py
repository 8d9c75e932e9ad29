"""The batched environment API shared by every setting (QA, function calling).

    env = make_env(env_cfg)
    env.tool_aliases                       # tuple[str]: feature columns; F = len(tool_aliases) + 3. QA: menu
    #                                        slots slot0..slot{K-1} (the j-th model listed in the episode's menu,
    #                                        whose alias and profile change per episode); functions: aliases
    tasks = env.sample_tasks(seed, n, split="train")
    state, prompts = env.reset(tasks, seed)      # prompts[i] = {"messages": [...], "tools": [...]}
    state, out = env.step(state, actions, policy_tokens_in=None, policy_tokens_out=None)
    res = env.results(state)

Conventions every setting follows:
- ``actions[i]`` is the assistant text of this turn (parsed with ``text.chat.parse_tool_call``). A
  malformed call, an unknown tool or bad arguments give an error observation, consume the turn, and never
  raise. Finished episodes ignore further actions (observation "", zero cost, valid False).
- Each episode's randomness comes from ``episode_rng(seed, episode_id, ...)``: it does not depend on the
  other episodes of the batch. ``episode_id`` defaults to the index in ``tasks``.
- Budgets (turns, tokens, dollars) are enforced by ``budget.Ledger``; a runaway episode ends unsolved.
- The state is a mutable host-side object; ``step`` updates it in place and returns it.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Protocol, Sequence

import numpy as np

FEATURE_OUTCOME = "outcome"
FEATURE_COST = "cost_usd"
FEATURE_LATENCY = "latency_s"


def feature_names(tool_aliases: Sequence[str]) -> tuple[str, ...]:
    """Names of the feature columns: ``calls:<alias>`` for each alias, then outcome, cost $, latency s."""
    return tuple(f"calls:{a}" for a in tool_aliases) + (FEATURE_OUTCOME, FEATURE_COST, FEATURE_LATENCY)


def episode_rng(seed: int, episode_id: int, *stream: int) -> np.random.Generator:
    """Generator for one episode (and optionally one sub-stream, e.g. the turn): depends only on its ids."""
    ids = [int(seed), int(episode_id), *(int(s) for s in stream)]
    if any(x < 0 for x in ids):
        raise ValueError(f"seeds and episode ids must be >= 0, got {ids}")
    return np.random.default_rng(np.random.SeedSequence(ids))


class Task(Protocol):
    """What every setting's task provides (QATask, FunctionsTask)."""

    task_id: str
    domain: str
    preference: tuple[float, ...]      # P over [aliases..., outcome, cost, latency], in [0, 1]
    preference_text: str               # natural-language instruction shown to the policy ("" = none)

    def to_dict(self) -> dict[str, Any]: ...


@dataclasses.dataclass
class StepOutput:
    """One env step for a batch of B episodes."""

    observations: list[str]          # text shown to the policy (inside <tool_response>); "" when already done
    done: np.ndarray                 # [B] bool: episode finished (after this step)
    cost_usd: np.ndarray             # [B] float64: $ charged this step (tool + orchestrator tokens)
    latency_s: np.ndarray            # [B] float64: seconds this step took
    tool_index: np.ndarray           # [B] int32: index into env.tool_aliases of the alias called, -1 if none
    valid: np.ndarray                # [B] bool: the action was a well-formed call of an available tool
    info: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per episode, setting specific


@dataclasses.dataclass
class EpisodeResults:
    """Per-episode outcome of a batch (B episodes, F = len(tool_aliases) + 3 features)."""

    features: np.ndarray             # [B, F] float64, raw units: calls per alias..., outcome (0/1), cost $, latency s
    solved: np.ndarray               # [B] bool
    preference: np.ndarray           # [B, F] float32 in [0, 1]
    n_turns: np.ndarray              # [B] int32
    cost_usd: np.ndarray             # [B] float64 (= features[:, -2])
    latency_s: np.ndarray            # [B] float64 (= features[:, -1])
    tokens: np.ndarray               # [B] int64: all tokens charged (orchestrator + tools)
    n_invalid: np.ndarray            # [B] int32: turns whose action was invalid
    done: np.ndarray                 # [B] bool
    end_reason: list[str]            # "answer" | "max_turns" | "max_tokens" | "max_usd" | "running" | setting's own
    task_ids: list[str]
    domains: list[str]
    feature_names: tuple[str, ...]
    # per episode, one dict per tool call in order (settings that record calls; [] per episode otherwise):
    # turn, tool, alias, slot (feature column), profile (hidden model name), cost_usd, latency_s, outcome
    # (setting's word: found / missed / passed / failed / crashed / answered / ...), correct (hidden truth,
    # None where it does not apply). For behaviour analysis only; policies never see it.
    call_log: list = dataclasses.field(default_factory=list)

    @property
    def budget_exceeded(self) -> np.ndarray:
        """[B] bool: the episode was ended by a turn, token or dollar budget."""
        return np.array([r in ("max_turns", "max_tokens", "max_usd") for r in self.end_reason], bool)

    @staticmethod
    def concatenate(parts: Sequence["EpisodeResults"]) -> "EpisodeResults":
        """Joins results of several batches (same env)."""
        if not parts:
            raise ValueError("EpisodeResults.concatenate: no parts")
        out = {}
        for f in dataclasses.fields(EpisodeResults):
            vals = [getattr(p, f.name) for p in parts]
            if f.name == "feature_names":
                out[f.name] = vals[0]
            elif f.name == "call_log":  # parts without a log count as [] per episode
                out[f.name] = [x for p, v in zip(parts, vals) for x in (v or [[] for _ in p.task_ids])]
            elif isinstance(vals[0], list):
                out[f.name] = [x for v in vals for x in v]
            else:
                out[f.name] = np.concatenate(vals, axis=0)
        return EpisodeResults(**out)


class Env(abc.ABC):
    """Base class of a batched simulated environment; see the module docstring for the contract."""

    setting: str
    tool_aliases: tuple[str, ...]
    splits: tuple[str, ...] = ("train", "val", "test")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return feature_names(self.tool_aliases)

    @property
    def num_features(self) -> int:
        return len(self.tool_aliases) + 3

    @abc.abstractmethod
    def sample_tasks(self, seed: int, n: int, split: str = "train") -> list:
        """``n`` tasks drawn deterministically from ``(seed, split)``; task i depends only on (seed, split, i)."""

    @abc.abstractmethod
    def task_from_dict(self, d: dict[str, Any]):
        """Inverse of ``task.to_dict()``; a bad record raises ValueError naming the field."""

    @abc.abstractmethod
    def reset(self, tasks: Sequence, seed: int, episode_ids: Sequence[int] | None = None
              ) -> tuple[Any, list[dict[str, Any]]]:
        """Starts one episode per task; returns (state, prompts) with prompts[i] = {"messages", "tools"}."""

    @abc.abstractmethod
    def step(self, state: Any, actions: Sequence[str], policy_tokens_in: Sequence[int] | None = None,
             policy_tokens_out: Sequence[int] | None = None) -> tuple[Any, StepOutput]:
        """Applies one assistant turn per episode. ``policy_tokens_in/out[i]``: tokens the orchestrator read
        / wrote this turn, charged at the orchestrator's price and counted in the token budget."""

    @abc.abstractmethod
    def results(self, state: Any) -> EpisodeResults:
        """Features, solved flags and preferences of the batch (valid at any time; unfinished = unsolved)."""

    def abort(self, state: Any, indices: Sequence[int], reason: str = "aborted") -> None:
        """Ends episodes from outside (e.g. the rollout ran out of sequence length): unsolved, no more charges.
        Works for any env whose state keeps a ``budget.Ledger`` as ``state.ledger``."""
        ledger = getattr(state, "ledger", None)
        if ledger is None:
            raise ValueError(f"{type(self).__name__}.abort: the state has no ledger")
        for i in indices:
            ledger.finish(int(i), solved=False, reason=reason)

    def tasks_from_dicts(self, records: Sequence[dict[str, Any]]) -> list:
        return [self.task_from_dict(r) for r in records]
