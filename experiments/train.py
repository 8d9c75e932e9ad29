"""Hydra entry point of the main job: tokenizer, SFT warm start, GRPO, held-out evaluation.

    python experiments/train.py +experiment=quickstart run_dir=runs/quickstart
    python experiments/train.py --multirun +experiment=quickstart run_dir=runs/sweep algo.optim.lr=1e-4,3e-4

Reusing a run_dir resumes the run from its last checkpoint. Under --multirun every job gets its own
run directory ``<run_dir>/<overrides>`` (e.g. ``runs/sweep/algo.optim.lr=0.0001``).
"""
import os
import sys

import hydra
from omegaconf import DictConfig

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestra_jax.config import resolve_hydra_run_dir, to_config  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(raw: DictConfig):
    try:
        cfg = to_config(resolve_hydra_run_dir(raw))
    except ValueError as e:  # one clear line, no traceback, before any work
        sys.exit(f"{e}")
    import jax

    if not jax.config.jax_compilation_cache_dir:  # reruns and resumes skip most XLA compilation
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/orchestra_jax/xla"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    from orchestra_jax.checkpoint import CheckpointMismatchError
    from orchestra_jax.run_dir import ConfigChangeError
    from orchestra_jax.train import run

    try:
        summary = run(cfg)
    except (ConfigChangeError, CheckpointMismatchError) as e:  # one clear line, no traceback
        sys.exit(f"error: {e}")
    from orchestra_jax.summary import sweep_objective

    return sweep_objective(summary, n_objectives())  # fixed_reward, or (accuracy, mean $) for [max, min]


def n_objectives() -> int:
    """Directions of the Hydra sweeper (optuna: a list of two for accuracy and $), 1 otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import ListConfig

    direction = HydraConfig.get().sweeper.get("direction")
    return len(direction) if isinstance(direction, (list, ListConfig)) else 1


if __name__ == "__main__":
    main()
