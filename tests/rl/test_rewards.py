"""Rewards on hand-computed groups (ties, a constant feature, an all-fail group) and running statistics."""
import numpy as np
import pytest

from orchestra_jax.rl.rewards import (RewardConfig, chebyshev_reward, compute_rewards, init_reward_state,
                                      paper_reward, update_moments)

# 2 tools + outcome, cost $, latency s
GROUP0 = np.array([[1, 1, 1, 0.2, 10],
                   [1, 1, 1, 0.2, 30],   # ties trajectory 0 on calls, outcome and cost
                   [0, 1, 0, 0.1, 20],   # tool 1 is called once by everybody: a constant feature
                   [2, 1, 1, 0.6, 10]], np.float32)
SOLVED0 = np.array([True, True, False, True])
GROUP1 = np.array([[0, 1, 0, 0.3, 5], [1, 0, 0, 0.1, 7], [0, 0, 0, 0.2, 1], [3, 3, 0, 0.9, 2]], np.float32)
P = np.array([0.5, 1.0, 1.0, 0.5, 0.25], np.float32)


def _batch():
    features = np.stack([GROUP0, GROUP1])
    solved = np.stack([SOLVED0, np.zeros(4, bool)])
    return features, solved, np.stack([P, P])


def test_paper_reward_by_hand():
    features, solved, pref = _batch()
    reward = np.asarray(paper_reward(features, solved, pref))
    # group 0 normalised: calls0 [.5 .5 0 1], calls1 constant -> 0, outcome [1 1 0 1],
    # -cost [.8 .8 1 0], -latency [1 0 .5 1]; trajectory 2 is unsolved -> 0
    expected0 = [0.25 + 1 + 0.4 + 0.25, 0.25 + 1 + 0.4, 0.0, 0.5 + 1 + 0 + 0.25]
    np.testing.assert_allclose(reward[0], expected0, rtol=1e-6)
    np.testing.assert_array_equal(reward[1], np.zeros(4))  # all failed


def test_paper_reward_accepts_numpy_lists_and_is_jittable():
    import jax
    features, solved, pref = _batch()
    np.testing.assert_allclose(np.asarray(jax.jit(paper_reward)(features, solved, pref)),
                               np.asarray(paper_reward(features.tolist(), solved.tolist(), pref.tolist())), rtol=1e-6)


def test_cheaper_correct_trajectory_scores_higher_when_cost_is_weighted():
    # identical except cost; the released code's sign bug would rank the expensive one higher
    features = np.array([[[1, 0, 1, 0.02, 5], [1, 0, 1, 0.50, 5], [0, 1, 0, 0.10, 5]]], np.float32)
    solved = np.array([[True, True, False]])
    pref = np.array([[0, 0, 1, 1, 0]], np.float32)
    reward = np.asarray(paper_reward(features, solved, pref))[0]
    assert reward[0] > reward[1]
    np.testing.assert_allclose(reward, [2.0, 1.0, 0.0], rtol=1e-6)
    cheb = np.asarray(chebyshev_reward(features, solved, pref))[0]
    assert cheb[0] > cheb[1]


def test_chebyshev_by_hand():
    features, solved, pref = _batch()
    reward = np.asarray(chebyshev_reward(features, solved, pref))
    # constant feature -> at its ideal (regret 0); reward = 1 - max_f P_f (1 - n_f)
    np.testing.assert_allclose(reward[0], [0.75, 0.75, 0.0, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(reward[1], np.zeros(4))


def test_chebyshev_reaches_non_convex_pareto_point():
    # A cheap but slow, B fast but expensive, C balanced yet below the A-B line (non-convex region):
    # no positive linear weighting ranks C first; Chebyshev with equal weights does.
    features = np.array([[[0, 0, 1, 0.0, 1.0], [0, 0, 1, 1.0, 0.0], [0, 0, 1, 0.55, 0.55]]], np.float32)
    solved = np.ones((1, 3), bool)
    for w in ([0, 0, 0, 1, 1], [0, 0, 0, 0.7, 0.3], [0, 0, 0, 0.3, 0.7]):
        pref = np.array([w], np.float32)
        assert np.argmax(np.asarray(paper_reward(features, solved, pref))[0]) != 2
    cheb = np.asarray(chebyshev_reward(features, solved, np.array([[0, 0, 0, 1, 1]], np.float32)))[0]
    assert np.argmax(cheb) == 2
    np.testing.assert_allclose(cheb, [0.0, 0.0, 0.45], atol=1e-6)


def test_running_moments_match_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(n, 2)) * [1, 10] + [3, 50] for n in (5, 12, 1, 7)]
    state = init_reward_state()
    for b in batches:
        state = update_moments(state, b)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(np.asarray(state.mean), everything.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state.var), everything.var(0), rtol=1e-4)
    assert float(state.count) == len(everything)


def test_zscore_reward_by_hand_and_state_threads():
    features, solved, pref = _batch()
    cfg = RewardConfig(kind="zscore", cost_weight=0.3, latency_weight=0.7, zscore_eps=0.0)
    reward, state, metrics = compute_rewards(cfg, features, solved, pref, init_reward_state())
    cost, latency = features[..., 3], features[..., 4]
    z_cost = (cost - cost.mean()) / cost.std()
    z_lat = (latency - latency.mean()) / latency.std()
    np.testing.assert_allclose(np.asarray(reward), features[..., 2] - (0.3 * z_cost + 0.7 * z_lat), rtol=1e-5,
                               atol=1e-6)
    # second batch uses statistics over both batches
    reward2, state2, _ = compute_rewards(cfg, features * [1, 1, 1, 2, 1], solved, pref, state)
    all_cost = np.concatenate([cost.ravel(), 2 * cost.ravel()])
    z2 = (2 * cost - all_cost.mean()) / all_cost.std()
    all_lat = np.concatenate([latency.ravel()] * 2)
    expected = features[..., 2] - (0.3 * z2 + 0.7 * (latency - all_lat.mean()) / all_lat.std())
    np.testing.assert_allclose(np.asarray(reward2), expected, rtol=1e-5, atol=1e-5)
    assert float(state2.count) == 16
    np.testing.assert_allclose(float(metrics["reward/solved_rate"]), 3 / 8)


def test_compute_rewards_dispatch_and_errors():
    features, solved, pref = _batch()
    r, state, _ = compute_rewards(RewardConfig(kind="paper"), features, solved, pref, None)
    np.testing.assert_allclose(np.asarray(r), np.asarray(paper_reward(features, solved, pref)))
    r, _, _ = compute_rewards(RewardConfig(kind="chebyshev"), features, solved, pref, state)
    np.testing.assert_allclose(np.asarray(r), np.asarray(chebyshev_reward(features, solved, pref)))
    with pytest.raises(ValueError, match="kind"):
        compute_rewards(RewardConfig(kind="linear"), features, solved, pref)
    with pytest.raises(ValueError, match="preference"):
        paper_reward(features, solved, pref[:, :4])
    with pytest.raises(ValueError, match="solved"):
        paper_reward(features, solved[:, :3], pref)
