"""Re-evaluates a finished (or partly trained) run on held-out tasks; never rewrites its config.yaml.

    python experiments/evaluate.py +experiment=quickstart run_dir=runs/quickstart eval.num_tasks=500

Loads the run's tokenizer, its GRPO checkpoint (latest step) and its start (SFT checkpoint, or the
initial params), then evaluates them with the env's baselines (always_strongest, cheapest, random,
rule_based) on the same tasks and prints the table. With the run's recorded settings the result is its
summary.json; with other settings (here eval.num_tasks=500) it goes beside it as
summary-eval.num_tasks=500.json, which experiments/report.py reads as a further split.
"""
import os
import sys

import hydra
from omegaconf import DictConfig

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestra_jax.config import resolve_hydra_run_dir, to_config  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(raw: DictConfig) -> None:
    try:
        cfg = to_config(resolve_hydra_run_dir(raw))
    except ValueError as e:
        sys.exit(f"{e}")
    from orchestra_jax.evaluate import evaluate_run
    from orchestra_jax.parallel.distributed import initialize

    initialize(cfg.distributed)

    evaluate_run(cfg)


if __name__ == "__main__":
    main()
