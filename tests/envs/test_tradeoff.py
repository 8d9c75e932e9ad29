"""The simulated world makes routing worth learning (2,000 tasks of the QA quickstart distribution)."""
import numpy as np
import pytest

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs.baselines import run_policy
from orchestra_jax.envs.stats import compute_stats

N = 2000


@pytest.fixture(scope="module")
def runs():
    env = make_env(EnvConfig(randomize_tools=False, randomize_prices=False))
    tasks = env.sample_tasks(123, N, "test")
    names = ["always_strongest", "cheapest", "rule_based", "direct:answer-1", "direct:answer-math-1"]
    return env, tasks, {n: run_policy(env, n, tasks, seed=123) for n in names}


def test_strongest_beats_cheapest_by_15_points(runs):
    _, _, r = runs
    gap = r["always_strongest"].solved.mean() - r["cheapest"].solved.mean()
    assert gap >= 0.15, gap
    assert r["always_strongest"].cost_usd.mean() > 10 * r["cheapest"].cost_usd.mean()


def test_cheap_specialist_matches_strongest_on_its_domain(runs):
    _, _, r = runs
    m = np.array(r["direct:answer-1"].domains) == "math"
    assert m.sum() > 300
    top, spec = r["direct:answer-1"], r["direct:answer-math-1"]
    assert top.solved[m].mean() - spec.solved[m].mean() <= 0.05
    assert spec.cost_usd[m].mean() < 0.2 * top.cost_usd[m].mean()
    # ...but not outside it: the routing problem is not "always the specialist"
    assert top.solved[~m].mean() - spec.solved[~m].mean() >= 0.2


def test_rule_based_router_reaches_strongest_accuracy_at_half_the_cost(runs):
    _, _, r = runs
    s, rb = r["always_strongest"], r["rule_based"]
    assert s.solved.mean() - rb.solved.mean() <= 0.03, (s.solved.mean(), rb.solved.mean())
    assert rb.cost_usd.mean() <= 0.5 * s.cost_usd.mean()


def test_only_the_strongest_solves_expert_science(runs):
    env, tasks, r = runs
    m = np.array([t.domain == "science" and t.level == 2 for t in tasks])
    assert m.sum() > 80
    assert r["direct:answer-1"].solved[m].mean() - r["cheapest"].solved[m].mean() >= 0.5


def test_compute_stats_checks_pass_on_small_sample():
    env = make_env(EnvConfig(randomize_tools=False, randomize_prices=False))
    stats = compute_stats(env, env.sample_tasks(5, 300, "test"), seed=5,
                          routers=("always_strongest", "cheapest", "rule_based"))
    assert stats["checks"]["strongest_vs_cheapest"]["pass"]
    assert stats["checks"]["specialist"]["pass"]
    assert {r.domain for r in stats["rows"]} == {"all", "math", "science", "factual", "code"}
