"""Held-out imitation of a run's SFT checkpoint (for runs made before SFT logged it itself).

    python experiments/sft_imitation.py RUN_DIR [dotlist overrides of the run's config, e.g. sft.val_tasks=256]

Makes (or reads) <run_dir>/data/sft_val_trajectories.jsonl: the run's teachers on sft.val_tasks val-split tasks,
never trained on; prints ``sft/val_loss`` and ``sft/val_action_match`` of <run_dir>/sft, as SFT logs them
every sft.val_every steps (orchestra_jax.sft.imitation_metrics).
"""
import json
import os
import sys

import jax
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestra_jax.checkpoint import Checkpointer  # noqa: E402
from orchestra_jax.config import to_config  # noqa: E402
from orchestra_jax.envs import make_env  # noqa: E402
from orchestra_jax.model import init_params  # noqa: E402
from orchestra_jax.parallel import MeshConfig, make_mesh, make_rules  # noqa: E402
from orchestra_jax.prepare import teacher_data  # noqa: E402
from orchestra_jax.sft import encode_teacher_trajectories, imitation_metrics, pack_sft_dataset  # noqa: E402
from orchestra_jax.text.tokenizer import load_tokenizer  # noqa: E402


def main(argv) -> int:
    if not argv:
        sys.exit(__doc__)
    run = argv[0]
    conf = OmegaConf.load(os.path.join(run, "config.yaml"))
    # runs made before sft.val_tasks existed: the defaults of conf/sft/default.yaml, then the overrides
    conf = OmegaConf.merge({"sft": {"val_tasks": 128, "val_every": 50}}, conf, OmegaConf.from_dotlist(argv[1:]))
    cfg = to_config(conf)
    ck = Checkpointer(os.path.join(run, "sft"), keep=1, async_save=False)
    if ck.latest_step() is None:
        sys.exit(f"no SFT checkpoint in {run}/sft")
    val = teacher_data(cfg, make_env(cfg.env), split="val")
    tok = load_tokenizer(os.path.join(run, "tokenizer"))
    seqs = encode_teacher_trajectories(tok, val, cfg.rollout.tools_format)
    state, _ = ck.restore(None, {"params": init_params(cfg.model, jax.random.PRNGKey(0))})
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    data = pack_sft_dataset(seqs, cfg.sft.row_len).as_dict()
    m = imitation_metrics(cfg.model, state["params"], data, cfg.sft.batch_rows, mesh, make_rules(()))
    print(json.dumps({"run_dir": run, "val_trajectories": len(val), **m}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
