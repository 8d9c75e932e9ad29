"""Group advantages against numpy references."""
import numpy as np
import pytest

from orchestra_jax.rl.advantages import AdvantageConfig, group_advantages

REWARDS = np.array([[1.0, 0.0, 0.0, 1.0],
                    [0.5, 0.5, 0.5, 0.5],     # zero variance
                    [0.0, 0.1, 0.0, 0.12],    # small std: filtered at 0.1
                    [3.0, 0.0, 0.0, 0.0]], np.float32)


def test_default_is_sample_std_z_score():
    adv, keep, metrics = group_advantages(REWARDS, AdvantageConfig())
    mean = REWARDS.mean(1, keepdims=True)
    std = REWARDS.std(1, ddof=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(adv), (REWARDS - mean) / (std + 1e-6), rtol=1e-5, atol=1e-6)
    assert np.asarray(keep).all()
    assert float(metrics["adv/zero_variance_groups"]) == 1
    np.testing.assert_allclose(float(metrics["adv/zero_variance_frac"]), 0.25)


def test_population_std_no_scaling_clip_and_filter():
    adv, _, _ = group_advantages(REWARDS, AdvantageConfig(std="population", eps=0.0, min_group_std=None))
    row = REWARDS[0]
    np.testing.assert_allclose(np.asarray(adv)[0], (row - row.mean()) / row.std(), rtol=1e-6)

    adv, _, _ = group_advantages(REWARDS, AdvantageConfig(scale_by_std=False))  # Dr. GRPO
    np.testing.assert_allclose(np.asarray(adv), REWARDS - REWARDS.mean(1, keepdims=True), atol=1e-7)

    adv, keep, metrics = group_advantages(REWARDS, AdvantageConfig(clip=1.2, min_group_std=0.1))
    assert np.asarray(adv).max() <= 1.2 + 1e-7 and np.isclose(np.asarray(adv)[3, 0], 1.2)  # 1.5 -> 1.2
    np.testing.assert_array_equal(np.asarray(keep)[:, 0], [True, False, False, True])
    assert float(metrics["adv/kept_groups"]) == 2


def test_high_z_boost_is_off_by_default_and_applies_above_threshold():
    base, _, _ = group_advantages(REWARDS, AdvantageConfig())
    boosted, _, _ = group_advantages(REWARDS, AdvantageConfig(high_z_boost=0.1))
    diff = np.asarray(boosted) - np.asarray(base)
    np.testing.assert_allclose(diff, np.where(np.asarray(base) >= 1.0, 0.1, 0.0), atol=1e-6)
    assert diff.max() > 0


def test_bad_config_raises():
    with pytest.raises(ValueError, match="std"):
        group_advantages(REWARDS, AdvantageConfig(std="biased"))
    with pytest.raises(ValueError, match="groups"):
        group_advantages(REWARDS[0], AdvantageConfig())


def test_zero_variance_groups_use_a_tolerance():
    """A constant group of 0.7 has a float32 sample std of ~6e-8: it is zero-variance and filtered, not kept
    with random-sign advantages."""
    rewards = np.array([[0.7] * 8, [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]], np.float32)
    import jax.numpy as jnp
    assert float(jnp.std(jnp.asarray(rewards[:1]), axis=1, ddof=1)[0]) > 0  # the noise the old filter kept
    _, keep, m = group_advantages(rewards, AdvantageConfig(min_group_std=0.0))
    assert keep.tolist() == [[False] * 8, [True] * 8]
    assert float(m["adv/zero_variance_groups"]) == 1.0
    _, keep, _ = group_advantages(rewards, AdvantageConfig(min_group_std=None))
    assert bool(np.all(keep))  # filter off: kept, but still counted above
