"""Scripted policies for evaluation and teacher data, and the runner that plays them in an env.

Every policy implements ``act(prompt, history, rng) -> str`` (the assistant text of the next turn) and
acts only on what a policy sees: the prompt and its own (action, observation) history. The QA policies
live in ``qa_policies`` (rule_based, open_loop, price_blind, pref_blind, oracle, always_strongest,
cheapest, random_router, random, blind); the function-calling ones in ``functions``.
``make_policy(name, env)`` picks the env's setting's policy by name; ``<name>_eps<p>`` adds random calls
(teacher diversity). ``run_policy(env, policy, tasks, seed)`` runs episodes to the end and returns
``EpisodeResults``; ``rollout(...)`` also returns the trajectories (prompt, actions, observations).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from orchestra_jax.envs.base import Env, EpisodeResults, episode_rng
from orchestra_jax.envs.qa_policies import QA_POLICIES, RandomQAPolicy, make_qa_policy

POLICY_STREAM = 77_777  # keeps policy randomness apart from the env's streams
QA_BASELINES = tuple(QA_POLICIES) + ("random", "blind")
RandomPolicy = RandomQAPolicy  # a random (tool, model) call each turn (QA)

History = Sequence[tuple[str, str]]


@dataclasses.dataclass
class NoisyPolicy:
    """``base`` with probability ``1 - eps``, else ``RandomPolicy`` (teacher diversity for the factory)."""

    base: Any
    eps: float
    name: str = ""

    def __post_init__(self):
        if not 0 <= self.eps <= 1:
            raise ValueError(f"NoisyPolicy.eps must be in [0, 1], got {self.eps}")
        self.name = self.name or f"{self.base.name}_eps{self.eps:g}"

    def act(self, prompt, history, rng):
        if rng.random() < self.eps:
            return RandomPolicy().act(prompt, history, rng)
        return self.base.act(prompt, history, rng)


def make_policy(name: str, env: Env | None = None):
    """A scripted policy of ``env``'s setting by name, or ``<name>_eps<p>`` for a noisy variant (e.g.
    ``rule_based_eps0.2``). QA names: see ``QA_BASELINES``; the function-calling setting has its own
    scripted routers under the same names (``functions.make_function_policy``)."""
    if env is not None and getattr(env, "setting", "qa") == "functions":
        from orchestra_jax.envs.functions import make_function_policy
        return make_function_policy(name)
    if env is None:
        raise ValueError(f"make_policy({name!r}): the QA policies need the env (make_policy(name, env))")
    pol = make_qa_policy(name, env)
    if pol is not None:
        return pol
    if "_eps" in name:
        base, eps = name.rsplit("_eps", 1)
        pol = make_qa_policy(base, env)
        if pol is not None:
            try:
                return NoisyPolicy(pol, float(eps))
            except ValueError:
                pass
    raise ValueError(f"unknown policy {name!r}; QA baselines are {sorted(QA_BASELINES)} (+ '_eps<p>' variants)")


@dataclasses.dataclass
class Trajectory:
    """One episode as text: the prompt, the assistant actions and the observations after each."""

    task: dict[str, Any]
    prompt: dict[str, Any]
    actions: list[str]
    observations: list[str]
    solved: bool
    cost_usd: float
    latency_s: float
    n_turns: int
    end_reason: str
    policy: str
    seed: int = 0          # env seed and episode id: reset([task], seed, [episode_id]) + actions replays it
    episode_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rollout(env: Env, policy, tasks: Sequence, seed: int, batch_size: int = 256, episode_offset: int = 0
            ) -> tuple[EpisodeResults, list[Trajectory]]:
    """Runs ``policy`` on every task and returns results and trajectories.

    Episode id = ``episode_offset`` + position in ``tasks`` (repeat a task to get several episodes of it).
    """
    tasks = list(tasks)
    if episode_offset < 0:
        raise ValueError(f"episode_offset must be >= 0, got {episode_offset}")
    if not tasks:
        raise ValueError("rollout: no tasks")
    parts, trajs = [], []
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start:start + batch_size]
        ids = list(range(episode_offset + start, episode_offset + start + len(chunk)))
        state, prompts = env.reset(chunk, seed, episode_ids=ids)
        hist: list[list[tuple[str, str]]] = [[] for _ in chunk]
        done = np.zeros(len(chunk), bool)
        while not done.all():
            actions = []
            for i in range(len(chunk)):
                if done[i]:
                    actions.append("")
                    continue
                rng = episode_rng(seed, ids[i], POLICY_STREAM, len(hist[i]))
                actions.append(policy.act(prompts[i], hist[i], rng))
            state, out = env.step(state, actions)
            for i in range(len(chunk)):
                if not done[i]:
                    hist[i].append((actions[i], out.observations[i]))
            done = out.done
        res = env.results(state)
        parts.append(res)
        for i, t in enumerate(chunk):
            trajs.append(Trajectory(
                task=t.to_dict(), prompt=prompts[i], actions=[a for a, _ in hist[i]],
                observations=[o for _, o in hist[i]], solved=bool(res.solved[i]), cost_usd=float(res.cost_usd[i]),
                latency_s=float(res.latency_s[i]), n_turns=int(res.n_turns[i]), end_reason=res.end_reason[i],
                policy=getattr(policy, "name", type(policy).__name__), seed=int(seed), episode_id=ids[i]))
    return EpisodeResults.concatenate(parts), trajs


def run_policy(env: Env, policy, tasks: Sequence, seed: int, batch_size: int = 256) -> EpisodeResults:
    """Runs ``policy`` (an object with ``act(prompt, history, rng) -> str``, or a baseline name) on ``tasks``."""
    if isinstance(policy, str):
        policy = make_policy(policy, env)
    return rollout(env, policy, tasks, seed, batch_size)[0]
