"""No episode ever exceeds its turn, token or dollar budget, under random and adversarial policies, in every
env setting; only the public env API (make_env, envs.baselines.run_policy, EpisodeResults) is used, and the
adversaries read nothing but the prompt the env shows them."""
import re

import numpy as np
import pytest

from orchestra_jax.envs import make_env
from orchestra_jax.envs.baselines import run_policy
from orchestra_jax.text.chat import format_tool_call

PRICE = re.compile(r"([\w.-]+) [\w-]+ \$([0-9]+(?:\.[0-9]+)?)")


def _functions(prompt):
    return [t["function"] for t in prompt.get("tools") or [] if "function" in t]


class ExpensiveLoop:
    """Calls the most expensive non-answer tool with its most expensive model every turn, forever."""

    name = "expensive_loop"

    def act(self, prompt, history, rng):
        best = None
        for fn in _functions(prompt):
            for alias, price in PRICE.findall(fn.get("description", "")):
                if fn["name"] != "answer" and (best is None or float(price) > best[0]):
                    best = (float(price), fn["name"], alias)
        if best is None:  # a setting without priced models: its first tool, with the first enum values
            fn = _functions(prompt)[0]
            props = fn.get("parameters", {}).get("properties", {})
            args = {k: (v.get("enum") or ["x"])[0] for k, v in props.items()}
            return format_tool_call(fn["name"], args)
        return format_tool_call(best[1], {"model": best[2]})


class Garbage:
    """Long invalid text every turn (no tool call, or a malformed one)."""

    name = "garbage"

    def act(self, prompt, history, rng):
        return rng.choice(["x" * 4000, "<tool_call>{not json" * 50, "<tool_call>{\"name\": \"answer\"}" * 100])


class HugeArguments:
    """Valid-looking calls of every tool with enormous argument strings."""

    name = "huge_arguments"

    def act(self, prompt, history, rng):
        fns = _functions(prompt)
        fn = fns[int(rng.integers(len(fns)))]
        props = list(fn.get("parameters", {}).get("properties", {})) or ["model"]
        return format_tool_call(fn["name"], {k: "é" * 3000 for k in props})


BUDGETS = {"tight": {"max_turns": 3, "max_tokens": 1500, "max_usd": 0.002}, "default": {}}
# the function-calling setting has its own turn budget (functions.max_turns overrides env.max_turns)
DEFAULT_TURNS = {"qa": 6, "functions": 16}


@pytest.mark.parametrize("setting", ["qa", "functions"])
@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_no_episode_exceeds_its_budgets(setting, budget):
    cfg = {"setting": setting, **BUDGETS[budget]}
    max_turns = BUDGETS[budget].get("max_turns", DEFAULT_TURNS[setting])
    if setting == "functions":
        cfg["functions"] = {"max_turns": max_turns}
    env = make_env(cfg)
    max_tokens = BUDGETS[budget].get("max_tokens", 60_000)
    max_usd = BUDGETS[budget].get("max_usd", 0.25)
    tasks = env.sample_tasks(3, 12, split="train")
    episodes = [t for t in tasks for _ in range(4)]
    reasons = set()
    for policy in ("random", "always_strongest", ExpensiveLoop(), Garbage(), HugeArguments()):
        res = run_policy(env, policy, episodes, seed=11)
        name = getattr(policy, "name", policy)
        assert len(res.end_reason) == len(episodes) and res.done.all(), name
        assert (res.n_turns <= max_turns).all(), (name, res.n_turns.max())
        assert (res.tokens <= max_tokens).all(), (name, res.tokens.max())
        assert (res.cost_usd <= max_usd + 1e-12).all(), (name, res.cost_usd.max())
        assert np.isfinite(res.cost_usd).all() and (res.cost_usd >= 0).all()
        # a budget end is never a solved episode (runaways get reward 0)
        assert not (res.budget_exceeded & res.solved).any(), name
        reasons |= set(res.end_reason)
        if isinstance(policy, ExpensiveLoop):
            assert res.budget_exceeded.all(), (name, set(res.end_reason))  # it never answers
    if budget == "tight":  # the limits were really hit, so the test can fail
        # (the function-calling setting's long prompts hit the token and dollar limits before the turn limit)
        assert len({"max_turns", "max_usd", "max_tokens"} & reasons) >= 2, reasons


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(setting=st.sampled_from(["qa", "functions"]), max_turns=st.integers(1, 8),
       max_tokens=st.integers(1, 5000), max_usd=st.floats(1e-6, 0.05), seed=st.integers(0, 10**6))
def test_random_budgets_are_never_exceeded(setting, max_turns, max_tokens, max_usd, seed):
    cfg = {"setting": setting, "max_turns": max_turns, "max_tokens": max_tokens, "max_usd": max_usd}
    if setting == "functions":
        cfg["functions"] = {"max_turns": max_turns}
    env = make_env(cfg)
    tasks = env.sample_tasks(seed, 4, split="train")
    for policy in ("random", ExpensiveLoop(), HugeArguments()):
        res = run_policy(env, policy, tasks * 2, seed=seed)
        assert res.done.all()
        assert (res.n_turns <= max_turns).all() and (res.tokens <= max_tokens).all()
        assert (res.cost_usd <= max_usd + 1e-12).all()
