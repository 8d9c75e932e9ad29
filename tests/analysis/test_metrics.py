"""Per-policy metrics against direct numpy computations and a naive App. L reference."""
import dataclasses
import json

import numpy as np
import pytest

from orchestra_jax.analysis.metrics import (episode_values, per_domain, policy_metrics, pooled_adherence,
                                            reference_preference, summarise_policies, utility)
from orchestra_jax.envs.base import EpisodeResults
from orchestra_jax.envs.preferences import preference_score


def test_point_values_equal_direct_computation(scripted):
    r = scripted["rule_based"]
    m = policy_metrics(r, n_boot=200, seed=0)
    assert m["accuracy"] == pytest.approx(np.mean(r.solved))
    assert m["mean_cost_usd"] == pytest.approx(np.mean(r.cost_usd))
    assert m["latency_mean_s"] == pytest.approx(np.mean(r.latency_s))
    assert m["latency_p95_s"] == np.quantile(r.latency_s, 0.95, method="inverted_cdf")
    assert m["latency_p99_s"] == np.quantile(r.latency_s, 0.99, method="inverted_cdf")
    assert m["mean_turns"] == pytest.approx(np.mean(r.n_turns))
    assert m["preference_score"] == pytest.approx(preference_score(r.features, r.solved, r.preference))
    p_ref = np.tile(reference_preference(r.features.shape[1]), (len(r.solved), 1))
    assert m["fixed_reward"] == pytest.approx(preference_score(r.features, r.solved, p_ref))
    for a in (0.25, 0.5, 0.75):
        assert m[f"utility_a{a:g}"] == pytest.approx(np.mean(a * r.solved - (1 - a) * r.cost_usd / 0.05))
    for j, name in enumerate(r.feature_names[:-3]):
        assert m[name.replace("calls:", "calls/")] == pytest.approx(r.features[:, j].mean())
    for k, (lo, hi) in m["ci"].items():
        assert lo <= m[k] + 1e-12 and m[k] <= hi + 1e-12, k
    assert m["n_tasks"] == 40 and m["episodes"] == 80


def test_same_seed_same_numbers_other_seed_same_points(scripted, qa_env, play_episodes):
    again = play_episodes(qa_env)  # the episodes replayed from scratch
    a = summarise_policies(scripted, start_policy="random", n_boot=300, seed=7)
    b = summarise_policies(again, start_policy="random", n_boot=300, seed=7)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = summarise_policies(scripted, start_policy="random", n_boot=300, seed=8)
    assert c["rule_based"]["accuracy"] == a["rule_based"]["accuracy"]
    assert c["rule_based"]["ci"]["mean_cost_usd"] != a["rule_based"]["ci"]["mean_cost_usd"]


def _toy(features, solved, task_ids, pref):
    f = np.asarray(features, float)
    n = len(solved)
    return EpisodeResults(features=f, solved=np.asarray(solved, bool), preference=np.tile(pref, (n, 1)),
                          n_turns=np.ones(n, np.int32), cost_usd=f[:, -2], latency_s=f[:, -1],
                          tokens=np.zeros(n, np.int64), n_invalid=np.zeros(n, np.int32), done=np.ones(n, bool),
                          end_reason=["answer"] * n, task_ids=list(task_ids), domains=["math"] * n,
                          feature_names=("calls:a", "calls:b", "outcome", "cost_usd", "latency_s"))


def test_pooled_adherence_by_hand():
    # one task; policy: 2 episodes, start: 1. P = [a 1, b 0, outcome 1, cost 1, latency 0], sum 3
    pref = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    pol = _toy([[1, 0, 1, 0.01, 5], [0, 1, 1, 0.03, 9]], [True, True], ["t", "t"], pref)
    start = _toy([[2, 0, 0, 0.05, 1]], [False], ["t"], pref)
    a, s = pooled_adherence(pol, start)
    # signed cost over the pool: -0.01, -0.03, -0.05 -> normalised 1, 0.5, 0; calls:a 1,0,2 -> .5, 0, 1;
    # outcome 1,1,0 -> 1,1,0
    np.testing.assert_allclose(a, [(0.5 + 1 + 1) / 3, (0 + 1 + 0.5) / 3])
    np.testing.assert_allclose(s, [0.0])  # unsolved
    m = policy_metrics(pol, start=start, n_boot=50)
    assert m["pref_adherence"] == pytest.approx(np.mean(a)) and m["pref_adherence_start"] == 0.0


def test_pooled_adherence_needs_the_same_tasks():
    pref = np.array([0.0, 0.0, 1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="other tasks"):
        pooled_adherence(_toy([[0, 0, 1, 0.1, 1]], [True], ["x"], pref), _toy([[0, 0, 1, 0.1, 1]], [True], ["y"], pref))


def test_per_domain_partitions_the_episodes(scripted):
    r = scripted["cheapest"]
    d = per_domain(r, n_boot=100)
    assert sum(v["episodes"] for v in d.values()) == len(r.solved)
    acc = sum(v["accuracy"] * v["episodes"] for v in d.values()) / len(r.solved)
    assert acc == pytest.approx(np.mean(r.solved))


def test_utility_rejects_bad_alpha():
    with pytest.raises(ValueError, match="a in"):
        utility([True], [0.0], 1.5)


def test_episode_values_lengths(scripted):
    r = scripted["random"]
    vals = episode_values(r, start=scripted["rule_based"])
    assert {len(v) for v in vals.values()} == {len(r.solved)}
    r2 = dataclasses.replace(r, task_ids=[f"other{i}" for i in range(len(r.solved))])
    with pytest.raises(ValueError, match="start policy played other tasks"):
        episode_values(r2, start=scripted["rule_based"])


def test_monotone_cost():
    from orchestra_jax.analysis.runs import monotone_cost

    ci = [[0.9, 1.1], [0.7, 0.95], [0.75, 0.9]]
    pts, within, bad = monotone_cost([0.5, 0.0, 1.0], [0.8, 1.0, 0.85], [ci[1], ci[0], ci[2]])
    assert not pts and within and bad == []   # 0.5 -> 1.0 goes up in the point, inside the intervals
    pts, within, bad = monotone_cost([0.0, 1.0], [0.1, 0.5], [[0.09, 0.11], [0.4, 0.6]])
    assert not pts and not within and bad == [(0.0, 1.0)]
