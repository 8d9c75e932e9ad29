"""QA env: determinism, error handling, accounting, the success model by hand, budgets, splits, prompts."""
import dataclasses
import math

import numpy as np
import pytest

from orchestra_jax.envs import EnvConfig, QAConfig, make_env
from orchestra_jax.envs.baselines import make_policy, rollout
from orchestra_jax.envs.pool import parse_description
from orchestra_jax.envs.qa import QATask
from orchestra_jax.envs.qa_read import read_prompt
from orchestra_jax.text.chat import format_tool_call

CFG = EnvConfig(preference_mode="random", max_usd=0.5, price_scale_train=(0.1, 10.0),
                price_scale_unseen=(0.02, 0.1, 10.0, 50.0))


def sig(x):
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def env():
    return make_env(CFG)


def call(tool, alias):
    return format_tool_call(tool, {"model": alias})


def test_same_seed_same_tasks_same_observations_and_outcomes(env):
    a, b = env.sample_tasks(3, 40), env.sample_tasks(3, 40)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]
    assert [t.question for t in env.sample_tasks(4, 40)] != [t.question for t in a]
    r1, t1 = rollout(env, make_policy("random", env), a, seed=5)
    r2, t2 = rollout(env, make_policy("random", env), b, seed=5)
    assert [x.observations for x in t1] == [x.observations for x in t2]
    np.testing.assert_array_equal(r1.features, r2.features)


def test_episode_randomness_does_not_depend_on_batch_composition(env):
    tasks = env.sample_tasks(0, 12)
    r_all, t_all = rollout(env, make_policy("random", env), tasks, seed=9)
    r_one, t_one = rollout(env, make_policy("random", env), tasks[5:6], seed=9, episode_offset=5)
    assert t_all[5].observations == t_one[0].observations
    np.testing.assert_array_equal(r_all.features[5], r_one.features[0])


@pytest.mark.parametrize("action, needle", [
    ("no call here", "Error:"), (call("lookup", "x"), "unknown tool"),
    ('<tool_call>{"name": "answer", "arguments": {"model": 3}}</tool_call>', "bad arguments"),
    ('<tool_call>{"name": "answer", "arguments": {"model": "a", "x": 1}}</tool_call>', "bad arguments"),
    (call("answer", "nosuch-1"), "not on the menu")])
def test_bad_calls_give_error_observation_consume_a_turn_and_change_nothing(env, action, needle):
    tasks = env.sample_tasks(0, 2)
    state, _ = env.reset(tasks, 0)
    state, out = env.step(state, [action, action])
    assert all(needle in o and o.startswith("Error:") for o in out.observations)
    assert not out.valid.any() and (out.tool_index == -1).all() and not out.done.any()
    res = env.results(state)
    assert (res.n_turns == 1).all() and (res.n_invalid == 1).all() and (res.features[:, :-3] == 0).all()
    assert res.cost_usd.sum() == 0 and state.found == [0, 0] and state.candidates == [[], []]
    assert res.call_log == [[], []]


def test_features_call_log_and_costs_add_up(env):
    tasks = env.sample_tasks(1, 30)
    res, trajs = rollout(env, make_policy("rule_based", env), tasks, seed=2)
    assert res.features.shape == (30, env.K + 3) == res.preference.shape
    for i, t in enumerate(tasks):
        log = res.call_log[i]
        assert len(log) == res.features[i, :-3].sum() == len(trajs[i].actions)
        for e in log:
            assert e["alias"] == t.aliases[e["slot"]] and e["profile"] == env.pool[t.profiles[e["slot"]]].name
        np.testing.assert_allclose(sum(e["cost_usd"] for e in log), res.cost_usd[i])
        np.testing.assert_allclose(sum(e["latency_s"] for e in log), res.latency_s[i])
        assert log[-1]["tool"] == "answer" and log[-1]["correct"] == bool(res.solved[i])


def hand_task(env, domain, steps=2, hidden=0.5, hops=0, answer="42", docs=()):
    t = env.sample_tasks(0, 1)[0]
    return dataclasses.replace(t, domain=domain, steps=steps, hidden_difficulty=hidden, hops=hops, answer=answer,
                               docs=docs)


def test_success_model_hand_computed(env):
    q = env.qa
    t = hand_task(env, "math")
    p = env.pool[t.profiles[0]]
    base = p.skill[0] - p.slope * (q.difficulty_step * 1 + 0.5)    # skill[0] = math
    a = t.aliases[0]
    # answer without a candidate: base - no_candidate_penalty
    state, _ = env.reset([t], 0)
    _, out = env.step(state, [call("answer", a)])
    assert out.info[0]["p_correct"] == pytest.approx(sig(base - q.no_candidate_penalty))
    # a right candidate in context: + candidate_bonus; a wrong one: - wrong_candidate_penalty
    for value, term in (("42", q.candidate_bonus), ("41", -q.wrong_candidate_penalty)):
        state, _ = env.reset([t], 0)
        state.candidates[0] = [value]
        _, out = env.step(state, [call("answer", a)])
        assert out.info[0]["p_correct"] == pytest.approx(sig(base + term))
    # two candidates that agree beat a later disagreeing one
    state, _ = env.reset([t], 0)
    state.candidates[0] = ["42", "42", "40"]
    _, out = env.step(state, [call("answer", a)])
    assert out.info[0]["p_correct"] == pytest.approx(sig(base + q.candidate_bonus))
    # factual: - missing_doc_penalty x fraction missing, + doc_bonus when complete
    f = hand_task(env, "factual", hops=2, answer="1900", docs=(("A", "a"), ("B", "b"), ("Aa", "x"), ("Ba", "y")))
    pf = env.pool[f.profiles[0]]
    base_f = pf.skill[3] - pf.slope * (q.difficulty_step + 0.5)
    for found, term in ((0, -q.missing_doc_penalty), (1, -q.missing_doc_penalty / 2), (2, q.doc_bonus)):
        state, _ = env.reset([f], 0)
        state.found[0] = found
        _, out = env.step(state, [call("answer", f.aliases[0])])
        assert out.info[0]["p_correct"] == pytest.approx(sig(base_f + term))


def test_search_and_reasoning_frequencies_match_the_model(env):
    q = env.qa
    f = hand_task(env, "factual", steps=1, hidden=0.0, hops=1, answer="1900", docs=(("A", "A was founded in 1900."),
                                                                                  ("Aa", "Aa is a different entity.")))
    p = env.pool[f.profiles[1]]
    expect = sig(p.skill[3] + q.retrieval_bonus)
    state, _ = env.reset([f] * 3000, 0, episode_ids=range(3000))
    _, out = env.step(state, [call("search", f.aliases[1])] * 3000)
    hit = np.mean([o.endswith("A was founded in 1900.") for o in out.observations])
    assert abs(hit - expect) < 4 * math.sqrt(expect * (1 - expect) / 3000)
    m = hand_task(env, "math", steps=1, hidden=0.0)
    pm = env.pool[m.profiles[1]]
    pr = sig(pm.skill[0] + q.reasoning_bonus)
    state, _ = env.reset([m] * 3000, 0, episode_ids=range(3000))
    _, out = env.step(state, [call("enhance_reasoning", m.aliases[1])] * 3000)
    right = np.mean([o.endswith("result 42, check passed.") or o.endswith("result 42, check failed.")
                     for o in out.observations])
    crashed = np.mean(["crashed" in o for o in out.observations])
    assert abs(right - pr) < 0.04 and abs(crashed - (1 - pr) * q.crash_prob) < 0.04


def test_budgets_end_episodes_unsolved():
    env = make_env(dataclasses.replace(CFG, max_turns=2))
    t = env.sample_tasks(0, 1)
    state, _ = env.reset(t, 0)
    for _ in range(2):
        state, out = env.step(state, [call("search", t[0].aliases[0])])
    assert out.done[0] and env.results(state).end_reason == ["max_turns"] and "Budget exceeded" in out.observations[0]
    env = make_env(dataclasses.replace(CFG, max_usd=1e-5))
    state, _ = env.reset(t, 0)
    big = max(range(env.K), key=lambda j: env.pool[t[0].profiles[j]].price_out * t[0].price_scale[j])
    state, out = env.step(state, [call("enhance_reasoning", t[0].aliases[big])])
    res = env.results(state)
    assert res.end_reason == ["max_usd"] and not res.solved[0] and res.cost_usd[0] == pytest.approx(1e-5)
    env = make_env(dataclasses.replace(CFG, max_tokens=1000))
    state, _ = env.reset(t, 0)
    state, out = env.step(state, [call("answer", t[0].aliases[0])], policy_tokens_in=[400], policy_tokens_out=[10])
    assert env.results(state).end_reason == ["max_tokens"] and env.results(state).tokens[0] <= 1000


def test_task_dict_round_trip_and_errors(env):
    for t in env.sample_tasks(0, 20, "unseen_prices"):
        assert env.task_from_dict(t.to_dict()) == t
    d = env.sample_tasks(0, 1)[0].to_dict()
    with pytest.raises(ValueError, match="missing field"):
        QATask.from_dict({k: v for k, v in d.items() if k != "answer"})
    with pytest.raises(ValueError, match="preference has"):
        env.task_from_dict({**d, "preference": [1.0]})
    with pytest.raises(ValueError, match="out of the pool"):
        env.task_from_dict({**d, "profiles": [999] * env.K})


def test_splits_hold_out_profiles_and_prices(env):
    held = set(env.heldout_pool)
    for split in ("train", "val", "test", "unseen_prices"):
        for t in env.sample_tasks(0, 200, split):
            assert not held & set(t.profiles) and len(set(t.profiles)) == env.K
    for t in env.sample_tasks(0, 200, "unseen_tools"):
        assert held & set(t.profiles)
    lo, hi = CFG.price_scale_train
    for t in env.sample_tasks(0, 200, "test"):
        assert all(lo * 0.99 <= s <= hi * 1.01 for s in t.price_scale)
    for t in env.sample_tasks(0, 200, "unseen_prices"):
        assert all(s <= 0.1 * 1.01 or s >= 10 * 0.99 for s in t.price_scale)
    # held-out profiles are new skill mixes, not renamed copies of training profiles
    mixes = {(env.pool[i].strong, env.pool[i].weak) for i in env.train_pool}
    assert all((env.pool[i].strong, env.pool[i].weak) not in mixes for i in held)
    assert len(env.train_pool) >= 24


@pytest.mark.parametrize("style", ["compact", "full"])
def test_prompt_lists_the_menu_with_episode_prices_and_no_tags(style):
    env = make_env(dataclasses.replace(CFG, description_style=style))
    for t in env.sample_tasks(0, 40):
        prompt = env.prompt(t)
        r = read_prompt(prompt)
        assert r.aliases == t.aliases and r.question == t.question and r.instruction == t.preference_text
        for d, j, s in zip(r.described, t.profiles, t.price_scale):
            p = env.pool[j]
            assert d.size == p.size and d.local == p.local and d.strong == p.strong and d.weak == p.weak
            assert d.price_out == pytest.approx(p.price_out * s, rel=0.06, abs=0.0015)
        text = prompt["messages"][-1]["content"]
        assert "[" + t.domain not in text and "profile-" not in text
        assert not any(w in t.question.lower() for w in ("basic", "standard", "expert", "level"))


def test_fixed_menu_when_not_randomised():
    env = make_env(EnvConfig(randomize_tools=False, randomize_prices=False))
    ts = env.sample_tasks(0, 30)
    assert len({t.aliases for t in ts}) == 1 and len({t.profiles for t in ts}) == 1
    assert all(s == 1.0 for t in ts for s in t.price_scale) and all(t.preference_text == "" for t in ts)


def test_abort_ends_episodes_unsolved(env):
    tasks = env.sample_tasks(0, 3)
    state, _ = env.reset(tasks, 0)
    env.abort(state, [1], reason="length")
    state, out = env.step(state, [call("answer", t.aliases[0]) for t in tasks])
    res = env.results(state)
    assert res.end_reason[1] == "length" and not res.solved[1] and out.observations[1] == ""


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="menu_size"):
        QAConfig(menu_size=1)
    with pytest.raises(ValueError, match="step_weights"):
        QAConfig(step_weights=(1.0,))
    with pytest.raises(ValueError, match="domains"):
        make_env(dataclasses.replace(CFG, qa=QAConfig(domains=("poetry",), domain_weights=(1.0,))))


def test_descriptions_parse_back_for_every_profile():
    env = make_env(CFG)
    rng = np.random.default_rng(0)
    from orchestra_jax.envs.pool import describe
    for p in env.pool:
        for style in ("compact", "full"):
            s = float(np.exp(rng.uniform(np.log(0.02), np.log(50))))
            d = parse_description(describe(p, s, style))
            assert (d.size, d.local, d.strong, d.weak) == (p.size, p.local, p.strong, p.weak)
            assert d.price_out == pytest.approx(p.price_out * s, rel=0.06, abs=0.0015)
    assert parse_description("nothing to see") is None


def test_stated_task_budget_is_shown_and_enforced(env):
    t = next(x for x in env.sample_tasks(0, 50) if x.max_usd > 0)
    assert f"Budget: ${t.max_usd:g}." in env.prompt(t)["messages"][-1]["content"]
    assert read_prompt(env.prompt(t)).budget_usd == pytest.approx(t.max_usd)
    tight = dataclasses.replace(t, max_usd=1e-6)
    state, _ = env.reset([tight], 0)
    state, out = env.step(state, [call("enhance_reasoning", t.aliases[0])])
    res = env.results(state)
    assert res.end_reason == ["max_usd"] and res.cost_usd[0] == pytest.approx(1e-6) and "$1e-06" in out.observations[0]
    # every stated budget covers a fair route (1.2 x its mean cost) or is the env's cap
    for x in env.sample_tasks(1, 200):
        assert 0 < x.max_usd <= env.cfg.max_usd


def test_results_concatenate_keeps_call_logs(env):
    from orchestra_jax.envs.base import EpisodeResults
    tasks = env.sample_tasks(2, 6)
    a = rollout(env, make_policy("rule_based", env), tasks[:4], seed=1)[0]
    b = rollout(env, make_policy("rule_based", env), tasks[4:], seed=1, episode_offset=4)[0]
    nolog = dataclasses.replace(b, call_log=[])
    c = EpisodeResults.concatenate([a, b])
    assert c.call_log == a.call_log + b.call_log and len(c.call_log) == 6
    assert EpisodeResults.concatenate([a, nolog]).call_log == a.call_log + [[], []]


@pytest.mark.parametrize("layout", ["name_last", "name_after_facts"])
@pytest.mark.parametrize("style", ["compact", "full"])
@pytest.mark.parametrize("alias_style", ["random", "slot"])
def test_other_menu_layouts_read_as_the_name_first_one(alias_style, style, layout):
    first = make_env(dataclasses.replace(CFG, description_style=style, qa=QAConfig(alias_style=alias_style)))
    other = make_env(dataclasses.replace(CFG, description_style=style,
                                         qa=QAConfig(alias_style=alias_style, menu_layout=layout)))
    tasks_first, tasks_other = first.sample_tasks(0, 30), other.sample_tasks(0, 30)
    assert [t.to_dict() for t in tasks_first] == [t.to_dict() for t in tasks_other]  # the layout is text only
    for t in tasks_other:
        lines = other.prompt(t)["messages"][-1]["content"].split("\n")[1:1 + len(t.aliases)]
        first_lines = first.prompt(t)["messages"][-1]["content"].split("\n")[1:1 + len(t.aliases)]
        if layout == "name_last":
            assert [line.rsplit(" = ", 1)[1] for line in lines] == list(t.aliases)
        else:  # every fact of the name_first line, each followed by the line's name
            sep = ", " if style == "compact" else "; "
            for line, first_line, alias in zip(lines, first_lines, t.aliases):
                facts = first_line[len(alias) + 2:].split(sep)
                assert len(facts) >= 3
                assert line == f"{alias}: " + sep.join(f"{f} {alias}" for f in facts)
        assert read_prompt(other.prompt(t)) == read_prompt(first.prompt(t))
    with pytest.raises(ValueError, match="env.qa.menu_layout must be one of"):
        QAConfig(menu_layout="middle")
