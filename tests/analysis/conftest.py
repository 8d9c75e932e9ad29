"""Real scripted-policy episodes of the QA env (no fakes): the inputs of the analysis tests."""
import pytest

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs.baselines import run_policy

POLICIES = ("always_strongest", "cheapest", "rule_based", "random")


@pytest.fixture(scope="session")
def qa_env():
    return make_env(EnvConfig())


def play(env, split="test", n_tasks=40, group_size=2, seed=5, policies=POLICIES, task_seed=1):
    tasks = env.sample_tasks(task_seed, n_tasks, split=split)
    episodes = [t for t in tasks for _ in range(group_size)]
    return {name: run_policy(env, name, episodes, seed=seed) for name in policies}


@pytest.fixture(scope="session")
def scripted(qa_env):
    return play(qa_env)


@pytest.fixture(scope="session")
def play_episodes():
    """``play(env, split=..., n_tasks=..., ...)``: fresh episodes of the scripted policies."""
    return play
