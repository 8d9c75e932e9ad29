"""Hypothesis: the call parser + env step never raise; bad calls give error observations and change
nothing but the turn, invalid-turn count and the orchestrator's charge; budgets hold."""
import dataclasses
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs.baselines import RandomPolicy
from orchestra_jax.envs.base import episode_rng
from orchestra_jax.text.chat import format_tool_call, parse_tool_call

ENV = make_env(EnvConfig(preference_mode="random"))
TASKS = ENV.sample_tasks(0, 10)
NAMES = ["search", "enhance_reasoning", "answer", "Answer", "", "call_expert", "search "]
ALIASES = sorted({a for t in TASKS for a in t.aliases}) + ["slot0", "", TASKS[0].aliases[0].upper(),
                                                          TASKS[0].aliases[0] + " "]
json_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-1e3, 1e3), st.text(max_size=5),
                        st.lists(st.integers(0, 3), max_size=2), st.just({"model": TASKS[0].aliases[0]}))
arguments = st.one_of(
    st.fixed_dictionaries({"model": st.sampled_from(ALIASES)}),
    st.dictionaries(st.sampled_from(["model", "query", "x"]), json_values, max_size=3),
)
well_formed = st.builds(lambda n, a: format_tool_call(n, a) if n.strip() else f"<tool_call>{json.dumps({'name': n, 'arguments': a})}</tool_call>",
                        st.sampled_from(NAMES), arguments)
mangled = st.builds(lambda s, cut, junk: s[:cut] + junk, well_formed, st.integers(0, 80), st.text(max_size=6))
raw = st.one_of(st.text(max_size=30), st.just("<tool_call>"), st.just("</tool_call><tool_call>"),
                st.builds(lambda b: f"<tool_call>\n{b}\n</tool_call>", st.text(max_size=40)))
action = st.one_of(well_formed, well_formed, mangled, raw)


@settings(max_examples=1000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(action, min_size=10, max_size=10), st.integers(0, 2**31 - 1))
def test_step_never_raises_and_flags_bad_calls(actions, seed):
    """1,000 examples x 10 episodes = 10,000 fuzzed calls."""
    state, _ = ENV.reset(TASKS, seed)
    state, out = ENV.step(state, actions, policy_tokens_in=[100] * 10, policy_tokens_out=[20] * 10)
    res = ENV.results(state)
    orch = ENV.orchestrator
    for i, a in enumerate(actions):
        c = parse_tool_call(a)
        good = (getattr(c, "ok", False) and c.name in ("search", "enhance_reasoning", "answer")
                and set(c.arguments) == {"model"} and c.arguments["model"] in TASKS[i].aliases)
        assert bool(out.valid[i]) == good
        if good:
            assert TASKS[i].aliases[out.tool_index[i]] == c.arguments["model"]
            assert not out.observations[i].startswith("Error") and len(res.call_log[i]) == 1
        else:  # nothing changed but the turn and the orchestrator's own tokens
            assert out.observations[i].startswith("Error:") and out.tool_index[i] == -1
            assert res.features[i, :-3].sum() == 0 and res.call_log[i] == [] and res.n_invalid[i] == 1
            assert state.found[i] == 0 and state.candidates[i] == [] and not res.done[i]
            assert res.cost_usd[i] == (100 * orch.price_in + 20 * orch.price_out) / 1e6 and res.tokens[i] == 120
        assert out.cost_usd[i] > 0 and res.n_turns[i] == 1
    assert np.isfinite(res.features).all()


class TextNoisePolicy:
    """Random calls, a third of them garbled, to reach every branch of step."""

    name = "noise"

    def act(self, prompt, history, rng):
        a = RandomPolicy().act(prompt, history, rng)
        r = rng.random()
        return a if r < 0.66 else (a[: int(rng.integers(len(a)))] if r < 0.83 else a.replace("answer", "answr"))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(max_turns=st.integers(1, 6), max_tokens=st.integers(300, 30_000), max_usd=st.floats(1e-4, 0.08),
       seed=st.integers(0, 10_000), policy_tokens=st.integers(0, 3000))
def test_no_episode_exceeds_its_budgets(max_turns, max_tokens, max_usd, seed, policy_tokens):
    env = make_env(dataclasses.replace(ENV.cfg, max_turns=max_turns, max_tokens=max_tokens, max_usd=max_usd))
    tasks = env.sample_tasks(seed, 16)
    state, prompts = env.reset(tasks, seed)
    hist = [[] for _ in tasks]
    done = np.zeros(16, bool)
    steps = 0
    while not done.all():
        acts = []
        for i in range(16):
            pol = TextNoisePolicy() if i % 2 else RandomPolicy()
            acts.append(pol.act(prompts[i], hist[i], episode_rng(seed, i, 9, len(hist[i]))))
        state, out = env.step(state, acts, policy_tokens_in=[policy_tokens] * 16, policy_tokens_out=[policy_tokens // 10] * 16)
        for i in range(16):
            hist[i].append((acts[i], out.observations[i]))
        done = out.done
        steps += 1
        res = env.results(state)
        assert (res.n_turns <= max_turns).all()
        assert (res.tokens <= max_tokens).all()
        assert (res.cost_usd <= max_usd * (1 + 1e-12)).all()
    assert steps <= max_turns
    res = env.results(state)
    assert not res.solved[res.budget_exceeded].any()
    assert set(res.end_reason) <= {"answer", "max_turns", "max_tokens", "max_usd"}
