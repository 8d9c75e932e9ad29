"""conf/algo and conf/reward presets: valid against the schemas, every key commented, released settings."""
import pathlib

import pytest
import yaml

from orchestra_jax.config import to_config
from orchestra_jax.rl.losses import validate_loss_config
from orchestra_jax.rl.optim import make_optimizer

CONF = pathlib.Path(__file__).resolve().parents[2] / "conf"
ALGOS = ("grpo", "dapo", "dr_grpo", "toolorchestra")
REWARDS = ("paper", "zscore", "chebyshev")


def _load(group, name):
    path = CONF / group / f"{name}.yaml"
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            assert "#" in line, f"{path.name}: key without a comment: {line!r}"
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("name", ALGOS)
def test_algo_presets_validate(name):
    raw = _load("algo", name)
    algo = to_config({"algo": raw}).algo
    validate_loss_config(algo.loss)
    assert callable(make_optimizer(algo.optim).update)
    # every value written in the preset reaches the validated config unchanged
    for group, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert getattr(getattr(algo, group), key) == pytest.approx(value) or \
                    getattr(getattr(algo, group), key) == value, f"{name}: algo.{group}.{key}"


@pytest.mark.parametrize("name", REWARDS)
def test_reward_presets_validate(name):
    assert to_config({"reward": _load("reward", name)}).reward.kind == name


def test_toolorchestra_preset_is_the_released_setting():
    algo = to_config({"algo": _load("algo", "toolorchestra")}).algo
    loss, adv, opt = algo.loss, algo.advantage, algo.optim
    assert (loss.clip_low, loss.clip_high, loss.dual_clip) == (0.2, 0.28, 10.0)
    assert (loss.kl_estimator, loss.kl_coef, loss.kl_in_reward, loss.aggregation) == ("k2", 1e-4, False, "token_mean")
    assert (opt.lr, opt.schedule, opt.weight_decay, opt.grad_clip_norm) == (1e-6, "constant", 0.01, 1.0)
    assert (adv.clip, adv.min_group_std, adv.std, adv.scale_by_std) == (3.0, 0.1, "sample", True)
    assert algo.ppo_epochs == 1 and loss.entropy_coef == 0.0
    assert algo.invalid_turns == "drop"  # the released code trains only on turns parsed as valid calls


def test_unknown_key_is_rejected():
    bad = _load("algo", "grpo")
    bad["loss"]["clip_lo"] = 0.1
    with pytest.raises(ValueError, match="clip_lo"):
        to_config({"algo": bad})
