"""Function-calling setting: domains, gold actions, mutations, experts, determinism, budgets."""

import dataclasses
import json
import math

import numpy as np
import pytest

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs.domains import DOMAINS, Action, db_digest, get_domain
from orchestra_jax.envs.domains.base import perturb_arguments
from orchestra_jax.envs.functions import FunctionsConfig, FunctionsEnv, FunctionsTask, execute, info_given
from orchestra_jax.envs.tools import sigmoid
from orchestra_jax.text.chat import format_tool_call

N_TASKS = 300


@pytest.fixture(scope="module")
def env() -> FunctionsEnv:
    return make_env(EnvConfig(setting="functions"))


@pytest.fixture(scope="module")
def tasks(env):
    return env.sample_tasks(seed=3, n=N_TASKS)


def play(env, tasks, turns_per_task, seed=0, **step_kwargs):
    """Runs a batch with per-task lists of assistant texts; missing turns are empty strings."""
    state, _ = env.reset(tasks, seed)
    outs = []
    for k in range(max(len(t) for t in turns_per_task)):
        state, out = env.step(state, [t[k] if k < len(t) else "" for t in turns_per_task], **step_kwargs)
        outs.append(out)
    return state, env.results(state), outs


def with_actions(task, actions):
    return dataclasses.replace(task, gold_actions=tuple(actions))


def texts(actions):
    return [format_tool_call(a.name, a.arguments) for a in actions]


# ------------------------------------------------------------------------------------------ domains
def test_domains_have_big_typed_databases_and_enough_functions(env):
    assert set(env.domains) == {"railway", "restaurant", "finance"}
    for name, db in env.initial_db.items():
        domain = env.domains[name]
        assert len(domain.functions) >= 8, name
        assert sum(f.write for f in domain.functions) >= 4, name
        assert max(len(t) for t in db.values()) >= 200, name
        for table in db.values():
            for key, rec in table.items():
                assert dataclasses.is_dataclass(rec) and getattr(rec, dataclasses.fields(rec)[0].name) == key
        for f in domain.functions:
            schema = json.loads(json.dumps(f.json_schema()))
            params = schema["function"]["parameters"]
            assert params["required"] == [p.name for p in f.params]
            assert all(p["type"] in ("string", "integer", "number", "boolean") for p in params["properties"].values())


def test_databases_are_seeded():
    a = FunctionsEnv(EnvConfig(setting="functions", functions=FunctionsConfig(domains=("finance",), db_seed=1)))
    b = FunctionsEnv(EnvConfig(setting="functions", functions=FunctionsConfig(domains=("finance", "railway"),
                                                                               db_seed=1)))
    c = FunctionsEnv(EnvConfig(setting="functions", functions=FunctionsConfig(domains=("finance",), db_seed=2)))
    assert a.db_digests["finance"] == b.db_digests["finance"]   # independent of the other domains
    assert a.db_digests["finance"] != c.db_digests["finance"]


def test_railway_functions_hand_computed():
    d = get_domain("railway")
    db = d.generate_db(np.random.default_rng(0), 50)
    t = next(t for t in db["trains"].values() if t.seats_first >= 2)
    c = next(iter(db["customers"].values()))
    c = dataclasses.replace(c, wallet_cents=10**7)
    db = {**db, "customers": {**db["customers"], c.customer_id: c}}
    res = d.call("book_ticket", {"customer_id": c.customer_id, "train_id": t.train_id, "cabin": "first",
                                 "seats": 2}, db)
    assert res.ok, res.output
    new = res.db
    assert new["trains"][t.train_id].seats_first == t.seats_first - 2
    assert new["trains"][t.train_id].seats_economy == t.seats_economy
    assert new["customers"][c.customer_id].wallet_cents == 10**7 - 2 * t.price_first_cents
    bid = json.loads(res.output)["booking_id"]
    assert bid == f"BK{len(db['bookings']) + 1:05d}" and bid not in db["bookings"]   # input untouched
    assert set(res.touched) == {("bookings", bid), ("trains", t.train_id), ("customers", c.customer_id)}
    back = d.call("cancel_booking", {"booking_id": bid}, new)
    assert json.loads(back.output)["refund"] == f"{2 * t.price_first_cents / 100:.2f}"
    assert back.db["customers"][c.customer_id] == db["customers"][c.customer_id]
    assert back.db["trains"] == db["trains"] and back.db["bookings"][bid].status == "cancelled"
    again = d.call("cancel_booking", {"booking_id": bid}, back.db)
    assert not again.ok and again.stage == "precondition" and again.db is back.db


def test_finance_transfer_and_money_validation():
    d = get_domain("finance")
    db = d.generate_db(np.random.default_rng(1), 60)
    accs = [a for a in db["accounts"].values() if a.status == "active" and a.balance_cents >= 10_000]
    src, dst = accs[0], accs[1]
    res = d.call("transfer", {"from_account_id": src.account_id, "to_account_id": dst.account_id,
                              "amount": 12.34}, db)
    assert res.ok, res.output
    assert res.db["accounts"][src.account_id].balance_cents == src.balance_cents - 1234
    assert res.db["accounts"][dst.account_id].balance_cents == dst.balance_cents + 1234
    new_tx = set(res.db["transactions"]) - set(db["transactions"])
    assert sorted(res.db["transactions"][k].amount_cents for k in new_tx) == [-1234, 1234]
    for bad in (12.345, -1, 0, "12.00", True, None, float("inf"), src.balance_cents / 100 + 1):
        r = d.call("transfer", {"from_account_id": src.account_id, "to_account_id": dst.account_id,
                                "amount": bad}, db)
        assert not r.ok and r.db is db, bad
    r = d.call("transfer", {"from_account_id": src.account_id, "to_account_id": "AC99999", "amount": 1}, db)
    assert not r.ok and "AC99999" in r.output


def test_restaurant_capacity_is_enforced():
    d = get_domain("restaurant")
    db = d.generate_db(np.random.default_rng(2), 40)
    r = next(iter(db["restaurants"].values()))
    slot = {"restaurant_id": r.restaurant_id, "date": "2026-05-01", "time": "18:00"}
    free = json.loads(d.call("check_availability", slot, db).output)["free_seats"]
    taken = sum(v.party_size for v in db["reservations"].values() if v.status == "confirmed"
                and (v.restaurant_id, v.date, v.time) == (r.restaurant_id, "2026-05-01", "18:00"))
    assert free == r.capacity - taken
    if free < 12:
        over = d.call("make_reservation", {"customer_id": "CU00001", **slot, "party_size": free + 1}, db)
        assert not over.ok and over.stage == "precondition"
    if free >= 1:
        ok = d.call("make_reservation", {"customer_id": "CU00001", **slot, "party_size": 1}, db)
        assert ok.ok and json.loads(d.call("check_availability", slot, ok.db).output)["free_seats"] == free - 1


# ------------------------------------------------------------------------------------------ gold / mutations
def test_tasks_are_rich(tasks):
    assert {t.domain for t in tasks} == set(DOMAINS)
    assert {t.level for t in tasks} == {0, 1, 2}
    assert {t.n_writes for t in tasks} == {1, 2, 3}
    assert any(t.n_distractors for t in tasks) and any(t.required_info for t in tasks)
    names = {a.name for t in tasks for a in t.gold_actions}
    writes = {f.name for d in DOMAINS.values() for f in d.functions if f.write}
    assert writes <= names        # every write function appears in some gold sequence


def test_gold_actions_solve_every_task(env, tasks):
    state, res, outs = play(env, tasks, [texts(t.gold_actions) for t in tasks])
    assert res.solved.all(), [res.end_reason[i] for i in np.flatnonzero(~res.solved)][:5]
    assert (res.n_turns == np.array([len(t.gold_actions) for t in tasks])).all()
    assert all(o.valid[k] for o in outs for k in range(len(tasks)) if o.observations[k])
    for i, t in enumerate(tasks[:60]):   # the episode's database equals the gold actions run directly
        gold_db, _, _ = execute(env.domains[t.domain], env.initial_db[t.domain], t.gold_actions)
        assert db_digest(state.dbs[i]) == db_digest(gold_db)
        assert db_digest(gold_db) != env.db_digests[t.domain]   # every task writes something


def _write_positions(env, task):
    spec = env.domains[task.domain].by_name
    return [k for k, a in enumerate(task.gold_actions) if a.name in spec and spec[a.name].write]


def test_dropped_write_fails(env, tasks):
    rng = np.random.default_rng(0)
    mutated = []
    for t in tasks:
        k = int(rng.choice(_write_positions(env, t)))
        mutated.append(with_actions(t, t.gold_actions[:k] + t.gold_actions[k + 1:]))
    _, res, _ = play(env, tasks, [texts(m.gold_actions) for m in mutated])
    assert not res.solved.any()


def test_dropped_read_still_succeeds(env, tasks):
    """Reads do not change the database: the checks are on state, not on the exact call sequence."""
    keep = [(t, [a for a in t.gold_actions if a.name == "respond" or env.domains[t.domain].by_name[a.name].write])
            for t in tasks[:100]]
    _, res, _ = play(env, [t for t, _ in keep], [texts(a) for _, a in keep])
    assert res.solved.all()


def test_changed_argument_fails(env, tasks):
    rng = np.random.default_rng(1)
    mutated = []
    for t in tasks:
        k = int(rng.choice(_write_positions(env, t)))
        a = t.gold_actions[k]
        # perturb against the database the call sees in the gold run
        db, _, _ = execute(env.domains[t.domain], env.initial_db[t.domain], t.gold_actions[:k])
        args = perturb_arguments(env.domains[t.domain].by_name[a.name], a.arguments, db, rng)
        assert args != a.arguments
        mutated.append(list(t.gold_actions[:k]) + [Action(a.name, args)] + list(t.gold_actions[k + 1:]))
    _, res, _ = play(env, tasks, [texts(m) for m in mutated])
    assert not res.solved.any()


def test_missing_required_information_fails(env, tasks):
    with_facts = [t for t in tasks if t.required_info]
    assert len(with_facts) > 50
    bad = [list(t.gold_actions[:-1]) + [Action("respond", {"message": "All done, " +
                                                           ", ".join(t.required_info[1:])})]
           for t in with_facts]
    _, res, _ = play(env, with_facts, [texts(b) for b in bad])
    assert not res.solved.any()
    # the facts in other words (currency sign, thousands separator, case) still count
    fancy = [list(t.gold_actions[:-1]) + [Action("respond", {"message": "Done: " + " / ".join(
        "$" + f if f[0].isdigit() else f.upper() for f in t.required_info)})] for t in with_facts]
    _, res, _ = play(env, with_facts, [texts(b) for b in fancy])
    assert res.solved.all()


def test_required_information_matching():
    assert info_given("Refund: $55.00.", ["55.00"]) and info_given("it was 1,234.50", ["1234.50"])
    assert info_given("booked at THE BLUE VINE, 19:00", ["The Blue Vine", "19:00"])
    assert not info_given("refund 155.00", ["55.00"]) and not info_given("refund 55.001", ["55.00"])
    assert not info_given("19:00 " + "x" * 700, ["19:00"], max_chars=600)
    assert info_given("anything", [])


def _segments(env, task):
    """Gold actions grouped per request: (reads..., write)."""
    segs, cur = [], []
    for a in task.gold_actions[:-1]:
        cur.append(a)
        if env.domains[task.domain].by_name[a.name].write:
            segs.append(cur)
            cur = []
    return segs


def test_swapped_order_fails_where_it_matters(env, tasks):
    """Two creations swapped get each other's ids (fail); two edits of unrelated entries commute."""
    creates = {"book_ticket", "make_reservation", "transfer"}
    matter, commute = [], []
    for t in tasks:
        segs = _segments(env, t)
        for k in range(len(segs) - 1):
            w1, w2 = segs[k][-1], segs[k + 1][-1]
            swapped = [a for s in segs[:k] + [segs[k + 1], segs[k]] + segs[k + 2:] for a in s] + [t.gold_actions[-1]]
            if w1.name in creates and w2.name in creates:
                matter.append((t, swapped))
            elif w1.name not in creates and w2.name not in creates and t.domain != "restaurant":
                commute.append((t, swapped))   # restaurant edits can compete for the same slot's seats
    assert len(matter) > 10 and len(commute) > 10
    _, res, _ = play(env, [t for t, _ in matter], [texts(s) for _, s in matter])
    assert not res.solved.any()
    _, res, _ = play(env, [t for t, _ in commute], [texts(s) for _, s in commute])
    assert res.solved.all()


def test_touched_entries_must_match(env, tasks):
    """Setting a request and setting it back leaves the same database but touches an extra entry."""
    t = next(t for t in tasks if t.domain == "restaurant")
    db = env.initial_db["restaurant"]
    rv = next(r for r in db["reservations"].values() if r.status == "confirmed"
              and all(r.reservation_id not in json.dumps(a.arguments) for a in t.gold_actions))
    other = "quiet table" if rv.special_request != "quiet table" else "window seat"
    detour = [Action("set_special_request", {"reservation_id": rv.reservation_id, "request": other}),
              Action("set_special_request", {"reservation_id": rv.reservation_id, "request": rv.special_request})]
    seq = texts(detour + list(t.gold_actions))
    state, res, _ = play(env, [t], [seq])
    assert state.checks[0] == {"db_match": True, "info_given": True, "touched_match": False}
    assert not res.solved[0]
    lax = FunctionsEnv(EnvConfig(setting="functions", functions=FunctionsConfig(check_touched=False)))
    _, res, _ = play(lax, [t], [seq])
    assert res.solved[0]


# ------------------------------------------------------------------------------------------ errors
def test_bad_calls_give_errors_and_never_change_the_database(env, tasks):
    t = next(t for t in tasks if t.domain == "railway")
    cases = [
        "no tool call here",
        "<tool_call>\n{not json}\n</tool_call>",
        format_tool_call("teleport", {"to": "Mars"}),
        format_tool_call("book_ticket", {"customer_id": "CU00001"}),                       # missing args
        format_tool_call("book_ticket", {"customer_id": "CU00001", "train_id": "TR00001", "cabin": "first",
                                         "seats": "2"}),                                     # wrong type
        format_tool_call("book_ticket", {"customer_id": "CU00001", "train_id": "TR99999", "cabin": "first",
                                         "seats": 1}),                                       # unknown entry
        format_tool_call("book_ticket", {"customer_id": "CU00001", "train_id": "TR00001", "cabin": "first",
                                         "seats": 1, "coupon": "FREE"}),                     # unknown argument
        format_tool_call("cancel_booking", {"booking_id": 5}),
        format_tool_call("call_expert", {"expert": "expert-9"}),
        format_tool_call("respond", {"msg": "hi"}),
        format_tool_call("get_booking", {"booking_id": "BK00001"}) * 2,                      # two calls
        format_tool_call("get_booking", {"booking_id": "B" * 100_000}),                      # huge value
        format_tool_call("x" * 5000, {"y" * 5000: 1}),                                       # huge name
    ]
    state, _ = env.reset([t] * len(cases), 0)
    before = [db_digest(db) for db in state.dbs]
    state, out = env.step(state, cases)
    assert not out.valid.any() and not out.done.any()
    assert all(o.startswith("Error") for o in out.observations), out.observations
    assert max(len(o) for o in out.observations) < 1000     # errors quote at most a short excerpt
    assert [db_digest(db) for db in state.dbs] == before and all(not s for s in state.touched)
    assert (env.results(state).n_invalid == 1).all()


# ------------------------------------------------------------------------------------------ experts
def test_expert_success_rate_matches_skill_and_cost_matches_prices(env, tasks):
    """One expert call on fresh episodes: P(correct step) = sigmoid(skill - slope*level - hidden)."""
    base = tasks[0]
    n = 1500
    batch = [dataclasses.replace(base, task_id=f"x{i}", aliases=("expert-2",), price_scales=(2.0,))
             for i in range(n)]
    state, _ = env.reset(batch, seed=11)
    state, out = env.step(state, [format_tool_call("call_expert", {"expert": "expert-2"})] * n,
                          policy_tokens_in=[1000] * n, policy_tokens_out=[20] * n)
    m = env.roster.models["gpt-5-mini"]
    p = sigmoid(m.skill_in(base.domain) - m.slope * (0.0, 1.0, 2.0)[base.level] - base.hidden_difficulty)
    correct = np.array([o["outcome"] == "correct" for o in out.info])
    assert abs(correct.mean() - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3
    assert {o["outcome"] for o in out.info} <= {"correct", "wrong", "nothing"}
    assert all(o.startswith("[expert-2]") and "<tool_call>" not in o for o in out.observations)
    for k in range(20):
        info = out.info[k]
        assert info["tokens_in"] == 1000 + env.fcfg.expert_context_tokens
        expert = 2.0 * (info["tokens_in"] * 0.25 + info["tokens_out"] * 2.0) / 1e6
        orch = (1000 + 20) * env.orchestrator.price_in / 1e6
        assert out.cost_usd[k] == pytest.approx(expert + orch, rel=1e-9)
    res = env.results(state)
    col = env.tool_aliases.index("expert-2")
    assert (res.features[:, col] == 1).all() and (res.features[:, :col] == 0).all()
    assert (out.tool_index == col).all()
    # a correct step did the gold reads and write; the database now equals the first gold prefix
    for i in np.flatnonzero(correct)[:50]:
        assert env.progress(state, i) == 1


# ------------------------------------------------------------------------------------------ determinism
def _random_policy_turns(env, tasks, seed, n_turns=10):
    rng = np.random.default_rng(seed)
    turns = []
    for t in tasks:
        seq = []
        for _ in range(n_turns):
            u = rng.random()
            if u < 0.4:
                seq.append(format_tool_call("call_expert", {"expert": str(rng.choice(t.aliases))}))
            elif u < 0.7:
                a = t.gold_actions[int(rng.integers(len(t.gold_actions) - 1))]
                seq.append(format_tool_call(a.name, a.arguments))
            elif u < 0.8:
                seq.append(format_tool_call("respond", {"message": " ".join(t.required_info)}))
            else:
                seq.append("garbage " + str(rng.integers(1000)))
        turns.append(seq)
    return turns


def test_same_seed_same_tasks_dbs_observations_outcomes(env):
    t1, t2 = env.sample_tasks(5, 40), env.sample_tasks(5, 40)
    assert [t.to_dict() for t in t1] == [t.to_dict() for t in t2]
    assert env.sample_tasks(6, 40)[0].to_dict() != t1[0].to_dict()
    assert env.sample_tasks(5, 40, split="val")[0].to_dict() != t1[0].to_dict()
    turns = _random_policy_turns(env, t1, 0)
    s1, r1, o1 = play(env, t1, turns, seed=9)
    s2, r2, o2 = play(env, t2, turns, seed=9)
    assert [o.observations for o in o1] == [o.observations for o in o2]
    assert np.array_equal(r1.features, r2.features) and np.array_equal(r1.solved, r2.solved)
    assert [db_digest(a) for a in s1.dbs] == [db_digest(b) for b in s2.dbs]
    # an episode does not depend on the rest of its batch
    s3, r3, o3 = play(env, t1[10:20], turns[10:20], seed=9)
    s3.episode_ids  # noqa: B018
    state, _ = env.reset(t1[10:20], 9, episode_ids=range(10, 20))
    for k in range(len(turns[0])):
        state, out = env.step(state, [tt[k] for tt in turns[10:20]])
        assert out.observations == o1[k].observations[10:20]
    assert np.array_equal(env.results(state).features, r1.features[10:20])


def test_task_dict_round_trip_and_errors(env, tasks):
    for t in tasks[:30]:
        d = json.loads(json.dumps(t.to_dict()))
        assert FunctionsTask.from_dict(d) == t
    d = tasks[0].to_dict()
    with pytest.raises(ValueError, match="instruction"):
        FunctionsTask.from_dict({k: v for k, v in d.items() if k != "instruction"})
    with pytest.raises(ValueError, match="gold_actions"):
        FunctionsTask.from_dict({**d, "gold_actions": [{"name": "x"}]})
    with pytest.raises(ValueError, match="db_seed"):
        env.reset([dataclasses.replace(tasks[0], db_seed=99)], 0)
    state, prompts = env.reset([d], 0)     # dicts are accepted
    assert prompts[0]["messages"][-1]["content"].startswith(tasks[0].instruction)


# ------------------------------------------------------------------------------------------ budgets
@pytest.mark.parametrize("limits", [dict(max_turns=3), dict(max_tokens=9000), dict(max_usd=0.004)])
def test_random_policies_never_exceed_budgets(limits):
    cfg = EnvConfig(setting="functions", functions=FunctionsConfig(max_turns=0), **{
        "max_turns": 30, "max_tokens": 10**6, "max_usd": 10.0, **limits})
    env = FunctionsEnv(cfg)
    tasks = env.sample_tasks(0, 120)
    rng = np.random.default_rng(1)
    turns = _random_policy_turns(env, tasks, 2, n_turns=30)
    state, _ = env.reset(tasks, 0)
    for k in range(30):
        tin, tout = rng.integers(0, 3000, len(tasks)), rng.integers(0, 400, len(tasks))
        state, out = env.step(state, [t[k] for t in turns], tin, tout)
        res = env.results(state)
        assert (res.n_turns <= cfg.max_turns).all()
        assert (res.tokens <= cfg.max_tokens).all()
        assert (res.cost_usd <= cfg.max_usd + 1e-12).all()
    assert res.done.all()
    over = res.budget_exceeded
    assert over.any() and not res.solved[over].any()
    assert set(np.array(res.end_reason)[over]) == {"max_" + next(iter(limits))[4:]}


def test_yaml_config_builds_the_env():
    import pathlib

    import yaml

    from orchestra_jax.envs import env_config_from_dict

    path = pathlib.Path(__file__).resolve().parents[2] / "conf/env/functions.yaml"
    cfg = env_config_from_dict(yaml.safe_load(path.read_text()))
    env = make_env(cfg)
    assert isinstance(env, FunctionsEnv) and env.budget.max_turns == 16
    assert env.tool_aliases == ("expert-1", "expert-2", "expert-3")
    tasks = env.sample_tasks(0, 20)
    assert any(t.preference_text for t in tasks)
    with pytest.raises(ValueError, match="db_size"):
        env_config_from_dict({"setting": "functions", "functions": {"db_size": 3}})
    with pytest.raises(ValueError, match="unknown function-calling domain"):
        make_env({"setting": "functions", "functions": {"domains": ["space"]}})


def test_scripted_policies_trade_accuracy_for_cost(env, tasks):
    from orchestra_jax.envs.baselines import rollout
    from orchestra_jax.envs.functions import make_function_policy, parse_experts

    for t in tasks[:20]:
        for style in ("compact", "full"):
            e = FunctionsEnv(EnvConfig(setting="functions", description_style=style)) if style == "full" else env
            items = parse_experts(e.prompt(t)["tools"])
            assert [m.alias for m in items] == list(t.aliases)
            prices = [e.roster.alias_model("functions", a).price_out * s for a, s in zip(t.aliases, t.price_scales)]
            assert [m.price_out for m in items] == pytest.approx(prices, rel=0.06, abs=0.006)
    sub = tasks[:150]
    res = {name: rollout(env, make_function_policy(name), sub, seed=0)[0]
           for name in ("always_strongest", "cheapest", "random")}
    acc = {k: r.solved.mean() for k, r in res.items()}
    cost = {k: r.cost_usd.mean() for k, r in res.items()}
    assert acc["always_strongest"] > acc["cheapest"] + 0.08 and acc["cheapest"] > acc["random"]
    assert 0.5 < acc["cheapest"] and acc["always_strongest"] < 0.98
    assert cost["cheapest"] < 0.8 * cost["always_strongest"]
    with pytest.raises(ValueError, match="unknown function-calling policy"):
        make_function_policy("oracle")


_FINGERPRINT_SCRIPT = """
import hashlib, json
from orchestra_jax.envs import make_env
from orchestra_jax.envs.baselines import rollout
from orchestra_jax.envs.functions import make_function_policy
env = make_env({"setting": "functions", "preference_mode": "random"})
tasks = env.sample_tasks(4, 40, split="test")
res, trajs = rollout(env, make_function_policy("random"), tasks, seed=2)
blob = json.dumps([[t.to_dict() for t in tasks], env.db_digests, res.features.tolist(),
                   [t.observations for t in trajs]], sort_keys=True)
print(hashlib.sha256(blob.encode()).hexdigest())
"""


def test_determinism_across_processes_and_hash_seeds():
    """Same seed, same tasks, databases, observations and outcomes in fresh interpreters whose str hashing
    differs (catches any dependence on set order or Python's salted hash)."""
    import os
    import subprocess
    import sys

    outs = []
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run([sys.executable, "-c", _FINGERPRINT_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        outs.append(run.stdout.strip())
    assert len(outs[0]) == 64 and outs[0] == outs[1]
