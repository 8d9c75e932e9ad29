"""conf/experiment sweep presets: compose, validate, sweep what they say, every key commented."""
import pathlib

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from orchestra_jax.config import to_config

CONF = pathlib.Path(__file__).resolve().parents[2] / "conf"


def _compose(name, overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={name}", *overrides], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) if cfg.hydra.sweeper.get("params") else {}
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return to_config(job), params, cfg.hydra


def _commented(name):
    for line in (CONF / "experiment" / f"{name}.yaml").read_text().splitlines():
        code = line.split("#", 1)[0].rstrip()
        if code.strip() and not code.lstrip().startswith("-") and ":" in code and not code.endswith(":"):
            assert "#" in line, f"{name}.yaml: key without a comment: {line!r}"


def test_sweep_reward_weights():
    cfg, params, hydra = _compose("sweep_reward_weights")
    _commented("sweep_reward_weights")
    costs = [float(x) for x in params["env.pref_cost"].split(",")]
    assert len(costs) >= 5 and costs == sorted(costs)
    assert len(params["env.pref_latency"].split(",")) >= 2
    assert set(params["reward"].split(",")) == {"paper", "chebyshev"}
    assert str(hydra.mode).endswith("MULTIRUN") and cfg.train.wandb_group == "sweep_reward_weights"
    assert cfg.env.preference_mode == "fixed"  # the swept weights are the P of every task
    assert cfg.model.hidden_size == 128          # the quickstart's CPU-size policy


@pytest.mark.parametrize("name, mode", [("generalisation", "fixed"), ("preferences", "random")])
def test_generalisation_and_preferences(name, mode):
    cfg, params, _ = _compose(name)
    _commented(name)
    assert cfg.env.preference_mode == mode and cfg.env.randomize_tools and cfg.env.randomize_prices
    assert params["train.seed"] == "0,1,2" and cfg.train.wandb_group == name
    if name == "generalisation":  # every policy on the three splits and the robustness wrappers, one summary
        assert cfg.eval.split == "test" and set(cfg.eval.splits) == {"unseen_tools", "unseen_prices"}
        assert "noisy_search" in cfg.eval.robustness and cfg.eval.robustness_tasks > 0
    # unseen_tools offers pool profiles (new skill mixes) never offered in training
    assert cfg.env.setting == "qa" and cfg.env.randomize_tools


def test_optuna_preset_is_multi_objective():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    _, params, hydra = _compose("sweep_optuna")
    _commented("sweep_optuna")
    assert list(hydra.sweeper.direction) == ["maximize", "minimize"]
    assert params["env.pref_cost"].startswith("interval(")


def test_research_qa_is_the_larger_qa_preset():
    cfg, params, hydra = _compose("research_qa")
    _commented("research_qa")
    quick, _, _ = _compose("quickstart")
    assert cfg.model.num_layers == 4 and cfg.model.hidden_size == 256 and quick.model.hidden_size == 128
    assert cfg.env == quick.env                      # the quickstart's setting, every property on
    assert cfg.algo.optim.lr == 5e-5 and cfg.sft.num_tasks > quick.sft.num_tasks and cfg.train.steps > quick.train.steps
    assert set(cfg.eval.splits) == {"unseen_tools", "unseen_prices"} and cfg.eval.num_tasks >= 300
    # group options are selected, not edited: another model or algo preset replaces them whole
    other, _, _ = _compose("research_qa", ["model=tiny", "algo=grpo"])
    assert other.model.num_layers == 2 and other.algo.optim.lr != 5e-5


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_preset_composes_validates_and_selects_group_options(name):
    """Each preset passes to_config (functions_quickstart once kept a retired `init: sft`), every key is
    commented, and no preset edits keys inside the model group (a `model=` choice must replace it whole)."""
    if name == "sweep_optuna":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg, _, _ = _compose(name)
    _commented(name)
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert "\nmodel:" not in text, f"{name}.yaml sets model keys; select a conf/model option instead"
    other, _, _ = _compose(name, ["model=tiny"])
    assert other.model.num_layers == 2 and other.model.hidden_size == 128
