"""Malformed calls never raise and never change the database: 10,000 per domain through env.step, plus
hypothesis fuzzing of call texts and argument values."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs.domains.base import db_digest
from orchestra_jax.envs.functions import FunctionsConfig

EPISODES, TURNS = 500, 20   # 10,000 calls per domain
ENV = make_env(EnvConfig(setting="functions", max_turns=TURNS, randomize_tools=False,
                         functions=FunctionsConfig(max_turns=0)))
TASKS = {d: [t for t in ENV.sample_tasks(11, 120, "test") + ENV.sample_tasks(11, 60, "heldout_domains")
             if t.domain == d][:3] for d in ENV.domains}


def _call(name, args) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"


def malformed_calls(domain, db, rng, n):
    """n calls that each must be refused: garbage, unknown tools, wrong or missing or extra arguments,
    wrong types, unknown ids, values out of range or outside the enum, refused writes."""
    fns = ENV.domains[domain].functions
    ids = [k for t in db.values() for k in list(t)[:3]]
    out = []
    for _ in range(n):
        f = fns[int(rng.integers(len(fns)))]
        args = {p.name: (p.enum[0] if p.enum else ids[0] if p.ref else 1) for p in f.params}
        u = int(rng.integers(10))
        if u == 0:
            out.append(["", "hello", "<tool_call>{not json</tool_call>", "<tool_call>[]</tool_call>",
                        '<tool_call>{"name": 3}</tool_call>'][int(rng.integers(5))])
            continue
        if u == 1:
            out.append(_call(f.name + "_x", args))
            continue
        if not f.params:  # policy(): only extra arguments can be wrong
            out.append(_call(f.name, {"x": 1}))
            continue
        p = f.params[int(rng.integers(len(f.params)))]
        bad = dict(args)
        if u == 2:
            bad.pop(p.name)
        elif u == 3:
            bad["unexpected"] = 1
        elif u == 4:
            bad[p.name] = [None, {"a": 1}, [1, 2], True, float("nan") if p.type == "number" else "x" * 500][int(rng.integers(5))]
            if p.type == "string" and isinstance(bad[p.name], str):
                bad[p.name] = 7
        elif u == 5 and p.ref:
            bad[p.name] = f"{ids[0][:2]}99999"
        elif u == 6 and p.enum:
            bad[p.name] = "not-an-option"
        elif u == 7 and p.type in ("integer", "number"):
            bad[p.name] = -10**9 if rng.random() < 0.5 else 10**9
        elif u == 8 and p.type == "number":
            bad[p.name] = 1.234   # money has at most two decimals
        else:
            bad = "not an object"
        out.append(_call(f.name, bad))
    return out


@pytest.mark.parametrize("domain", sorted(ENV.domains))
def test_ten_thousand_malformed_calls_change_nothing(domain):
    rng = np.random.default_rng(abs(hash(domain)) % 2**31)
    tasks = [TASKS[domain][k % len(TASKS[domain])] for k in range(EPISODES)]
    state, _ = ENV.reset(tasks, 0)
    db0 = ENV.initial_db[domain]
    digest0 = db_digest(db0)
    n = 0
    for _ in range(TURNS):
        calls = malformed_calls(domain, db0, rng, EPISODES)
        state, out = ENV.step(state, calls)
        n += len(calls)
        assert all(o.startswith("Error") for o in out.observations), [o for o in out.observations if not o.startswith("Error")][:3]
        assert not out.valid.any()
    assert n == 10_000
    assert all(db is db0 for db in state.dbs) and not any(state.touched)
    assert db_digest(ENV.initial_db[domain]) == digest0
    assert (ENV.results(state).n_invalid == TURNS).all()


_values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=30), st.lists(st.integers(), max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(domain=st.sampled_from(sorted(ENV.domains)), fn=st.integers(0, 30),
       args=st.dictionaries(st.text(max_size=12), _values, max_size=4), raw=st.text(max_size=80),
       use_raw=st.booleans())
def test_fuzzed_calls_never_raise(domain, fn, args, raw, use_raw):
    fns = ENV.domains[domain].functions
    f = fns[fn % len(fns)]
    for p in f.params[: fn % (len(f.params) + 1)]:   # some real argument names, with random values
        args.setdefault(p.name, args.pop(next(iter(args)), None) if args else None)
    text = raw if use_raw else _call(f.name, args)
    state, _ = ENV.reset(TASKS[domain][:1], 0)
    state, out = ENV.step(state, [text])
    assert isinstance(out.observations[0], str) and out.observations[0]
    if not out.valid[0] or out.observations[0].startswith("Error"):
        assert state.dbs[0] is ENV.initial_db[domain] or out.info[0].get("stage") == "wrong_write"
