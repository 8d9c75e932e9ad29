"""Simulated tool environments: QA (search / enhance_reasoning / answer) and function calling.

    from orchestra_jax.envs import EnvConfig, make_env
    env = make_env(EnvConfig(setting="qa"))

See ``base.py`` for the batched API every setting implements. QA pieces: ``pool`` (synthetic model profiles
and their descriptions), ``menu`` (per-episode aliases, prices, budget texts; shared by the settings),
``qa_problems`` (text-cued problems), ``qa`` (the env), ``qa_read`` / ``qa_policies`` (scripted policies),
``stats`` (the properties measured by ``experiments/env_stats.py``).
"""
from orchestra_jax.envs.base import Env, EpisodeResults, StepOutput, episode_rng, feature_names
from orchestra_jax.envs.budget import Budget, Ledger
from orchestra_jax.envs.config import EnvConfig, QAConfig, env_config_from_dict


def make_env(cfg=None) -> Env:
    """Builds the env of ``cfg.setting`` ("qa" -> QAEnv, "functions" -> FunctionsEnv(cfg)).

    ``cfg`` may be an EnvConfig, a dict or an OmegaConf DictConfig (validated); None = EnvConfig().
    """
    cfg = EnvConfig() if cfg is None else env_config_from_dict(cfg)
    if cfg.setting == "qa":
        from orchestra_jax.envs.qa import QAEnv

        return QAEnv(cfg)
    if cfg.setting == "functions":
        from orchestra_jax.envs.functions import FunctionsEnv

        return FunctionsEnv(cfg)
    raise ValueError(f"unknown env setting {cfg.setting!r}")


__all__ = ["Env", "EnvConfig", "QAConfig", "EpisodeResults", "StepOutput", "Budget", "Ledger", "make_env",
           "episode_rng", "feature_names", "env_config_from_dict"]
