"""Property tests of the QA generators: problems, pool, preferences, and that every task can be solved."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs import preferences as prefs
from orchestra_jax.envs.qa import answer_logit, base_logit, difficulty
from orchestra_jax.envs.qa_problems import MAX_STEPS, generate
from orchestra_jax.envs.qa_read import read_domain, read_hops, read_steps
from orchestra_jax.envs.tools import sigmoid

ENV = make_env(EnvConfig(preference_mode="random", price_scale_train=(0.1, 10.0),
                         price_scale_unseen=(0.02, 0.1, 10.0, 50.0)))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(["math", "code", "science", "factual"]), st.integers(1, MAX_STEPS), st.integers(0, 2**31 - 1))
def test_problem_text_shows_domain_and_steps_without_a_tag(domain, steps, seed):
    p = generate(np.random.default_rng(seed), domain, steps)
    assert read_domain(p.question) == domain and read_steps(p.question, domain) == steps
    assert "[" not in p.question.split("Write code that takes")[-1] or domain == "code"
    if domain == "factual":
        assert p.hops == read_hops(p.question) == min(steps, 3) and len(p.docs) == 2 * p.hops
        assert p.answer in p.docs[p.hops - 1][1]          # the last hop's document holds the answer
        for (ent, _), (twin, text) in zip(p.docs[:p.hops], p.docs[p.hops:]):
            assert twin != ent and "different entity" in text
    else:
        assert p.answer and not p.docs


def test_code_and_math_answers_are_computed():
    from orchestra_jax.envs.qa_problems import count_check
    assert count_check("vowels", "kalktnon") == 2 and count_check("repeated letters", "kalktnon") == 2
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = generate(rng, "math", 1, filler_prob=0.0)
        if p.question.startswith("How many integers below"):
            n, d = (int(x) for x in p.question.replace("?", "").split() if x.isdigit())
            assert int(p.answer) == (n - 1) // d


def route_chance(env, t) -> float:
    """P(success) of the best single-model route within the turn budget (ignoring evidence): factual: find
    all hops in max_turns - 1 searches, then answer with every document; others: at least one right
    candidate in max_turns - 1 tries, then answer with it."""
    q, T = env.qa, env.cfg.max_turns
    d = difficulty(q, t.steps, t.hidden_difficulty)
    best = 0.0
    for j in t.profiles:
        p = env.pool[j]
        b = base_logit(p, t.domain, d)
        for k in t.profiles:  # preparation model j, answer model k
            a = base_logit(env.pool[k], t.domain, d)
            pa = sigmoid(answer_logit(q, a, t.domain, t.hops, t.hops, True, True))
            if t.domain == "factual":
                ps = sigmoid(b + q.retrieval_bonus)
                n = T - 1
                prep = sum(math.comb(n, m) * ps ** m * (1 - ps) ** (n - m) for m in range(t.hops, n + 1))
            else:
                prep = 1 - (1 - sigmoid(b + q.reasoning_bonus)) ** (T - 1)
            best = max(best, prep * pa)
    return best


@pytest.mark.parametrize("split", ["test", "unseen_tools", "unseen_prices"])
def test_every_task_has_a_route_with_a_fair_chance(split):
    chances = [route_chance(ENV, t) for t in ENV.sample_tasks(0, 1000, split)]
    assert min(chances) >= 0.25, min(chances)
    assert np.mean(chances) >= 0.8


def test_pool_size_and_held_out_mixes():
    assert len(ENV.train_pool) >= 24 and len(ENV.heldout_pool) >= 6
    sizes = {ENV.pool[i].size for i in ENV.train_pool}
    assert len(sizes) == 6


def test_stated_preferences_vary_are_stated_and_parse_back():
    rng = np.random.default_rng(0)
    aliases, local = ("ka-1", "lo-2", "mi-3", "ra-4"), (True, False, False, True)
    texts = set()
    kinds = set()
    for _ in range(2000):
        sp = prefs.sample_stated_preference(rng, aliases, local)
        texts.add(sp.text)
        kinds.add(sp.tool_kind)
        v = sp.vector
        assert len(v) == 7 and all(0 <= x <= 1 for x in v) and 0.7 <= v[4] <= 1
        got = prefs.parse_stated_preference(sp.text, aliases, local)
        for k in (5, 6):  # cost, latency: the stated bucket is recovered
            assert prefs.bucket_of(got[k]) == prefs.bucket_of(v[k])
        assert [g > 0 for g in got[:4]] == [x > 0 for x in v[:4]]
        if sp.tool_kind == "avoid":
            assert v[sp.tool_slot] == 0 and sum(x > 0 for x in v[:4]) == 3
    assert len(texts) >= 50 and kinds == {"", "local", "prefer", "avoid"}
    # continuous: many distinct cost weights
    ws = {prefs.sample_stated_preference(rng, aliases, local).vector[5] for _ in range(300)}
    assert len(ws) > 150
