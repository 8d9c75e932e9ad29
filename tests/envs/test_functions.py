"""Function-calling setting: spec validation, the engine at ToolScale's scale, gold replay, mutated gold
actions, acting experts, splits and held-out domains, determinism."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import yaml

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs.domains.base import Action, db_digest
from orchestra_jax.envs.functions import FunctionsConfig, FunctionsEnv, FunctionsTask, info_given
from orchestra_jax.envs.functions.engine import build_domain, generate_db
from orchestra_jax.envs.functions.requests import Recipe, RequestBuilder, RequestRecipe
from orchestra_jax.envs.functions.spec import SPEC_DIR, SpecError, known_domains, load_spec, spec_from_dict
from orchestra_jax.envs.functions.tasks import reply_text
from orchestra_jax.text.chat import format_tool_call

DOMAINS = ("railway", "restaurant", "finance", "sport", "ecommerce", "medicine", "entertainment", "education",
           "travel", "weather")


@pytest.fixture(scope="module")
def env() -> FunctionsEnv:
    return make_env(EnvConfig(setting="functions"))


@pytest.fixture(scope="module")
def tasks(env):
    """About 30 tasks of every domain (train domains from split test, held-out ones from heldout_domains)."""
    return env.sample_tasks(3, 210, "test") + env.sample_tasks(3, 90, "heldout_domains")


def play(env, tasks, turns, seed=0):
    state, _ = env.reset(tasks, seed)
    outs = []
    for k in range(max(len(t) for t in turns)):
        state, out = env.step(state, [t[k] if k < len(t) else "" for t in turns])
        outs.append(out)
    return state, env.results(state), outs


def texts(actions):
    return [format_tool_call(a.name, a.arguments) for a in actions]


def writes_of(env, task):
    fns = env.domains[task.domain].by_name
    return [k for k, a in enumerate(task.gold_actions) if a.name in fns and fns[a.name].write]


# ------------------------------------------------------------------------------------------ specs
def test_ten_specs_at_toolscale_scale(env):
    assert set(known_domains()) == set(DOMAINS) and set(env.domains) == set(DOMAINS)
    for name, rt in env.runtimes.items():
        assert 14 <= len(rt.domain.functions) <= 25, name
        assert sum(f.write for f in rt.domain.functions) >= 7, name
        for role in ("user", "item", "order"):
            assert 400 <= len(rt.db[rt.spec.role(role).name]) <= 900, (name, role)
        for table in rt.db.values():
            for key, rec in table.items():   # records are frozen dataclasses keyed by their id
                assert getattr(rec, dataclasses.fields(rec)[0].name) == key
        for f in rt.domain.functions:
            params = json.loads(json.dumps(f.json_schema()))["function"]["parameters"]
            assert params["required"] == [p.name for p in f.params]
        assert len({r.kind for r in rt.spec.requests}) == 9


def _railway():
    return yaml.safe_load((SPEC_DIR / "railway.yaml").read_text())


def _set(d, path, value):
    *head, last = path
    for k in head:
        d = d[k]
    if value is KeyError:
        del d[last]
    else:
        d[last] = value


@pytest.mark.parametrize("path,value,message", [
    (("tables", "trains", "colour"), "red", "tables.trains: unknown key(s) ['colour']"),
    (("tables", "trains", "fields", "origin", "vocab"), "planets", "tables.trains.fields.origin.vocab: unknown vocab 'planets'"),
    (("tables", "trains", "fields", "platform", "gen"), "dice", "tables.trains.fields.platform.gen: unknown generator 'dice'"),
    (("tables", "customers", "fields", "wallet", "min"), -5, "tables.customers.fields.wallet.min: must be >= 0"),
    (("tables", "customers", "balance"), "name", "tables.customers.balance: must name a money field"),
    (("tables", "trains", "options", "first", "stock"), [3], "tables.trains.options.first.stock"),
    (("tables", "trains", "prefix"), "tr", "tables.trains.prefix: must be two capital letters"),
    (("tools", 2, "kind"), "delete_everything", "tools[2].kind: unknown tool kind 'delete_everything'"),
    (("tools", 5, "filters"), ["origin", "platform"], "tools[5].filters: 'platform' is not a choice field"),
    (("tools", 12, "field"), "email", "tools[12].field: must name a choice field of the user table"),
    (("phrases", "item_filter"), "from {origin} to {moon}", "phrases.item_filter: placeholder {moon}"),
    (("phrases", "info_questions", "altitude"), "How high is {name}?", "phrases.info_questions.altitude: not a field"),
    (("requests", 0, "kind"), "teleport", "requests[0].kind: unknown request kind 'teleport'"),
    (("description",), KeyError, "spec: missing key(s) ['description']"),
])
def test_spec_errors_name_the_field(path, value, message):
    d = _railway()
    _set(d, path, value)
    with pytest.raises(SpecError) as e:
        spec_from_dict(d, "railway.yaml")
    assert message in str(e.value) and str(e.value).startswith("domain spec railway.yaml: ")


def test_spec_cross_checks_name_the_field():
    d = _railway()
    d["tools"] = [t for t in d["tools"] if t["kind"] != "cancel"]
    with pytest.raises(SpecError, match=r"requests\[2\]: request kind 'cancel' needs a tool of kind 'cancel'"):
        spec_from_dict(d, "railway.yaml")
    d = _railway()
    d["tools"] = d["tools"][:10]
    with pytest.raises(SpecError, match=r"tools: a domain has 14-25 tools, got 10"):
        spec_from_dict(d, "railway.yaml")
    with pytest.raises(SpecError, match="unknown function-calling domain 'mars'"):
        load_spec("mars")


def test_a_new_domain_is_a_spec_file(tmp_path):
    """A domain made by editing the data only (new names, vocabulary, tables): the engine builds its
    database, tools and tasks, and gold replay solves them."""
    d = _railway()
    d["name"] = "tram"
    d["vocab"]["station"] = ["Nord", "Sud", "Est", "Ouest", "Centre"]
    d["tables"]["trains"]["size"] = 400
    d["tables"]["trains"]["fields"]["departure"]["step"] = 5
    (tmp_path / "tram.yaml").write_text(yaml.safe_dump(d))
    spec = load_spec(str(tmp_path / "tram.yaml"))
    domain, tools = build_domain(spec)
    db = generate_db(spec, np.random.default_rng(0), 400)
    assert len(db["trains"]) == 400 and {t.origin for t in db["trains"].values()} == set(d["vocab"]["station"])
    builder = RequestBuilder(spec, tools)
    from orchestra_jax.envs.functions.env import execute
    done = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        recipe = Recipe(sorted(db["customers"])[seed], tuple(RequestRecipe(builder.draw_kind(rng), seed * 10 + k) for k in range(2)))
        reqs = builder.build(db, recipe, lambda db_, a: execute(domain, db_, a))
        if reqs is not None:
            final, _ = execute(domain, db, [a for r in reqs for a in r.actions])
            done += final is not db
    assert done >= 30


# ------------------------------------------------------------------------------------------ gold
def test_gold_replay_solves_every_task_of_every_domain(env, tasks):
    assert {t.domain for t in tasks} == set(DOMAINS)
    state, res, outs = play(env, tasks, [env.gold_texts(t) for t in tasks])
    assert res.solved.all(), [(tasks[i].task_id, res.end_reason[i]) for i in np.flatnonzero(~res.solved)][:5]
    assert (res.n_turns == [len(t.gold_actions) for t in tasks]).all()
    assert all(o.valid[k] for o in outs for k in range(len(tasks)) if o.observations[k])
    assert all(db_digest(state.dbs[i]) != env.db_digests[t.domain] for i, t in enumerate(tasks))  # all write


def test_tasks_are_toolscale_like(env, tasks):
    n_req = np.array([len(t.requests) for t in tasks])
    assert n_req.min() == 1 and n_req.max() >= 3 and (n_req > 1).mean() > 0.3       # multi-intent
    instructions = " ".join(t.instruction for t in tasks)
    assert "if it has fewer than" in instructions                                    # conditional
    assert sum(bool(t.required_info) for t in tasks) > 0.3 * len(tasks)
    kinds = {r.kind for t in tasks for r in t.requests}
    assert {"book", "book_conditional", "cancel", "update_profile", "lookup_info"} <= kinds
    lv = np.array([t.level for t in tasks])
    actions = np.array([len(t.gold_actions) for t in tasks])
    assert set(lv) == {0, 1, 2} and actions[lv == 2].mean() > actions[lv == 0].mean()   # evolution: harder
    # conditional requests take both branches (the named item is full or not)
    cond = [t for t in tasks if any(r.kind == "book_conditional" for r in t.requests)]
    assert len(cond) > 10


def test_dropped_write_fails(env, tasks):
    rng = np.random.default_rng(0)
    bad = []
    for t in tasks:
        k = int(rng.choice(writes_of(env, t)))
        bad.append(texts(t.gold_actions[:k] + t.gold_actions[k + 1:]))
    _, res, _ = play(env, tasks, bad)
    assert not res.solved.any()


def test_changed_write_argument_fails(env, tasks):
    from orchestra_jax.envs.functions.env import execute
    rng = np.random.default_rng(1)
    bad = []
    for t in tasks:
        k = int(rng.choice(writes_of(env, t)))
        db, _ = execute(env.domains[t.domain], env.initial_db[t.domain], t.gold_actions[:k])
        args = env.perturb(t, t.gold_actions[k], db, rng)
        assert args != t.gold_actions[k].arguments
        bad.append(texts(t.gold_actions[:k] + (Action(t.gold_actions[k].name, args),) + t.gold_actions[k + 1:]))
    _, res, _ = play(env, tasks, bad)
    assert not res.solved.any()


def test_reordered_writes_fail(env, tasks):
    """Swapping the writes of two requests fails, even when they touch unrelated entries (the user asked
    for them in order; the first swapped write leaves the gold path and ends the episode)."""
    multi = [t for t in tasks if len(writes_of(env, t)) >= 2]
    assert len(multi) > 30
    bad = []
    for t in multi:
        w = writes_of(env, t)
        a = list(t.gold_actions)
        a[w[0]], a[w[1]] = a[w[1]], a[w[0]]
        bad.append(texts(a))
    _, res, _ = play(env, multi, bad)
    assert not res.solved.any()
    # mostly ended by the first swapped write; the rest were refused (e.g. a precondition) and answered wrong
    assert np.mean([r == "wrong_write" for r in res.end_reason]) > 0.8


def test_dropped_read_still_succeeds_and_missing_facts_fail(env, tasks):
    """Checks are on the final state and the answer (as in ToolScale), not on the exact call sequence."""
    writes_only = [[a for k, a in enumerate(t.gold_actions) if k in writes_of(env, t) or a.name == "respond"]
                   for t in tasks]
    with_facts = [t for t in tasks if t.required_info]
    no_lookup = [i for i, t in enumerate(tasks) if all(r.write for r in t.requests)]
    _, res, _ = play(env, [tasks[i] for i in no_lookup], [texts(writes_only[i]) for i in no_lookup])
    assert res.solved.all()
    short = [t.gold_actions[:-1] + (Action("respond", {"message": reply_text(t.required_info[1:])}),) for t in with_facts]
    _, res, _ = play(env, with_facts, [texts(a) for a in short])
    assert not res.solved.any()
    fancy = [t.gold_actions[:-1] + (Action("respond", {"message": "Done: " + " / ".join(
        "$" + f if f[0].isdigit() else f.upper() for f in t.required_info)}),) for t in with_facts]
    _, res, _ = play(env, with_facts, [texts(a) for a in fancy])
    assert res.solved.all()


def test_required_information_matching():
    assert info_given("Refund: $55.00.", ["55.00"]) and info_given("it was 1,234.50", ["1234.50"])
    assert info_given("at THE BLUE VINE, 19:00", ["The Blue Vine", "19:00"])
    assert not info_given("refund 155.00", ["55.00"]) and not info_given("refund 55.001", ["55.00"])
    assert not info_given("refund 55.00.5", ["55.00"]) and info_given("gate 9.", ["9"])
    assert not info_given("19:00 " + "x" * 700, ["19:00"], max_chars=600) and info_given("anything", [])


def test_wrong_direct_write_ends_the_episode_with_the_error(env, tasks):
    t = next(t for t in tasks if t.requests[0].write and t.requests[0].kind in ("change_option", "cancel"))
    w = writes_of(env, t)[0]
    rt = env.runtimes[t.domain]
    oid_key = rt.tools.order.id_field
    other = next(o for o, rec in env.initial_db[t.domain][rt.tools.order.name].items()
                 if rec.status == rt.tools.order.active and o != t.gold_actions[w].arguments.get(oid_key))
    wrong = Action(rt.spec.tool_of("cancel").name, {oid_key: other})
    state, res, outs = play(env, [t], [texts(t.gold_actions[:w] + (wrong,) + t.gold_actions[w + 1:])])
    assert res.end_reason == ["wrong_write"] and not res.solved[0] and res.n_turns[0] == w + 1
    assert "Error: this change is not what the user asked for" in outs[w].observations[0]


# ------------------------------------------------------------------------------------------ experts
def _pool_file(tmp_path, skill):
    d = yaml.safe_load((SPEC_DIR.parent / "functions" / "experts.yaml").read_text())
    for e in d["experts"].values():
        e["skill"] = {"default": skill}
        e["kind_skill"] = {}
    p = tmp_path / f"pool{skill}.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


def test_a_perfect_expert_finishes_what_the_orchestrator_started(tmp_path):
    env = make_env(EnvConfig(setting="functions", randomize_tools=False,
                             functions=FunctionsConfig(experts_path=_pool_file(tmp_path, 30.0))))
    tasks = [t for t in env.sample_tasks(5, 120, "test") if len(t.requests) >= 2]
    call = format_tool_call("call_expert", {"expert": "expert-3"})
    # the orchestrator does the first request itself, then delegates everything else
    turns = [texts(t.segments()[0]) + [call] * 8 for t in tasks]
    _, res, _ = play(env, tasks, turns)
    assert res.solved.all()
    assert (res.features[:, 2] == np.array([len(t.requests) for t in tasks])).all()   # one call per request + reply


def test_a_hopeless_expert_makes_every_kind_of_mistake(tmp_path):
    env = make_env(EnvConfig(setting="functions", randomize_tools=False,
                             functions=FunctionsConfig(experts_path=_pool_file(tmp_path, -20.0))))
    tasks = env.sample_tasks(6, 160, "test")
    state, _ = env.reset(tasks, 0)
    state, out = env.step(state, [format_tool_call("call_expert", {"expert": "expert-1"})] * len(tasks))
    outcomes = {i["outcome"] for i in out.info}
    assert outcomes == {"wrong_entity", "wrong_argument", "skipped_step", "premature_reply"}
    res = env.results(state)
    assert not res.solved.any()
    for i, info in enumerate(out.info):
        if info["outcome"] == "skipped_step":   # read, no write, claims done: the database is untouched
            assert state.dbs[i] is env.initial_db[tasks[i].domain] and not out.done[i]
        if info["outcome"] == "premature_reply":
            assert res.end_reason[i] == "answer" and "responded to the user" in out.observations[i]


def test_expert_success_rate_and_bill_follow_the_pool(env):
    tasks = env.sample_tasks(7, 300, "test") + env.sample_tasks(7, 100, "heldout_domains")
    state, _ = env.reset(tasks, 0)
    alias = [t.aliases[0] for t in tasks]
    state, out = env.step(state, [format_tool_call("call_expert", {"expert": a}) for a in alias])
    p = np.array([i["p"] for i in out.info])
    ok = np.array([i["outcome"] == "correct" for i in out.info])
    assert abs(ok.mean() - p.mean()) < 3 * np.sqrt(p.mean() * (1 - p.mean()) / len(p)) + 0.01
    assert ok[np.argsort(p)[:120]].mean() < ok[np.argsort(p)[-120:]].mean() - 0.2
    for i, (t, info) in enumerate(zip(tasks[:50], out.info[:50])):
        m = env.pool.get(alias[i]).model
        scale = t.price_scales[t.aliases.index(alias[i])]
        assert info["expert_usd"] == pytest.approx(scale * (info["tokens_in"] * m.price_in + info["tokens_out"] * m.price_out) / 1e6)
    # skill depends on the domain and on the request kind (the pool's overrides)
    e3 = env.pool.get("expert-3")
    assert e3.p_success("sport", "lookup_item", 0, 0) > e3.p_success("medicine", "lookup_item", 0, 0)
    assert e3.p_success("sport", "update_profile", 0, 0) > e3.p_success("sport", "book_conditional", 0, 0)


# ------------------------------------------------------------------------------------------ splits, config
def test_splits_and_held_out_domains(env):
    held = set(env.fcfg.heldout_domains)
    assert held == {"education", "travel", "weather"}
    for split in ("train", "val", "test", "unseen_tools", "unseen_prices"):
        assert not {t.domain for t in env.sample_tasks(1, 25, split)} & held
    assert {t.domain for t in env.sample_tasks(1, 25, "heldout_domains")} == held
    cfg = EnvConfig(setting="functions", heldout_aliases=("expert-4",))
    e = make_env(cfg)
    assert not any("expert-4" in t.aliases for t in e.sample_tasks(2, 40, "train"))
    assert all("expert-4" in t.aliases for t in e.sample_tasks(2, 30, "unseen_tools"))
    scales = [s for t in e.sample_tasks(2, 30, "unseen_prices") for s in t.price_scales]
    lo, hi = cfg.price_scale_train
    assert all(s < lo or s > hi for s in scales)
    with pytest.raises(ValueError, match="unknown split"):
        e.sample_tasks(0, 1, "holdout")


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="heldout_domains"):
        FunctionsConfig(heldout_domains=("atlantis",))
    with pytest.raises(ValueError, match="min_requests"):
        FunctionsConfig(min_requests=3, max_requests=2)
    with pytest.raises(ValueError, match="unknown function-calling domain 'atlantis'"):
        make_env(EnvConfig(setting="functions", functions=FunctionsConfig(domains=("atlantis",), heldout_domains=())))


def test_yaml_configs_build_the_env():
    from omegaconf import OmegaConf
    from orchestra_jax.envs import env_config_from_dict
    conf = SPEC_DIR.parents[2] / "conf" / "env"
    full = env_config_from_dict(OmegaConf.load(conf / "functions.yaml"))
    assert tuple(full.functions.domains) == DOMAINS and full.preference_mode == "random"
    env = make_env(env_config_from_dict(OmegaConf.load(conf / "functions_quickstart.yaml")))
    assert env.train_domains == ("railway", "restaurant", "finance", "sport", "ecommerce", "medicine", "entertainment")
    assert all(len(t.aliases) == 3 for t in env.sample_tasks(0, 10, "test"))   # every expert but the held-out one


def test_same_seed_same_everything(env, tasks):
    again = make_env(EnvConfig(setting="functions"))
    assert again.db_digests == env.db_digests
    assert [t.to_dict() for t in again.sample_tasks(3, 30, "test")] == [t.to_dict() for t in tasks[:30]]
    call = [format_tool_call("call_expert", {"expert": t.aliases[-1]}) for t in tasks[:30]]
    a = play(env, tasks[:30], [call * 4 for _ in tasks[:30]], seed=9)
    b = play(again, tasks[:30], [call * 4 for _ in tasks[:30]], seed=9)
    assert [o.observations for o in a[2]] == [o.observations for o in b[2]]
    assert (a[1].cost_usd == b[1].cost_usd).all()


def test_task_dict_round_trip_and_errors(env, tasks):
    for t in tasks[:40]:
        assert FunctionsTask.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    d = tasks[0].to_dict()
    with pytest.raises(ValueError, match=r"missing field\(s\) \['requests'\]"):
        FunctionsTask.from_dict({k: v for k, v in d.items() if k != "requests"})
    bad = copy.deepcopy(d)
    bad["requests"][0]["n_actions"] += 1
    with pytest.raises(ValueError, match="field 'requests' covers"):
        FunctionsTask.from_dict(bad)
    with pytest.raises(ValueError, match="made for db_seed=1 db_size=500, env has db_seed=0"):
        env.reset([dataclasses.replace(tasks[0], db_seed=1)], 0)
