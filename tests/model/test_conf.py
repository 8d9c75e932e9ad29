"""conf/model/*.yaml validate against ModelConfig and have the documented shapes."""
import pathlib

import jax
import pytest
from omegaconf import OmegaConf

from orchestra_jax.model import ModelConfig, init_params

CONF = pathlib.Path(__file__).resolve().parents[2] / "conf" / "model"


def _load(name):
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(CONF / name))
    return ModelConfig(**OmegaConf.to_container(merged))


@pytest.mark.parametrize("name", ["tiny.yaml", "qwen3_0p6b.yaml", "qwen3_8b.yaml"])
def test_yaml_validates_and_every_key_is_commented(name):
    cfg = _load(name)
    lines = [line for line in (CONF / name).read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == len(ModelConfig.__dataclass_fields__)
    assert all("#" in line for line in lines)
    n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda k: init_params(cfg, k),
                                                                  jax.random.key(0))))
    expected = {"tiny.yaml": (0.5e6, 2e6), "qwen3_0p6b.yaml": (0.55e9, 0.65e9),
                "qwen3_8b.yaml": (8.0e9, 8.4e9)}[name]
    assert expected[0] <= n_params <= expected[1], n_params


def test_unknown_key_is_rejected(tmp_path):
    (tmp_path / "bad.yaml").write_text("hidden_sise: 64\n")
    with pytest.raises(Exception, match="hidden_sise"):
        OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(tmp_path / "bad.yaml"))
