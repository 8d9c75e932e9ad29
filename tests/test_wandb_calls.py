"""What reaches wandb, asserted on a fake wandb module that records every call (no service, no files):
step axes, the SFT curve, evaluation tables, group and tags from the sweep / experiment name."""
import sys
import types

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from orchestra_jax.config import resolve_hydra_run_dir
from orchestra_jax.summary import eval_tables
from orchestra_jax.logging import RunLogger


class FakeRun:
    def __init__(self, **kw):
        self.init_kw, self.defined, self.logged, self.summary, self.finished = kw, [], [], {}, False

    def define_metric(self, name, step_metric=None):
        self.defined.append((name, step_metric))

    def log(self, values, step=None):
        assert step is None, "logs carry their own step axis (grpo/step, sft/step), not wandb's step"
        self.logged.append(dict(values))

    def finish(self, quiet=None):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    mod = types.ModuleType("wandb")
    mod.runs = []

    def init(**kw):
        mod.runs.append(FakeRun(**kw))
        return mod.runs[-1]

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    mod.init, mod.Table = init, Table
    mod.Settings = lambda **kw: kw
    mod.sdk = types.SimpleNamespace(wandb_run=types.SimpleNamespace(Run=FakeRun))
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return mod


def test_step_axes_sft_curve_and_eval_tables(tmp_path, fake_wandb):
    lg = RunLogger(str(tmp_path / "r"), config={"a": 1}, wandb_mode="offline", wandb_group="sweep",
                   wandb_tags=("env.pref_cost=0.5", "quickstart"), is_main=True, progress_bar=False)
    run = fake_wandb.runs[0]
    assert run.init_kw["group"] == "sweep" and run.init_kw["tags"] == ["env.pref_cost=0.5", "quickstart"]
    assert ("grpo/step", None) in run.defined and ("sft/step", None) in run.defined
    assert ("reward/*", "grpo/step") in run.defined and ("sft/*", "sft/step") in run.defined
    assert lg.log_sft_curve([{"step": 10, "sft/loss": 2.5}, {"step": 20, "sft/loss": 1.25, "other": 3}]) == 2
    lg.log(1, {"reward/mean": 0.5, "loss": 2.0})
    lg.log(2, {"reward/mean": 0.75, "loss": 1.0})
    summary = {"primary_split": "test", "policies": {}, "splits": {
        "test": {"policies": {"grpo": {"accuracy": 0.5, "ci": {"accuracy": [0.25, 0.75]}, "n_tasks": 4}}},
        "unseen_tools": {"policies": {"grpo": {"accuracy": 0.25, "ci": {"accuracy": [0.0, 0.5]}, "n_tasks": 4}}}}}
    lg.log_eval_tables(eval_tables(summary))
    lg.close()
    assert run.logged[:2] == [{"sft/step": 10, "sft/loss": 2.5}, {"sft/step": 20, "sft/loss": 1.25}]
    assert run.logged[2:4] == [{"reward/mean": 0.5, "loss": 2.0, "grpo/step": 1},
                               {"reward/mean": 0.75, "loss": 1.0, "grpo/step": 2}]
    tables = run.logged[4]
    assert set(tables) == {"eval/test", "eval/unseen_tools"}
    t = tables["eval/unseen_tools"]
    row = dict(zip(t.columns, t.data[0]))
    assert row["policy"] == "grpo" and row["accuracy"] == 0.25 and (row["accuracy_lo"], row["accuracy_hi"]) == (0.0, 0.5)
    assert row["n_tasks"] == 4 and run.finished


CONF = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "conf")


def _resolved(overrides, multirun, argv):
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    cfg.hydra.mode = RunMode.MULTIRUN if multirun else RunMode.RUN
    cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    try:
        from omegaconf import OmegaConf

        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        return resolve_hydra_run_dir(job, argv=argv)
    finally:
        HydraConfig.instance().cfg = None


def test_group_and_tags_default_from_the_sweep_and_experiment():
    # a sweep point: group = the sweep directory's name, tags = experiment + swept k=v
    over = ["+experiment=quickstart", "run_dir=runs/my_sweep", "env.pref_cost=0.5"]
    out = _resolved(over, True, ["+experiment=quickstart", "run_dir=runs/my_sweep", "env.pref_cost=0.25,0.5"])
    assert out.run_dir == "runs/my_sweep/env.pref_cost=0.5"
    assert out.train.wandb_group == "my_sweep" and list(out.train.wandb_tags) == ["quickstart", "env.pref_cost=0.5"]
    # a single run: group = the experiment; an explicit group and tags are kept
    out = _resolved(["+experiment=quickstart"], False, [])
    assert out.train.wandb_group == "quickstart" and list(out.train.wandb_tags) == ["quickstart"]
    out = _resolved(["+experiment=quickstart", "train.wandb_group=g", "train.wandb_tags=[x]"], False, [])
    assert out.train.wandb_group == "g" and list(out.train.wandb_tags) == ["x", "quickstart"]
    # a list value on a multirun command line is one value, not a sweep: it names neither the run nor a tag
    argv = ["+experiment=quickstart", "run_dir=runs/s", "eval.splits=[unseen_tools,unseen_prices]", "train.seed=0,1"]
    out = _resolved(["+experiment=quickstart", "run_dir=runs/s", "eval.splits=[unseen_tools,unseen_prices]",
                     "train.seed=1"], True, argv)
    assert out.run_dir == "runs/s/train.seed=1" and list(out.train.wandb_tags) == [
        "quickstart", "train.seed=1"]


def test_wandb_tags_are_cut_to_64_characters(tmp_path, fake_wandb):
    RunLogger(str(tmp_path), wandb_mode="offline", wandb_tags=("x" * 80, "y"), is_main=True, progress_bar=False)
    assert fake_wandb.runs[0].init_kw["tags"] == ["x" * 64, "y"]
