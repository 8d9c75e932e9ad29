"""Scripted routers on the function-calling setting: the measured trade-offs (fast numbers here; the
env_stats-sized strict checks are marked slow), and pass@k filtering through the factory API."""
import numpy as np
import pytest

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs.baselines import make_policy, run_policy
from orchestra_jax.envs.functions import ExpertRouter
from orchestra_jax.envs.functions.passk import pass_at_k_tasks
from orchestra_jax.envs.functions.stats import compute_function_stats, format_checks, group_reward, report


@pytest.fixture(scope="module")
def env():
    return make_env(EnvConfig(setting="functions", preference_mode="fixed"))


def test_dispatch_gives_the_settings_routers(env):
    assert isinstance(make_policy("rule_based", env), ExpertRouter)
    assert make_policy("tools_first_eps0.1", env).name == "tools_first_eps0.1"


def test_group_reward_matches_a_hand_computation():
    # 2 policies, 1 task, features [calls, outcome, cost, latency]; P = (0, 1, 0.5, 0)
    f = np.array([[[2, 1, 0.02, 10.0]], [[1, 1, 0.01, 30.0]]])
    solved = np.array([[True], [True]])
    r = group_reward(f, solved, np.array([[0, 1, 0.5, 0]]))
    assert r[:, 0].tolist() == [0.0, 0.5]      # outcome constant -> 0; the cheaper one gets the cost weight
    r = group_reward(f, np.array([[True], [False]]), np.array([[0, 1, 0.5, 0]]))
    assert r[:, 0].tolist() == [0.0, 0.0]


def test_direct_calls_beat_experts_on_profile_updates(env):
    """One-request profile updates: tools_first does them itself, exactly and almost for free."""
    tasks = [t for t in env.sample_tasks(21, 500, "test") if len(t.requests) == 1
             and t.requests[0].kind == "update_profile"]
    assert len(tasks) >= 12
    direct = run_policy(env, "tools_first", tasks, 0)
    for router in ("always_strongest", "cheapest", "rule_based"):
        res = run_policy(env, router, tasks, 0)
        assert direct.solved.mean() >= res.solved.mean() and direct.cost_usd.mean() < 0.5 * res.cost_usd.mean()
    assert direct.solved.all()


def test_strongest_is_most_accurate_but_costs_most(env):
    tasks = env.sample_tasks(22, 200, "test")
    res = {p: run_policy(env, p, tasks, 0) for p in ("always_strongest", "cheapest", "rule_based")}
    assert res["always_strongest"].solved.mean() > res["rule_based"].solved.mean() > res["cheapest"].solved.mean() + 0.1
    assert res["always_strongest"].cost_usd.mean() > 1.3 * res["rule_based"].cost_usd.mean()
    assert res["rule_based"].cost_usd.mean() > 2 * res["cheapest"].cost_usd.mean()


def test_pass_at_k_keeps_solvable_not_trivial_tasks(env):
    tasks = env.sample_tasks(23, 40, "train")
    kept, rates = pass_at_k_tasks(env, tasks, seed=1, k=2, teachers=("cheapest", "rule_based"))
    assert 0 < len(kept) < len(tasks)
    assert [t.task_id for t in kept] == [t.task_id for t, r in zip(tasks, rates) if 0 < r < 1]


@pytest.mark.slow
def test_env_stats_checks_pass(env):
    text, stats, ok = report(env, 1400, "test", 0)
    assert ok, format_checks(stats["checks"])[0]


@pytest.mark.parametrize("limits", [{"max_usd": 0.004}, {"max_tokens": 6000}, {"max_turns": 3}])
def test_random_policies_never_exceed_budgets(limits):
    from orchestra_jax.envs.functions import FunctionsConfig
    env = make_env(EnvConfig(setting="functions", **limits,
                             functions=FunctionsConfig(domains=("railway", "sport"), heldout_domains=(), max_turns=0)))
    tasks = env.sample_tasks(4, 60, "test")
    for name in ("random", "always_strongest"):
        res = run_policy(env, name, tasks, 0)
        assert (res.cost_usd <= env.budget.max_usd + 1e-12).all() and (res.tokens <= env.budget.max_tokens).all()
        assert (res.n_turns <= env.budget.max_turns).all() and res.done.all()
        assert not res.solved[res.budget_exceeded].any()
    assert res.budget_exceeded.any()
