"""Scripted policies for evaluation and teacher data, acting only on what a policy sees.

Each policy reads the prompt (the ``[domain, level]`` cue in the problem text and the alias menu with its
prices in the tool descriptions, via ``qa.parse_cue`` / ``qa.parse_menu``) and its own history of
(action, observation) pairs, and writes a tool-call text. All routers follow the same *recipe* for which
tool comes next (factual: search once, twice at the hardest level, then answer; code: reason then answer;
math: reason first at the hardest level; science: answer) and differ only in the model alias they pick:

- ``always_strongest`` (the monolith): the ``general-top`` model everywhere (else the priciest alias);
- ``cheapest``: the cheapest alias shown for each tool;
- ``random_router``: a random alias for each recipe step (seeded);
- ``random``: a random (tool, alias) call each turn, no recipe (seeded);
- ``rule_based``: reads domain and level: cheap specialists in their domain, cheap generalists on easy
  tasks, the strongest model only where nothing cheaper is good enough.

``run_policy(env, policy, tasks, seed)`` runs episodes to the end and returns ``EpisodeResults``;
``rollout(...)`` also returns the trajectories (prompt, actions, observations).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from orchestra_jax.envs.base import Env, EpisodeResults, episode_rng
from orchestra_jax.envs.qa import TOOLS, MenuItem, parse_cue, parse_menu
from orchestra_jax.text.chat import format_tool_call

LEVELS = ("basic", "standard", "expert")
POLICY_STREAM = 77_777  # keeps policy randomness apart from the env's streams

History = Sequence[tuple[str, str]]


def _level_index(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else 1


def _tools_used(history: History) -> list[str]:
    out = []
    for action, obs in history:
        if obs.startswith("Error"):
            continue
        for tool in TOOLS:
            if f'"name": "{tool}"' in action:
                out.append(tool)
    return out


def recipe_next_tool(domain: str, level: str, history: History) -> str:
    """Which tool the recipe calls next, given the cue and the successful calls so far."""
    used = _tools_used(history)
    lvl = _level_index(level)
    if domain == "factual":
        need = 2 if lvl == 2 else 1
        return "search" if used.count("search") < need else "answer"
    if domain == "code" or (domain == "math" and lvl == 2):
        return "enhance_reasoning" if "enhance_reasoning" not in used else "answer"
    return "answer"


def strongest_item(items: Sequence[MenuItem]) -> MenuItem:
    top = [m for m in items if m.tag == "general-top"]
    return top[0] if top else max(items, key=lambda m: m.price_out)


def cheapest_item(items: Sequence[MenuItem]) -> MenuItem:
    return min(items, key=lambda m: (m.price_out, m.alias))


@dataclasses.dataclass
class RecipeRouter:
    """Follows the recipe; ``choose(domain, level, tool, items, rng)`` picks the alias."""

    name: str
    choose: Callable[[str, int, str, Sequence[MenuItem], np.random.Generator], MenuItem]

    def act(self, prompt: dict[str, Any], history: History, rng: np.random.Generator) -> str:
        domain, level = parse_cue(prompt)
        menu = parse_menu(prompt["tools"])
        tool = recipe_next_tool(domain, level, history)
        items = menu.get(tool) or []
        if not items:  # nothing offered for this step: answer with what there is
            tool = "answer"
            items = menu.get("answer") or [MenuItem("answer-1", "general-top", 0.0)]
        item = self.choose(domain, _level_index(level), tool, items, rng)
        return format_tool_call(tool, {"model": item.alias})


def always_strongest() -> RecipeRouter:
    return RecipeRouter("always_strongest", lambda d, l, t, items, rng: strongest_item(items))


def cheapest() -> RecipeRouter:
    return RecipeRouter("cheapest", lambda d, l, t, items, rng: cheapest_item(items))


def random_router() -> RecipeRouter:
    return RecipeRouter("random_router", lambda d, l, t, items, rng: items[int(rng.integers(len(items)))])


# Rule-based router: per (tool, domain, level) an ordered list of tag tiers; the cheapest alias of the first
# tier that is offered wins, else the strongest alias. Levels: 0 basic, 1 standard, 2 expert.
_GENERAL = ("general", "general-mid")
RULES: dict[tuple[str, str, int], tuple[tuple[str, ...], ...]] = {
    ("answer", "math", 0): (("math-small", "math"),),
    ("answer", "math", 1): (("math",), ("general-mid",)),
    ("answer", "math", 2): (("math",),),
    ("enhance_reasoning", "math", 2): (("code",), ("general-mid",)),
    ("enhance_reasoning", "code", 0): (("code",), _GENERAL),
    ("enhance_reasoning", "code", 1): (("code",), _GENERAL),
    ("enhance_reasoning", "code", 2): (("code",),),
    ("answer", "code", 0): (_GENERAL,),
    ("answer", "code", 1): (_GENERAL,),
    ("answer", "code", 2): (("general-top",),),
    ("answer", "science", 0): (_GENERAL,),
    ("answer", "science", 1): (("general-top",),),
    ("answer", "science", 2): (("general-top",),),
    ("search", "factual", 0): (_GENERAL,),
    ("search", "factual", 1): (_GENERAL,),
    ("search", "factual", 2): (("general-top",),),
    ("answer", "factual", 0): (_GENERAL,),
    ("answer", "factual", 1): (("general-mid",), _GENERAL),
    ("answer", "factual", 2): (("general-top",),),
}


def rule_choice(domain: str, level: int, tool: str, items: Sequence[MenuItem], rng=None) -> MenuItem:
    for tier in RULES.get((tool, domain, level), ()):
        ok = [m for m in items if m.tag in tier]
        if ok:
            return cheapest_item(ok)
    return strongest_item(items)


def rule_based() -> RecipeRouter:
    return RecipeRouter("rule_based", rule_choice)


@dataclasses.dataclass
class RandomPolicy:
    """A random (tool, alias) call each turn among the offered ones; no recipe."""

    name: str = "random"

    def act(self, prompt: dict[str, Any], history: History, rng: np.random.Generator) -> str:
        menu = parse_menu(prompt["tools"])
        calls = [(tool, m.alias) for tool in TOOLS for m in menu.get(tool, [])]
        tool, alias = calls[int(rng.integers(len(calls)))]
        return format_tool_call(tool, {"model": alias})


@dataclasses.dataclass
class DirectAnswer:
    """Answers at once with ``alias`` (the strongest answer alias if it is not offered): one model, no tools."""

    alias: str
    name: str = ""

    def __post_init__(self):
        self.name = self.name or f"direct:{self.alias}"

    def act(self, prompt: dict[str, Any], history: History, rng: np.random.Generator) -> str:
        items = parse_menu(prompt["tools"]).get("answer") or [MenuItem(self.alias, "", 0.0)]
        alias = self.alias if any(m.alias == self.alias for m in items) else strongest_item(items).alias
        return format_tool_call("answer", {"model": alias})


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


BASELINES: dict[str, Callable[[], Any]] = {
    "always_strongest": always_strongest,
    "cheapest": cheapest,
    "random": RandomPolicy,
    "random_router": random_router,
    "rule_based": rule_based,
}


def make_policy(name: str, env: Env | None = None):
    """A baseline by name: always_strongest | cheapest | random | random_router | rule_based,
    ``<name>_eps<p>`` for a noisy variant (e.g. ``rule_based_eps0.2``), or ``direct:<alias>``.

    With ``env`` given, the policy of that env's setting: the function-calling setting has its own
    scripted routers under the same names (``functions.make_function_policy``)."""
    if env is not None and getattr(env, "setting", "qa") == "functions":
        from orchestra_jax.envs.functions import make_function_policy
        return make_function_policy(name)
    if name in BASELINES:
        return BASELINES[name]()
    if name.startswith("direct:"):
        return DirectAnswer(name.split(":", 1)[1])
    if "_eps" in name:
        base, eps = name.rsplit("_eps", 1)
        if base in BASELINES:
            try:
                return NoisyPolicy(BASELINES[base](), float(eps))
            except ValueError:
                pass
    raise ValueError(f"unknown policy {name!r}; baselines are {sorted(BASELINES)} (+ '_eps<p>' variants)")


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
