"""Baselines and the factory pick the scripted policies of the env's own setting."""
import numpy as np
import pytest

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs.baselines import make_policy, run_policy
from orchestra_jax.envs.factory import teacher_dataset
from orchestra_jax.envs.functions import ExpertRouter


def test_make_policy_dispatches_on_setting():
    env = make_env(EnvConfig(setting="functions"))
    assert isinstance(make_policy("rule_based", env), ExpertRouter)
    from orchestra_jax.envs.qa_policies import PlannerPolicy
    qa = make_env(EnvConfig())
    assert isinstance(make_policy("rule_based", qa), PlannerPolicy)
    assert isinstance(make_policy("rule_based_eps0.2", qa).base, PlannerPolicy)
    with pytest.raises(ValueError, match="need the env"):
        make_policy("rule_based")
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope", qa)


def test_function_setting_baselines_and_teachers_run():
    env = make_env(EnvConfig(setting="functions"))
    tasks = env.sample_tasks(3, 24, split="train")
    strong = run_policy(env, "always_strongest", tasks, seed=5)
    cheap = run_policy(env, "cheapest", tasks, seed=5)
    assert strong.solved.shape == (24,)
    # the monolith costs more per episode than the cheapest router on the same tasks
    assert strong.cost_usd.mean() > cheap.cost_usd.mean()
    kept = teacher_dataset(env, tasks, seed=1, k=2, teachers=("rule_based",))
    assert kept and all(t.solved for t in kept)
    assert all(np.isfinite(t.cost_usd) for t in kept)
