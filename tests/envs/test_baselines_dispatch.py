"""Baselines and the factory pick the scripted policies of the env's own setting."""
import numpy as np

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs.baselines import make_policy, run_policy
from orchestra_jax.envs.factory import teacher_dataset
from orchestra_jax.envs.functions import ExpertRouter


def test_make_policy_dispatches_on_setting():
    env = make_env(EnvConfig(setting="functions"))
    assert isinstance(make_policy("rule_based", env), ExpertRouter)
    assert not isinstance(make_policy("rule_based"), ExpertRouter)


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
