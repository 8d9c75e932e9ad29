"""GRPO core: rewards, group advantages, the policy loss, the jitted update (see docs/ARCHITECTURE.md)."""
from orchestra_jax.rl.advantages import AdvantageConfig, group_advantages
from orchestra_jax.rl.losses import LossConfig, kl_penalised_advantages, policy_loss
from orchestra_jax.rl.rewards import RewardConfig, compute_rewards, init_reward_state, paper_reward

__all__ = [
    "AdvantageConfig", "LossConfig", "RewardConfig", "compute_rewards", "group_advantages", "init_reward_state",
    "kl_penalised_advantages", "paper_reward", "policy_loss",
]
