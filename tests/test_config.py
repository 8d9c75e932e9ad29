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
    assert isinstance(cfg, Config) and cfg.init == "random" and cfg.sft.enabled
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


# Issue 10 item 9: each bad value fails at once (in to_config, before any work) in one line naming the key
# and, for fixed choices, the valid values.
BAD_VALUES = [
    ("algo.optim.schedule=cosin", r"config error at algo.optim.schedule: .*'cosin'.*\[constant, cosine, linear\]"),
    ("algo.loss.aggregation=foo", r"config error at algo.loss.aggregation: .*'foo'.*\[token_mean, seq_mean_token_mean"),
    ("algo.loss.kl_estimator=k9", r"config error at algo.loss.kl_estimator: .*'k9'.*\[k1, k2, k3\]"),
    ("algo.advantage.std=foo", r"config error at algo.advantage.std: .*'foo'.*\[sample, population\]"),
    ("reward.kind=foo", r"config error at reward.kind: .*'foo'.*\[paper, zscore, chebyshev\]"),
    ("train.wandb_mode=cloud", r"config error at train.wandb_mode: .*\[offline, online, disabled\]"),
    ("algo.optim.lr=-1", r"config error at algo.optim: .*lr"),
    ("mesh.data=16", r"config error at mesh: data x fsdp x tensor = 16 x 1 x 1 = 16 devices, but 8 are visible"),
    ("init=hf:/nonexistent", r"config error at init: hf:/nonexistent: no such directory"),
    ("tokenizer=/nonexistent", r"config error at tokenizer: /nonexistent: no such file or directory"),
    ("algo.loss.kl_estimator=k1", r"config error at algo.loss: .*k1 has zero expected gradient"),
    ("algo.invalid_turns=mask", r"config error at algo.invalid_turns: .*'mask'.*\[train, drop, penalise\]"),
    ("rollout.tools_format=json", r"config error at rollout.tools_format: .*'json'.*\[qwen, compact, signatures\]"),
    ("train.row_len=256", r"config error at train.row_len: 256 < rollout.max_seq_len 1024 .*train.truncate=true"),
    ("init=sft", r"config error at init: 'sft' is now init=random with sft.enabled=true"),
    ("model.param_dtype=bfloat16", r"config error at model.param_dtype: training keeps float32 master weights"),
    ("train.row_bucket=3", r"config error at train.row_bucket: 3 does not divide train.rows_per_step=0"),
    ("train.row_bucket=-2", r"config error at train.row_bucket: must be >= 0, got -2"),
    ("train.loss_positions=2000", r"config error at train.loss_positions: 2000 must be in \[0, train.row_len=1024\]"),
    ("train.short_row_lens=[512]", r"config error at train.short_row_lens: needs train.row_bucket > 0"),
    ("sft.copy_warmup_steps=-1", r"config error at sft.copy_warmup_steps / sft.copy_warmup_examples: .*got -1 / "),
    ("env.qa.menu_layout=middle", r"config error: env.qa.menu_layout must be one of \('name_first', 'name_last', "
                                  r"'name_after_facts'\)"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES)
def test_issue_bad_values_fail_fast_in_one_line(override, message):
    import time

    raw = _compose([override])
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=message) as e:
        to_config(raw)
    assert time.perf_counter() - t0 < 5.0
    assert "\n" not in str(e.value)


def test_hf_folder_missing_files_named_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"config error at init: hf:.* is missing model.safetensors") as e:
        to_config(_compose([f"init=hf:{tmp_path}"]))
    assert "\n" not in str(e.value)


def test_short_row_lens_must_be_distinct_and_below_row_len():
    base = ["train.rows_per_step=8", "train.row_bucket=1"]
    for bad in ("[512,1024]", "[256,256]", "[0]"):
        with pytest.raises(ValueError, match=r"config error at train.short_row_lens: .* must be distinct lengths in "
                                             r"\(0, train.row_len=1024\)"):
            to_config(_compose(base + [f"train.short_row_lens={bad}"]))
    assert to_config(_compose(base + ["train.short_row_lens=[768,256]"])).train.short_row_lens == (768, 256)


def test_truncation_is_a_choice():
    cfg = to_config(_compose(["train.row_len=256", "train.truncate=true"]))
    assert cfg.train.truncate and cfg.train.row_len == 256


def test_quickstart_selects_group_options_a_command_line_choice_replaces():
    q = to_config(_compose(["+experiment=quickstart"]))
    assert (q.model.hidden_size, q.algo.optim.lr, q.rollout.group_size) == (128, 2e-4, 8)
    big = to_config(_compose(["+experiment=quickstart", "model=qwen3_0p6b", "algo=toolorchestra"]))
    assert (big.model.hidden_size, big.model.num_layers, big.model.dtype) == (1024, 28, "bfloat16")
    assert (big.algo.optim.lr, big.algo.loss.kl_estimator, big.algo.advantage.clip) == (1e-6, "k2", 3.0)
    assert big.rollout.group_size == 8  # the other quickstart options stay


def test_qwen3_presets_train_float32_masters_in_bf16_compute():
    for name in ("qwen3_0p6b", "qwen3_8b"):
        m = to_config(_compose([f"model={name}", "tokenizer_vocab_size=1024"])).model
        assert (m.param_dtype, m.dtype) == ("float32", "bfloat16"), name


def test_cli_mesh_larger_than_one_device_fails_before_work(tmp_path):
    """mesh.data=3 on one CPU device: one line from the CLI, nothing written."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "train.py"), f"run_dir={tmp_path}/r", "mesh.data=3"],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path), env=env)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == ("config error at mesh: data x fsdp x tensor = 3 x 1 x 1 = 3 "
                                                    "devices, but 1 are visible")
    assert not os.path.exists(tmp_path / "r")
