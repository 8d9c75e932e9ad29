"""Optimizer from config: schedules by hand, clipping, the non-finite guard on a quadratic."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.rl.optim import NonFiniteGuardState, OptimConfig, make_optimizer, make_schedule


def test_schedules_by_hand():
    const = make_schedule(OptimConfig(lr=1e-3, warmup_steps=4))
    np.testing.assert_allclose([float(const(s)) for s in (0, 2, 4, 100)], [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
    cos = make_schedule(OptimConfig(lr=1.0, schedule="cosine", warmup_steps=0, total_steps=10, end_lr_ratio=0.1))
    expected = [0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / 10)) for s in (0, 5, 10)]
    np.testing.assert_allclose([float(cos(s)) for s in (0, 5, 10)], expected, rtol=1e-6)
    lin = make_schedule(OptimConfig(lr=2.0, schedule="linear", warmup_steps=2, total_steps=6))
    np.testing.assert_allclose([float(lin(s)) for s in (1, 2, 4, 6, 9)], [1.0, 2.0, 1.0, 0.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        make_schedule(OptimConfig(schedule="step"))
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule(OptimConfig(schedule="cosine", warmup_steps=10, total_steps=10))


def test_adamw_step_matches_hand_computation_with_clipping():
    cfg = OptimConfig(lr=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.5, grad_clip_norm=1.0)
    opt = make_optimizer(cfg)
    params = {"w": jnp.array([1.0, -3.0])}
    grads = {"w": jnp.array([3.0, 4.0])}  # norm 5 -> clipped to [0.6, 0.8]
    updates, state = opt.update(grads, opt.init(params), params)
    # first Adam step: m_hat = g, v_hat = g^2 -> g / (|g| + eps) = sign(g); plus decoupled decay lr * wd * w
    expected = -0.1 * (np.sign([0.6, 0.8]) + 0.5 * np.array([1.0, -3.0]))
    np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(state, NonFiniteGuardState) and int(state.num_applied) == 1


def test_guard_skips_non_finite_and_counts():
    opt = make_optimizer(OptimConfig(lr=0.1, grad_clip_norm=None))
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    updates, state2 = jax.jit(opt.update)({"w": jnp.array([1.0, jnp.inf, 0.0])}, state, params)
    np.testing.assert_array_equal(np.asarray(updates["w"]), 0.0)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state2.inner, state.inner)
    assert (int(state2.num_skipped), int(state2.num_applied)) == (1, 0)
    updates, state3 = opt.update({"w": jnp.ones(3)}, state2, params)
    assert np.all(np.asarray(updates["w"]) < 0) and (int(state3.num_skipped), int(state3.num_applied)) == (1, 1)
