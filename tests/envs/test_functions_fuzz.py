"""Hypothesis fuzzing of FunctionsEnv.step: random and malformed call texts, random argument values.

Property: step never raises; a rejected call (invalid, or an error observation) leaves the episode's
database the very same object with the same content and touches no entry; a read never changes it;
and no call, accepted or not, ever mutates the shared initial databases (content hash at the end).
Strategies are kept flat (no recursion) so that 10,000 cases fit the test budget.
"""

import json

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from orchestra_jax.envs import EnvConfig
from orchestra_jax.envs.domains import db_digest
from orchestra_jax.envs.functions import FunctionsEnv

ENV = FunctionsEnv(EnvConfig(setting="functions"))
TASKS = ENV.sample_tasks(seed=0, n=30)
INITIAL_DIGESTS = dict(ENV.db_digests)
FUNCTIONS = {f.name: f for d in ENV.domains.values() for f in d.functions}
NAMES = sorted(FUNCTIONS) + ["call_expert", "respond", "", "Respond", "book ticket", "__init__", "eval"]
IDS = sorted({k for db in ENV.initial_db.values() for table in db.values() for k in list(table)[:40]})
ENUMS = sorted({str(v) for f in FUNCTIONS.values() for p in f.params if p.enum for v in p.enum})
KEYS = sorted({p.name for f in FUNCTIONS.values() for p in f.params}) + ["message", "expert", "x", ""]
EXPERTS = ["expert-1", "expert-2", "expert-3", "expert-0"]


def _plausible(param):
    """A value of the right type (often valid) for a parameter, so deeper checks are exercised too."""
    if param.enum is not None:
        return param.enum[0]
    if param.ref is not None:
        return next(iter(ENV.initial_db[next(d for d in ENV.initial_db if param.ref in ENV.initial_db[d])][param.ref]))
    return {"integer": 2, "number": 25.5, "string": "x", "boolean": True}[param.type]


PLAUSIBLE = {name: {p.name: _plausible(p) for p in f.params} for name, f in FUNCTIONS.items()}

values = st.one_of(
    st.sampled_from(IDS + ENUMS + EXPERTS), st.integers(-3, 12), st.integers(), st.booleans(), st.none(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.lists(st.integers(), max_size=2),
    st.just({"a": 1}))
calls = st.tuples(
    st.integers(0, 9),                                            # kind of text (see render)
    st.integers(0, 10_000),                                       # which tool name
    st.dictionaries(st.sampled_from(KEYS), values, max_size=4),   # drawn arguments
    st.integers(0, 400),                                          # cut position (kind 9)
    st.text(max_size=6))                                          # junk (kind 9)


def render(task, kind, name_index, drawn, cut, junk):
    """Assistant text of one fuzz case for `task`."""
    own = [f.name for f in ENV.domains[task.domain].functions]
    plausible = {**PLAUSIBLE, "call_expert": {"expert": task.aliases[0]}, "respond": {"message": "done"}}
    if kind == 9 and cut % 2:                        # arbitrary text
        return junk + NAMES[name_index % len(NAMES)]
    if kind <= 5:                                    # the task's functions: plausible values, some replaced
        name = own[name_index % len(own)]
    elif kind == 6:
        name = ("call_expert", "respond")[name_index % 2]
    else:                                            # any name, other domains' and made-up ones included
        name = NAMES[name_index % len(NAMES)]
    args = drawn
    if name in plausible and kind <= 6:
        args = {**plausible[name], **{k: v for k, v in drawn.items() if k in plausible[name]}}
        if kind == 5:                                # plus unknown keys
            args.update(drawn)
    if kind == 8:                                    # arguments that are not an object
        args = list(drawn.values())
    text = "<tool_call>\n" + json.dumps({"name": name, "arguments": args}, allow_nan=True) + "\n</tool_call>"
    if kind == 9:                                    # truncated / corrupted
        text = text[:cut] + junk
    return text


@settings(max_examples=10_000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(task_index=st.integers(0, len(TASKS) - 1), call=calls, tokens=st.integers(0, 5000))
def test_step_never_raises_and_rejected_calls_change_nothing(task_index, call, tokens):
    state, _ = ENV.reset([TASKS[task_index]], seed=task_index)
    if call[0] % 3 == 0:                             # sometimes start mid-episode, after a few gold calls
        gold = ENV.gold_texts(TASKS[task_index])[:-1]
        state, _ = ENV.step(state, [gold[0]])
    text = render(TASKS[task_index], *call)
    db, snapshot = state.dbs[0], {t: dict(table) for t, table in state.dbs[0].items()}
    touched = set(state.touched[0])
    state, out = ENV.step(state, [text], policy_tokens_in=[tokens], policy_tokens_out=[len(text) // 3])
    obs = out.observations[0]
    assert isinstance(obs, str) and obs
    name = out.info[0].get("tool")
    rejected = (not out.valid[0]) or obs.startswith("Error")
    if rejected or (name in FUNCTIONS and not FUNCTIONS[name].write):
        assert state.dbs[0] is db and state.dbs[0] == snapshot
        assert state.touched[0] == touched
    if not out.valid[0]:
        assert out.tool_index[0] == -1 and obs.startswith(("Error", "Budget"))
    res = ENV.results(state)
    assert res.cost_usd[0] <= ENV.budget.max_usd and res.n_turns[0] <= ENV.budget.max_turns


def test_initial_databases_never_mutated():
    """Runs after the fuzz test in this module: every shared initial database still has its content."""
    assert {n: db_digest(db) for n, db in ENV.initial_db.items()} == INITIAL_DIGESTS
    fresh = FunctionsEnv(EnvConfig(setting="functions"))
    assert fresh.db_digests == INITIAL_DIGESTS
