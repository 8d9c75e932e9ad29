"""summary.summarise / summarise_splits / format_table / write_summary on real scripted episodes."""
import json

import numpy as np
import pytest

from orchestra_jax.summary import (SUMMARY_KEYS, check_summary, flat_metrics, format_table, paired_difference,
                                   pooled_rewards, summarise, summarise_splits, write_summary)
from orchestra_jax.rl.rewards import RewardConfig


@pytest.fixture(scope="module")
def by_split(qa_env, play_episodes):
    return {s: play_episodes(qa_env, split=s, n_tasks=20) for s in ("test", "unseen_tools", "unseen_prices")}


def test_summary_has_every_metric_with_intervals(scripted):
    s = summarise(RewardConfig(), scripted, 40, 2, start_policy="random", n_boot=200)
    check_summary(s, list(scripted))
    for name, m in s["policies"].items():
        for k in ("accuracy", "mean_cost_usd", "latency_p50_s", "latency_p95_s", "latency_p99_s",
                  "utility_a0.25", "utility_a0.5", "utility_a0.75", "fixed_reward", "pref_adherence", "mean_reward"):
            lo, hi = m["ci"][k]
            assert lo <= m[k] + 1e-12 <= hi + 2e-12, (name, k)
        assert set(m["per_domain"]) == set(scripted[name].domains)
    rewards = pooled_rewards(RewardConfig(), scripted, 40, 2)
    assert s["policies"]["cheapest"]["mean_reward"] == pytest.approx(float(np.mean(rewards["cheapest"])))
    assert s["start_policy"] == "random" and "fixed_reward" in s["definitions"]
    table = format_table(s)
    assert "[95% CI]" in table and all(n in table for n in scripted)


def test_splits_and_flat_metrics(by_split):
    s = summarise_splits(RewardConfig(), by_split, 2, primary="test", n_boot=100, start_policy=None)
    assert set(s["splits"]) == {"test", "unseen_tools", "unseen_prices"}
    assert s["policies"] == s["splits"]["test"]["policies"]
    flat = flat_metrics(s)
    assert flat["eval/unseen_prices/rule_based/accuracy"] == s["splits"]["unseen_prices"]["policies"]["rule_based"]["accuracy"]
    assert "unseen_prices" in format_table(s, "unseen_prices") or format_table(s, "unseen_prices")
    with pytest.raises(ValueError, match="primary split"):
        summarise_splits(RewardConfig(), by_split, 2, primary="val")


def test_pooled_rewards_refuse_different_episodes(scripted, qa_env, play_episodes):
    other = play_episodes(qa_env, task_seed=2, policies=("cheapest",))
    with pytest.raises(ValueError, match="played other tasks"):
        pooled_rewards(RewardConfig(), {"a": scripted["cheapest"], "b": other["cheapest"]}, 40, 2)


def test_paired_difference_matches_points(scripted):
    d, lo, hi = paired_difference(scripted["always_strongest"], scripted["cheapest"], "accuracy", n_boot=300)
    assert d == pytest.approx(np.mean(scripted["always_strongest"].solved) - np.mean(scripted["cheapest"].solved))
    assert lo <= d <= hi


def test_paired_differences_of_the_anchors_against_every_policy(scripted):
    """summary["paired"]: the trained policy (compare) and the start policy against every other policy, each
    pair once; the point is the difference of the two policies' means (mean_reward pooled as in the summary),
    inside its interval, and equal to paired_difference; an anchor that was not evaluated is skipped."""
    s = summarise(RewardConfig(), scripted, 40, 2, start_policy="random", n_boot=300,
                  compare=("rule_based", "not_evaluated"))
    others = [n for n in scripted if n not in ("rule_based", "random")]
    assert set(s["paired"]) == ({f"rule_based - {n}" for n in scripted if n != "rule_based"}
                                | {f"random - {n}" for n in others})
    pol = s["policies"]
    for pair, m in s["paired"].items():
        a, b = pair.split(" - ")
        for k in ("mean_reward", "accuracy", "mean_cost_usd"):
            d, lo, hi = m[k]
            assert d == pytest.approx(pol[a][k] - pol[b][k], abs=1e-12), (pair, k)
            assert lo <= d + 1e-12 and d <= hi + 1e-12, (pair, k)
    d = s["paired"]["rule_based - cheapest"]["accuracy"]
    assert d == pytest.approx(list(paired_difference(scripted["rule_based"], scripted["cheapest"], "accuracy",
                                                     n_boot=300)))
    # the paired interval is narrower than the two separate intervals together
    lo_a, hi_a = pol["rule_based"]["ci"]["accuracy"]
    lo_b, hi_b = pol["cheapest"]["ci"]["accuracy"]
    assert d[2] - d[1] < (hi_a - lo_b) - (lo_a - hi_b)
    assert "rule_based - cheapest" in format_table(s) and "paired task-bootstrap" in format_table(s)


def test_write_summary_named_reevaluation(tmp_path, scripted):
    s = summarise(RewardConfig(), scripted, 40, 2, n_boot=50)
    p = write_summary(str(tmp_path), s)
    q = write_summary(str(tmp_path), s, name="eval500")
    assert p.endswith("summary.json") and q.endswith("summary-eval500.json")
    assert json.load(open(q))["policies"]["cheapest"]["accuracy"] == s["policies"]["cheapest"]["accuracy"]
    with pytest.raises(ValueError, match="file-name"):
        write_summary(str(tmp_path), s, name="../x")
    assert set(SUMMARY_KEYS) <= set(s["policies"]["cheapest"])
