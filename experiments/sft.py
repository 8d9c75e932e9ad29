"""Hydra entry point of the SFT warm start alone: tokenizer, pass@k teacher data, behaviour cloning.

    python experiments/sft.py +experiment=quickstart run_dir=runs/quickstart

Writes <run_dir>/sft/ (the checkpoint GRPO starts from; experiments/train.py on the same run_dir reuses
it and skips SFT) and <run_dir>/sft_metrics.jsonl.
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
    if not cfg.sft.enabled:
        sys.exit("config error at sft.enabled: experiments/sft.py needs sft.enabled=true")
    from orchestra_jax.parallel.distributed import initialize
    from orchestra_jax.prepare import prepare
    from orchestra_jax.train import build_mesh, make_setup, start_policy

    initialize(cfg.distributed)
    mesh = build_mesh(cfg)
    prep = prepare(cfg)
    start_policy(cfg, prep, make_setup(cfg, prep, mesh))
    from orchestra_jax.sft import sft_dir

    print(f"SFT checkpoint: {sft_dir(cfg)}")


if __name__ == "__main__":
    main()
