"""Scripted QA policies: one planner (envs.qa_planner), read from the text (routers) or from the hidden state (oracle).

``Planner`` scores every short call sequence (up to 3 preparation calls, then an answer) by its expected
preference score (``preferences.preference_score``'s per-episode term) under a *belief*: per menu slot a
success logit, a slope, $ and seconds per call. Policies differ only in their belief and in whether they
re-plan after each observation:

- ``rule_based`` (the hand-written router; closed loop): beliefs from the text only: the problem's domain
  and steps (``qa_read``), each alias's description (size -> base skill and slope, strong/weak domains),
  the shown prices, the stated preference; the hidden difficulty integrated out. After each observation it
  updates what it knows (documents found, candidates and their self-checks, agreement of two candidates)
  and re-plans.
- ``open_loop``: the same router, planning once at turn 0 and never reading an observation.
- ``price_blind`` / ``pref_blind``: the router with list prices of the size class / the mean preference.
- ``oracle``: the same planner with the true profiles, the hidden difficulty and whether each candidate
  is right (an upper bound, never a teacher).
- ``always_strongest`` (the monolith: the largest described model for every call), ``cheapest`` (the
  cheapest shown model for every call), ``random_router`` (the router's tools, a random model per call),
  ``random`` (a random tool and model each turn), ``blind`` (``BlindPolicy``: the best fixed sequence of
  (tool, price rank) calls on validation tasks; it reads neither the problem nor the descriptions).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from orchestra_jax.envs.pool import size_index
from orchestra_jax.envs.qa import TOOLS
from orchestra_jax.envs.qa_model import best_candidate
from orchestra_jax.envs.qa_planner import EXPECTIMAX_DEPTH, Planner, oracle_belief, text_belief, update_belief
from orchestra_jax.envs.qa_read import read_history, read_prompt
from orchestra_jax.text.chat import format_tool_call


@dataclasses.dataclass
class PlannerPolicy:
    """The planner with a text or oracle belief; see the module docstring."""

    env: Any
    name: str
    oracle: bool = False
    closed_loop: bool = True
    price_blind: bool = False
    pref_blind: bool = False
    restrict: str = "all"        # all | strongest | cheapest | random

    def __post_init__(self):
        self.planner = Planner(self.env)
        self._open_plans: dict = {}      # open loop: the turn-0 plan per prompt (it never changes)

    def act(self, prompt: dict[str, Any], history, rng: np.random.Generator) -> str:
        r = read_prompt(prompt)
        if not r.aliases:
            return "I cannot read the menu."
        task = self.env.lookup(r.task_id) if self.oracle else None
        b = oracle_belief(self.env, task) if self.oracle else text_belief(self.env, r, self.price_blind, self.pref_blind)
        allowed = self._allowed(r, rng)
        obs = read_history(history, r.aliases)
        if not self.closed_loop:
            key = (r.task_id, r.aliases, r.question)
            if key not in self._open_plans:
                if len(self._open_plans) > 20_000:
                    self._open_plans.clear()
                self._open_plans[key] = self._plan(b, r, allowed, self.planner.max_turns)
            plan = self._open_plans[key]
            tool, j = plan[min(len(history), len(plan) - 1)]
            return format_tool_call(tool, {"model": r.aliases[j]})
        plan = self._plan(b, r, allowed, self.planner.max_turns - len(history), obs, task)
        tool, j = plan[0]
        return format_tool_call(tool, {"model": r.aliases[j]})

    def _allowed(self, r, rng) -> list[int]:
        k = len(r.aliases)
        if self.restrict == "strongest":
            return [max(range(k), key=lambda j: (size_index(r.described[j].size), r.described[j].price_out))]
        if self.restrict == "cheapest":
            return [min(range(k), key=lambda j: (r.described[j].price_out, j))]
        if self.restrict == "random":
            return [int(rng.integers(k))]
        return list(range(k))

    def _plan(self, b, r, allowed, turns_left, obs=None, task=None):
        pl = self.planner
        if obs is None:  # open loop: the fixed sequence planned at turn 0
            return pl.plan(b, 0, None, [], 0.0, 0.0, 0, max(1, turns_left), allowed)
        if not obs.calls:
            return self._first(b, 0, None, (), 0.0, 0.0, 0, max(1, turns_left), allowed)
        usd = lat = 0.0
        nd = nc = 0
        for tool, j in obs.calls:
            c, t = pl.cost(b, j, tool, nd, nc)
            usd, lat = usd + c, lat + t
        values = [v for v, _, _ in obs.candidates]
        cand = None
        if values:
            best = best_candidate(values)
            if self.oracle:
                cand = 1.0 if best == task.answer else 0.0
            elif values.count(best) >= 2:
                cand = 0.97
        if not self.oracle:  # what the outcomes say about the hidden difficulty, and the last candidate
            b, q_last = update_belief(b, obs.events, self.env.qa)
            if values and cand is None:
                cand = q_last
        return self._first(b, min(obs.found, b.hops), cand, tuple(j for _, j in obs.calls), usd, lat, len(values),
                           max(1, turns_left), allowed)

    def _first(self, b, found, cand, calls, usd, lat, n_cand, turns_left, allowed):
        _, a = self.planner.expectimax(b, found, cand, calls, usd, lat, n_cand, turns_left, allowed, EXPECTIMAX_DEPTH,
                                       self.oracle)
        return [a]


RANKS = ("cheap", "mid", "top")


@dataclasses.dataclass
class BlindPolicy:
    """A fixed sequence of (tool, price rank) calls: reads only the menu's aliases and shown prices."""

    sequence: tuple[tuple[str, str], ...]
    name: str = "blind"

    def act(self, prompt, history, rng) -> str:
        r = read_prompt(prompt)
        if not r.aliases:
            return "I cannot read the menu."
        order = sorted(range(len(r.aliases)), key=lambda j: (r.described[j].price_out, j))
        tool, rank = self.sequence[min(len(history), len(self.sequence) - 1)]
        j = order[{"cheap": 0, "mid": len(order) // 2, "top": len(order) - 1}[rank]]
        return format_tool_call(tool, {"model": r.aliases[j]})


def blind_candidates() -> list[tuple[tuple[str, str], ...]]:
    preps = [(t, rk) for t in ("search", "enhance_reasoning") for rk in ("cheap", "top")]
    out = []
    for n in range(3):
        for seq in itertools.product(preps, repeat=n):
            for rk in RANKS:
                out.append(tuple(seq) + (("answer", rk),))
    return out


_BLIND_CACHE: dict[tuple, tuple] = {}


def fit_blind(env, n_val: int = 300, seed: int = 12345) -> BlindPolicy:
    """The candidate sequence with the best preference score on ``n_val`` validation tasks (cached per config)."""
    from orchestra_jax.envs.baselines import run_policy
    from orchestra_jax.envs.preferences import preference_score

    key = (repr(env.cfg), n_val, seed)
    if key not in _BLIND_CACHE:
        tasks = env.sample_tasks(seed, n_val, "val")
        scored = []
        for seq in blind_candidates():
            res = run_policy(env, BlindPolicy(seq), tasks, seed)
            scored.append((preference_score(res.features, res.solved, res.preference), seq))
        _BLIND_CACHE[key] = max(scored)[1]
    return BlindPolicy(_BLIND_CACHE[key])


@dataclasses.dataclass
class RandomQAPolicy:
    """A random tool and a random menu model each turn."""

    name: str = "random"

    def act(self, prompt, history, rng) -> str:
        r = read_prompt(prompt)
        if not r.aliases:
            return "I cannot read the menu."
        return format_tool_call(TOOLS[int(rng.integers(3))], {"model": r.aliases[int(rng.integers(len(r.aliases)))]})


QA_POLICIES = {
    "rule_based": dict(),
    "open_loop": dict(closed_loop=False),
    "price_blind": dict(price_blind=True),
    "pref_blind": dict(pref_blind=True),
    "oracle": dict(oracle=True),
    "always_strongest": dict(restrict="strongest"),
    "cheapest": dict(restrict="cheapest"),
    "random_router": dict(restrict="random"),
}


def make_qa_policy(name: str, env):
    if name in QA_POLICIES:
        return PlannerPolicy(env, name, **QA_POLICIES[name])
    if name == "random":
        return RandomQAPolicy()
    if name == "blind":
        return fit_blind(env)
    return None
