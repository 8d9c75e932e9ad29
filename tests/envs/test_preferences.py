"""preference_score against hand-computed values; sampled preferences match their text."""
import numpy as np
import pytest

from orchestra_jax.envs.preferences import (ScoreScales, TEMPLATES, fixed_preference, preference_score,
                                            sample_preference)


def test_preference_score_hand_computed():
    # 2 aliases + outcome, cost, latency
    features = np.array([[1, 0, 1, 0.025, 60.0],    # solved, half the cost scale, half the latency scale
                         [3, 1, 0, 0.001, 1.0],     # unsolved -> 0
                         [0, 2, 1, 0.2, 500.0]])    # solved, over both scales
    solved = features[:, 2].astype(bool)
    pref = np.array([[0, 0, 1, 1, 0],               # (1 + 0.5) / 2 = 0.75
                     [1, 1, 1, 1, 1],
                     [1, 1, 1, 0, 1]])              # (0 + 1 + 1 + 0) / 4 = 0.5
    s = preference_score(features, solved, pref, ScoreScales(calls=1.0, cost_usd=0.05, latency_s=120.0))
    assert s == pytest.approx((0.75 + 0 + 0.5) / 3)


def test_preference_score_errors():
    with pytest.raises(ValueError, match="expected"):
        preference_score(np.zeros((2, 5)), np.zeros(3, bool), np.zeros((2, 5)))


def test_sampled_preferences():
    aliases = ("a-1", "a-2", "b-1")
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        p, text = sample_preference(rng, aliases, ["a-2", "b-1"])
        assert len(p) == 6 and all(0 <= x <= 1 for x in p)
        seen.add("Prefer" if text.startswith("Prefer") else text)
        if text.startswith("Prefer"):
            alias = text[len("Prefer "):-1]
            assert alias in ("a-2", "b-1") and p[aliases.index(alias)] == 1.0
        else:
            assert sum(p[:3]) == 0
    assert len(seen) == len(TEMPLATES)
    assert fixed_preference(2, 1, 0.5, 0) == (0.0, 0.0, 1.0, 0.5, 0.0)
