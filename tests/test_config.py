"""Config composition (Hydra, version_base 1.3) and validation: bad keys/values fail naming the key."""
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from orchestra_jax.config import Config, to_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(ROOT, "conf")


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_default_and_quickstart_compose_and_validate():
    cfg = to_config(_compose([]))
    assert isinstance(cfg, Config) and cfg.init == "sft"
    q = to_config(_compose(["+experiment=quickstart", "run_dir=/tmp/q", "train.steps=7"]))
    assert q.run_dir == "/tmp/q" and q.train.steps == 7
    assert hash(q.model) == hash(q.model)  # hashable: usable as a jit static argument
    assert isinstance(q.mesh.rules, tuple)


@pytest.mark.parametrize("override, message", [
    ("+train.stepz=3", r"config error at train.stepz: Key 'stepz' not in 'TrainConfig'"),
    ("train.steps=abc", r"config error at train.steps: Value 'abc'.*Integer"),
    ("algo.loss.kl_coef=x", r"config error at algo.loss.kl_coef"),
    ("train.wandb_mode=cloud", r"config error at train.wandb_mode"),
    ("init=pretrained", r"config error at init"),
    ("train.tasks_per_step=0", r"config error at train.tasks_per_step: must be > 0"),
    ("model.hidden_size=-4", r"ModelConfig.hidden_size must be a positive int"),
])
def test_bad_values_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message) as e:
        to_config(_compose([override]))
    assert "\n" not in str(e.value)


def test_unknown_top_level_key_rejected():
    with pytest.raises(ValueError, match=r"config error at lr: Key 'lr' not in 'Config'"):
        to_config(_compose(["+lr=0.1"]))


def test_cli_rejects_unknown_key_before_any_work(tmp_path):
    """The Hydra entry point exits non-zero with the one-line config error (no training started)."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "train.py"), f"run_dir={tmp_path}/r",
         "+train.bogus=1"], capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode != 0
    assert "config error at train.bogus" in proc.stderr
    assert not os.path.exists(tmp_path / "r")


def test_multirun_sweep_gives_each_point_its_own_run_dir(tmp_path):
    """A 2-point --multirun sweep (0 GRPO steps: config, tokenizer, init only) writes two run dirs named
    after the swept value, each with its own resolved config."""
    import yaml

    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "train.py"), "--multirun", f"run_dir={sweep}",
         "train.steps=0", "init=random", "sft.enabled=false", "eval.enabled=false", "train.wandb_mode=disabled",
         "train.progress_bar=false", "train.num_tasks=8", "train.seed=1,2"],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for seed in (1, 2):
        cfg = yaml.safe_load(open(sweep / f"train.seed={seed}" / "config.yaml"))
        assert cfg["train"]["seed"] == seed and cfg["run_dir"] == f"{sweep}/train.seed={seed}"
    assert (sweep / "multirun.yaml").exists()
    assert sorted(os.listdir(tmp_path)) == ["sweep"]  # no outputs/ or multirun/ in the working directory


def test_swept_keys_parsing():
    from orchestra_jax.config import swept_keys

    argv = ["+experiment=quickstart", "run_dir=runs/s", "algo.optim.lr=1e-4,3e-4", "train.seed=range(0,3)",
            "env.pref_cost=0.1", "hydra.sweeper.params=x,y"]
    assert swept_keys(argv) == ["algo.optim.lr", "train.seed"]
