"""QA env: determinism, error handling, accounting, budgets, the P(correct) model, splits, prompts."""
import dataclasses
import math

import numpy as np
import pytest

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs.baselines import make_policy, rollout
from orchestra_jax.envs.qa import QATask, parse_cue, parse_menu
from orchestra_jax.envs.tools import sigmoid
from orchestra_jax.text.chat import format_tool_call

QUICK = EnvConfig(randomize_tools=False, randomize_prices=False)


def call(tool, alias):
    return format_tool_call(tool, {"model": alias})


@pytest.fixture(scope="module")
def env():
    return make_env(QUICK)


def test_same_seed_same_tasks_same_observations_and_outcomes():
    env = make_env(EnvConfig(preference_mode="random"))
    t1, t2 = env.sample_tasks(3, 60, "train"), env.sample_tasks(3, 60, "train")
    assert [t.to_dict() for t in t1] == [t.to_dict() for t in t2]
    assert [t.to_dict() for t in env.sample_tasks(4, 60, "train")] != [t.to_dict() for t in t1]
    for name in ("random", "rule_based_eps0.5"):
        r1, tr1 = rollout(env, make_policy(name), t1, seed=11)
        r2, tr2 = rollout(env, make_policy(name), t2, seed=11)
        assert [t.observations for t in tr1] == [t.observations for t in tr2]
        np.testing.assert_array_equal(r1.features, r2.features)
        np.testing.assert_array_equal(r1.solved, r2.solved)
        r3, tr3 = rollout(env, make_policy(name), t1, seed=12)
        assert [t.observations for t in tr3] != [t.observations for t in tr1]


def test_episode_randomness_does_not_depend_on_batch_composition(env):
    tasks = env.sample_tasks(0, 40)
    actions = [call("answer", "answer-3")] * 40
    state, _ = env.reset(tasks, seed=5)
    _, out_all = env.step(state, actions)
    sub = [7, 3, 30]
    state, _ = env.reset([tasks[i] for i in sub], seed=5, episode_ids=sub)
    _, out_sub = env.step(state, [actions[i] for i in sub])
    assert [out_all.observations[i] for i in sub] == out_sub.observations
    np.testing.assert_array_equal(out_all.cost_usd[sub], out_sub.cost_usd)


def _one_step(env, task, action, **kw):
    state, _ = env.reset([task], seed=0)
    state, out = env.step(state, [action], **kw)
    return state, out


@pytest.mark.parametrize("action, needle", [
    ("just text", "no tool call"),
    ("<tool_call>{not json}</tool_call>", "not valid JSON"),
    (call("browse", "answer-1"), "unknown tool"),
    (format_tool_call("answer", {}), "bad arguments"),
    (format_tool_call("answer", {"model": 3}), "bad arguments"),
    (format_tool_call("answer", {"model": "answer-1", "x": 1}), "bad arguments"),
    (call("answer", "answer-99"), "not available"),
    (call("answer", "search-1"), "not available"),
    (call("search", "answer-1"), "not available"),
    (call("answer", "answer-1") + call("answer", "answer-2"), "exactly one"),
])
def test_bad_calls_give_error_observation_and_consume_a_turn(env, action, needle):
    task = env.sample_tasks(0, 1)[0]
    state, out = _one_step(env, task, action, policy_tokens_in=[1000], policy_tokens_out=[500])
    assert out.observations[0].startswith("Error:") and needle in out.observations[0], out.observations[0]
    assert not out.valid[0] and out.tool_index[0] == -1 and not out.done[0]
    res = env.results(state)
    assert res.n_turns[0] == 1 and res.n_invalid[0] == 1 and res.features[0, :-3].sum() == 0
    # only the orchestrator's own tokens are charged, at its 0.2/0.2 $/1M price
    assert out.cost_usd[0] == pytest.approx((1000 * 0.2 + 500 * 0.2) / 1e6)
    assert res.tokens[0] == 1500


def test_accounting_features_and_finished_episodes(env):
    tasks = [t for t in env.sample_tasks(1, 50) if t.domain == "factual"][:4]
    state, _ = env.reset(tasks, seed=2)
    steps = [[call("search", "search-2")] * 4, [call("answer", "answer-1")] * 4, [call("answer", "answer-2")] * 4]
    costs, lats = np.zeros(4), np.zeros(4)
    outs = []
    for acts in steps:
        state, out = env.step(state, acts)
        costs += out.cost_usd
        lats += out.latency_s
        outs.append(out)
    assert outs[1].done.all() and not outs[0].done.any()
    assert outs[2].observations == [""] * 4 and (outs[2].cost_usd == 0).all() and not outs[2].valid.any()
    res = env.results(state)
    i_s2, i_a1 = env.tool_aliases.index("search-2"), env.tool_aliases.index("answer-1")
    assert (res.features[:, i_s2] == 1).all() and (res.features[:, i_a1] == 1).all()
    assert res.features[:, :-3].sum() == 8
    np.testing.assert_allclose(res.features[:, -3], res.solved.astype(float))
    np.testing.assert_allclose(res.features[:, -2], costs)
    np.testing.assert_allclose(res.features[:, -1], lats)
    assert res.features.shape == (4, len(env.tool_aliases) + 3) == res.preference.shape
    assert (res.n_turns == 2).all() and res.end_reason == ["answer"] * 4
    assert all(o.startswith("answer-1 answered: ") for o in outs[1].observations)


def test_success_probability_model_hand_computed(env):
    """p_correct = sigmoid(skill - slope * level_offset - hidden + context), context from earlier calls."""
    roster, q = env.roster, env.qa
    gpt5, coder = roster.model("gpt-5"), roster.model("qwen2.5-coder-32b")
    tasks = env.sample_tasks(7, 400)
    checked = {"nodoc": 0, "doc": 0, "code": 0}
    for t in tasks:
        base = gpt5.skill_in(t.domain) - gpt5.slope * q.level_offsets[t.level] - t.hidden_difficulty
        if t.domain == "factual" and len(t.relevant) == 1:
            _, out = _one_step(env, t, call("answer", "answer-1"))
            assert out.info[0]["p_correct"] == pytest.approx(sigmoid(base - q.missing_doc_penalty))
            checked["nodoc"] += 1
            state, _ = env.reset([t], seed=0)
            state, o1 = env.step(state, [call("search", "search-1")])
            state, o2 = env.step(state, [call("answer", "answer-1")])
            ctx = q.doc_bonus if o1.info[0]["retrieved_relevant"] else -q.missing_doc_penalty
            assert o2.info[0]["p_correct"] == pytest.approx(sigmoid(base + ctx))
            checked["doc"] += 1
        if t.domain == "code":
            state, _ = env.reset([t], seed=0)
            state, o1 = env.step(state, [call("enhance_reasoning", "reasoner-3")])
            state, o2 = env.step(state, [call("answer", "answer-1")])
            ctx = q.code_bonus if o1.info[0]["code_correct"] else -q.wrong_code_penalty
            assert o2.info[0]["p_correct"] == pytest.approx(sigmoid(base + ctx))
            if o1.info[0]["code_correct"]:  # the sandbox ran the task's program: the output is the answer
                assert o1.observations[0].endswith(f"-> {t.answer}")
            checked["code"] += 1
    assert min(checked.values()) >= 10


def test_factual_tasks_need_search(env):
    tasks = [t for t in env.sample_tasks(2, 800) if t.domain == "factual"]
    direct = rollout(env, make_policy("direct:answer-1"), tasks, seed=0)[0].solved.mean()
    with_search = rollout(env, make_policy("always_strongest"), tasks, seed=0)[0].solved.mean()
    assert with_search > direct + 0.4


def test_turn_budget_ends_unsolved():
    env = make_env(dataclasses.replace(QUICK, max_turns=2))
    task = env.sample_tasks(0, 1)[0]
    state, _ = env.reset([task], seed=0)
    state, o1 = env.step(state, [call("search", "search-3")])
    state, o2 = env.step(state, [call("search", "search-3")])
    assert not o1.done[0] and o2.done[0] and "Budget exceeded" in o2.observations[0]
    res = env.results(state)
    assert res.end_reason == ["max_turns"] and not res.solved[0] and res.budget_exceeded[0]


def test_dollar_budget_cuts_the_call_and_ends_unsolved():
    env = make_env(dataclasses.replace(QUICK, max_usd=0.005))
    tasks = env.sample_tasks(0, 30)
    state, _ = env.reset(tasks, seed=0)
    state, out = env.step(state, [call("answer", "answer-1")] * 30)   # a GPT-5 answer costs ~$0.02
    res = env.results(state)
    assert res.end_reason == ["max_usd"] * 30 and not res.solved.any()
    np.testing.assert_allclose(res.cost_usd, 0.005)
    assert all(o.startswith("Budget exceeded") for o in out.observations)


def test_token_budget_counts_policy_tokens():
    env = make_env(dataclasses.replace(QUICK, max_tokens=1000))
    task = env.sample_tasks(0, 1)[0]
    state, _ = env.reset([task], seed=0)
    state, out = env.step(state, [call("answer", "answer-math-2")], policy_tokens_in=[1200], policy_tokens_out=[10])
    res = env.results(state)
    assert res.end_reason == ["max_tokens"] and res.tokens[0] <= 1000 and out.done[0]


def test_task_dict_round_trip_and_errors(env):
    tasks = make_env(EnvConfig(preference_mode="random")).sample_tasks(0, 20, "unseen_prices")
    for t in tasks:
        assert QATask.from_dict(t.to_dict()) == t
    d = tasks[0].to_dict()
    del d["answer"]
    with pytest.raises(ValueError, match="answer"):
        env.task_from_dict(d)
    d = tasks[0].to_dict()
    d["available"] = ["answer-77"]
    with pytest.raises(ValueError, match="answer-77"):
        env.task_from_dict(d)


def test_splits_hold_out_tools_and_prices():
    env = make_env(EnvConfig())
    held = set(env.cfg.heldout_aliases)
    lo, hi = env.cfg.price_scale_train
    for split in ("train", "val", "test"):
        for t in env.sample_tasks(0, 200, split):
            assert not held & set(t.available)
            assert all(lo - 1e-3 <= s <= hi + 1e-3 for _, s in t.price_scale)
            assert {env._alias[a].tool for a in t.available} == {"search", "enhance_reasoning", "answer"}
    assert all(held & set(t.available) for t in env.sample_tasks(0, 200, "unseen_tools"))
    for t in env.sample_tasks(0, 200, "unseen_prices"):
        assert all(s < lo or s > hi for _, s in t.price_scale)
    quick = make_env(QUICK).sample_tasks(0, 50)
    assert all(t.available == make_env(QUICK).tool_aliases for t in quick)
    assert all(s == 1.0 for t in quick for _, s in t.price_scale)


@pytest.mark.parametrize("style", ["compact", "full"])
def test_prompt_renders_aliases_and_episode_prices(style):
    env = make_env(EnvConfig(description_style=style))
    for t in env.sample_tasks(0, 30):
        prompt = env.prompt(t)
        menu = parse_menu(prompt["tools"])
        shown = {m.alias: m.price_out for items in menu.values() for m in items}
        assert set(shown) == set(t.available)
        for a, p in shown.items():
            m = env.roster.model(env._alias[a].model)
            assert p == pytest.approx(m.price_out * t.scale_of(m.name), rel=0.06, abs=0.002)
        assert parse_cue(prompt) == (t.domain, env.qa.levels[t.level])
    from orchestra_jax.text.chat import render_prompt
    assert render_prompt(prompt["messages"], prompt["tools"]).endswith("<|im_start|>assistant\n")


def test_random_preferences_are_rendered():
    env = make_env(EnvConfig(preference_mode="random"))
    tasks = env.sample_tasks(0, 100)
    assert len({t.preference_text for t in tasks}) >= 4
    for t in tasks:
        user = env.prompt(t)["messages"][-1]["content"]
        assert user.endswith(t.preference_text)
        p = np.array(t.preference)
        assert ((p >= 0) & (p <= 1)).all() and p[-3] == 1.0
        if "Prefer" in t.preference_text:
            alias = t.preference_text.split("Prefer ")[1].rstrip(".")
            assert p[env.tool_aliases.index(alias)] == 1.0 and alias in t.available
    fixed = make_env(QUICK).sample_tasks(0, 3)
    assert fixed[0].preference[-3:] == (1.0, 0.5, 0.0) and fixed[0].preference_text == ""


def test_abort_ends_episodes_unsolved(env):
    tasks = env.sample_tasks(0, 3)
    state, _ = env.reset(tasks, seed=0)
    env.abort(state, [1], reason="too_long")
    state, out = env.step(state, [call("answer", "answer-1")] * 3)
    res = env.results(state)
    assert out.observations[1] == "" and out.cost_usd[1] == 0 and out.done.all()
    assert res.end_reason[1] == "too_long" and not res.solved[1] and res.n_turns[1] == 0


@pytest.mark.parametrize("kw, needle", [
    (dict(price_scale_unseen=(0.1, 0.2, 3.0, 2.0)), "price_scale_unseen"),
    (dict(price_scale_train=(2.0, 1.0)), "price_scale_train"),
    (dict(description_style="verbose"), "description_style"),
    (dict(setting="chess"), "setting"),
    (dict(max_turns=0), "budgets"),
    (dict(heldout_aliases=("answer-9",)), "heldout_aliases"),
])
def test_bad_config_names_the_field(kw, needle):
    with pytest.raises(ValueError, match=needle):
        make_env(dataclasses.replace(QUICK, **kw) if "setting" not in kw else EnvConfig(**kw))


def test_search_with_no_distractors_and_nothing_left_to_find():
    env = make_env(dataclasses.replace(QUICK, qa=dataclasses.replace(QUICK.qa, n_distractors=0)))
    task = next(t for t in env.sample_tasks(0, 20) if t.domain == "math")
    state, _ = env.reset([task], seed=0)
    state, out = env.step(state, [call("search", "search-1")])
    assert out.valid[0] and out.observations[0] == "search-1: no documents found."
