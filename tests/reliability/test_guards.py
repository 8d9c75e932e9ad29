"""run_dir resume check, divergence monitor, preemption guard and fault-injection parsing, as units."""
import json
import os
import signal

import pytest

from orchestra_jax.divergence import DivergenceBounds, DivergenceError, DivergenceMonitor
from orchestra_jax.faults import ENV_VAR, maybe_fault, parse_faults
from orchestra_jax.preemption import Preempted, PreemptionGuard
from orchestra_jax.run_dir import ConfigChangeError, affects_training, check_resume, config_diff, read_record


def _cfg(**over):
    cfg = {"run_dir": "runs/x", "model": {"hidden_size": 32, "num_layers": 1}, "algo": {"optim": {"lr": 1e-3}},
           "reward": {"kind": "paper"}, "env": {"pref_cost": 0.25}, "rollout": {"group_size": 2},
           "train": {"seed": 0, "steps": 3, "log_every": 1, "wandb_mode": "disabled", "checkpoint_every": 10,
                     "allow_config_change": False},
           "eval": {"num_tasks": 2}, "mesh": {"fsdp": 1}, "teachers": ["a", "b"], "nan": float("nan")}
    for dotted, v in over.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return cfg


def test_first_start_records_then_same_config_passes(tmp_path):
    assert check_resume(tmp_path, _cfg()) == {}
    assert read_record(tmp_path)["model"]["hidden_size"] == 32
    assert check_resume(tmp_path, _cfg()) == {}  # NaN == NaN and tuples == lists after the round trip


@pytest.mark.parametrize("key,value", [("model.hidden_size", 64), ("algo.optim.lr", 3e-4), ("reward.kind", "zscore"),
                                       ("env.pref_cost", 0.5), ("train.seed", 1), ("rollout.group_size", 4),
                                       ("teachers", ["a"])])
def test_training_change_is_refused_naming_the_key(tmp_path, key, value):
    check_resume(tmp_path, _cfg())
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigChangeError, match=rf"refusing to resume with changed training keys: {key}: "):
        check_resume(tmp_path, _cfg(**{key: value}))
    assert (tmp_path / "config.yaml").read_text() == before  # nothing changed
    assert not (tmp_path / "config_changes.jsonl").exists()


@pytest.mark.parametrize("key,value", [("train.steps", 10), ("train.log_every", 5), ("train.wandb_mode", "offline"),
                                       ("eval.num_tasks", 200), ("mesh.fsdp", 8), ("run_dir", "gs://b/x"),
                                       ("train.checkpoint_every", 1)])
def test_observation_changes_pass_and_are_recorded(tmp_path, key, value):
    check_resume(tmp_path, _cfg())
    assert check_resume(tmp_path, _cfg(**{key: value})) == {}
    assert not (tmp_path / "config_changes.jsonl").exists()
    assert config_diff(read_record(tmp_path), _cfg(**{key: value})) == {}


def test_allowed_change_is_recorded(tmp_path):
    check_resume(tmp_path, _cfg())
    accepted = check_resume(tmp_path, _cfg(**{"algo.optim.lr": 3e-4}), allow_change=True)
    assert accepted == {"algo.optim.lr": (1e-3, 3e-4)}
    lines = [json.loads(l) for l in open(tmp_path / "config_changes.jsonl")]
    assert lines[0]["changes"] == {"algo.optim.lr": {"old": 1e-3, "new": 3e-4}}
    assert read_record(tmp_path)["algo"]["optim"]["lr"] == 3e-4  # the record is the config now in force
    assert check_resume(tmp_path, _cfg(**{"algo.optim.lr": 3e-4})) == {}


def test_unknown_new_key_counts_as_training(tmp_path):
    check_resume(tmp_path, _cfg())
    cfg = _cfg()
    cfg["algo"]["new_knob"] = 1
    with pytest.raises(ConfigChangeError, match=r"algo.new_knob: '<absent>' -> 1"):
        check_resume(tmp_path, cfg)
    assert affects_training("train.row_len") and not affects_training("train.wandb_project")


def test_broken_record_names_the_file(tmp_path):
    (tmp_path / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigChangeError, match=r"config.yaml: the recorded config is not valid YAML"):
        check_resume(tmp_path, _cfg())


# ------------------------------------------------------------------------------------------ divergence
def test_consecutive_skips_stop_and_a_good_step_resets():
    mon = DivergenceMonitor(DivergenceBounds(max_consecutive_skips=3))
    assert mon.observe(1, {"skipped": 1.0, "loss": float("nan")})["guard/consecutive_skips"] == 1
    assert mon.observe(2, {"skipped": 1.0})["guard/consecutive_skips"] == 2
    out = mon.observe(3, {"skipped": 0.0, "loss": 0.5})
    assert out == {"guard/skipped_total": 2.0, "guard/consecutive_skips": 0.0}
    mon.observe(4, {"skipped": 1.0})
    mon.observe(5, {"skipped": 1.0})
    with pytest.raises(DivergenceError, match=r"step 6: 3 consecutive updates skipped .* last good checkpoint"):
        mon.observe(6, {"loss": float("inf")})  # a non-finite loss counts even without the flag
    assert mon.total_skips == 5


def test_kl_and_entropy_alerts(capsys):
    mon = DivergenceMonitor(DivergenceBounds(kl_max=0.1, entropy_min=0.5, entropy_max=5.0))
    assert "alert/kl_high" not in mon.observe(1, {"kl_ref": 0.1, "entropy": 1.0})  # at the bound: fine
    out = mon.observe(2, {"kl_ref": 0.3, "entropy": 0.2})
    assert out["alert/kl_high"] == 1.0 and out["alert/entropy_low"] == 1.0 and "alert/entropy_high" not in out
    assert mon.observe(3, {"entropy": 7.0})["alert/entropy_high"] == 1.0
    err = capsys.readouterr().err
    assert "ALERT step 2: kl_ref = 0.3 > bound 0.1" in err and "ALERT step 3: entropy = 7 > bound 5" in err
    off = DivergenceMonitor()
    assert not [k for k in off.observe(1, {"kl_ref": 1e9, "entropy": 0.0}) if k.startswith("alert/")]


# ------------------------------------------------------------------------------------ preemption, faults
def test_guard_turns_sigterm_and_sigint_into_a_flag():
    old = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard(multihost=False) as guard:
        assert not guard.stop_requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.stop_requested() and guard.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is old  # restored
    with PreemptionGuard(multihost=False) as guard:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C does not wait for the step
            os.kill(os.getpid(), signal.SIGINT)
    err = Preempted(signal.SIGTERM, 7, "/r/checkpoints/7")
    assert err.code == 143 and str(err).startswith("SIGTERM received: saved the checkpoint of step 7 at /r/checkpoints/7")


def test_multihost_guard_leaves_sigterm_to_jax():
    old = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard(multihost=True):
        assert signal.getsignal(signal.SIGTERM) is old


def test_fault_spec_parsing_and_noop(monkeypatch):
    assert parse_faults("update:3, save:2:term") == {("update", 3): signal.SIGKILL, ("save", 2): signal.SIGTERM}
    assert parse_faults("") == {} and parse_faults(None) == {}
    for bad in ("explode:1", "update", "update:x", "update:1:nuke"):
        with pytest.raises(ValueError, match=ENV_VAR):
            parse_faults(bad)
    monkeypatch.setenv(ENV_VAR, "update:3")
    maybe_fault("update", 2)  # another step: nothing happens
    maybe_fault("rollout", 3)
    monkeypatch.setenv(ENV_VAR, "save:4:term")
    with PreemptionGuard(multihost=False) as guard:
        maybe_fault("save", 4)
        assert guard.signum == signal.SIGTERM
