"""GRPO core: rewards, group advantages, the policy loss, the optimizer and the jitted update.

Submodules: rewards, advantages, losses, optim, step (imports the model), rollout, batch (episodes -> packed
rows), grpo (the whole step). This package imports only
the pure-array parts eagerly; import `orchestra_jax.rl.step` for token_logprobs / make_update_fn.
"""
from orchestra_jax.rl.advantages import AdvantageConfig, group_advantages
from orchestra_jax.rl.losses import LossConfig, kl_penalised_advantages, policy_loss
from orchestra_jax.rl.optim import OptimConfig, make_optimizer
from orchestra_jax.rl.rewards import RewardConfig, compute_rewards, init_reward_state, paper_reward

__all__ = [
    "AdvantageConfig", "LossConfig", "OptimConfig", "RewardConfig", "compute_rewards", "group_advantages",
    "init_reward_state", "kl_penalised_advantages", "make_optimizer", "paper_reward", "policy_loss",
]
