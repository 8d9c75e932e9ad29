"""Real training subprocesses killed at chosen points (orchestra_jax.faults), rerun with the same command,
compared with an uninterrupted run of the same seed: every metric of every step and the final checkpoint's
arrays must be identical. The SIGTERM variant with checkpoint_every > steps is the fast one in the default
suite; the SIGKILL variants (rollout, update, during an async save) and the corrupt-latest resume are slow."""
import os
import signal

import pytest

from cli_runs import STEPS, assert_same_run, complete_steps, train_cli


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    out = train_cli(run_dir)
    assert out.returncode == 0, out.stdout[-3000:]
    assert complete_steps(run_dir)[-1] == STEPS
    return run_dir


def test_sigterm_saves_current_step_and_resume_matches(reference, tmp_path):
    run_dir = tmp_path / "run"
    # SIGTERM arrives during step 2's rollout; no periodic checkpoint would be written before step 100
    out = train_cli(run_dir, "train.checkpoint_every=100", fault="rollout:2:term")
    assert out.returncode == 128 + signal.SIGTERM, out.stdout[-3000:]
    assert "SIGTERM received: saved the checkpoint of step 2" in out.stdout
    assert complete_steps(run_dir) == [2]  # the current step, although checkpoint_every=100
    out = train_cli(run_dir, "train.checkpoint_every=100")
    assert out.returncode == 0, out.stdout[-3000:]
    assert "resumed GRPO from" in out.stdout
    assert_same_run(reference, run_dir)
    # a change that affects training is refused, naming the key, before any work
    out = train_cli(run_dir, "model.hidden_size=64")
    assert out.returncode != 0
    assert "model.hidden_size: 32 -> 64" in out.stdout and "refusing to resume" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["rollout", "update", "save"])
def test_sigkill_then_rerun_matches(reference, tmp_path, phase):
    run_dir = tmp_path / "run"
    step = 2 if phase == "save" else 3
    out = train_cli(run_dir, fault=f"{phase}:{step}")
    assert out.returncode == -signal.SIGKILL, out.stdout[-3000:]
    steps = complete_steps(run_dir)
    # orbax starts a save only after the previous one is finalised, so step - 1's checkpoint is complete
    # (step - 2's for the rollout/update kills if step - 1's async save was still being written); the step
    # being killed (save: its files are being written) is never complete
    assert steps and steps[-1] == step - 1 if phase == "save" else steps[-1] in (step - 2, step - 1), steps
    if phase == "save":
        leftovers = [x for x in os.listdir(os.path.join(run_dir, "checkpoints")) if not x.isdigit()]
        print("left by the killed save:", leftovers)
    out = train_cli(run_dir)
    assert out.returncode == 0, out.stdout[-3000:]
    assert_same_run(reference, run_dir)


@pytest.mark.slow
def test_truncated_latest_checkpoint_falls_back_to_previous(reference, tmp_path):
    run_dir = tmp_path / "run"
    # synchronous saves here so that steps 1 and 2 are both complete when step 3 is killed
    out = train_cli(run_dir, "train.async_checkpoint=false", fault="update:3")
    assert out.returncode == -signal.SIGKILL
    assert complete_steps(run_dir) == [1, 2]
    state_dir = os.path.join(run_dir, "checkpoints", "2", "state")
    for root, _, files in os.walk(state_dir):
        for f in files:
            path = os.path.join(root, f)
            size = os.path.getsize(path)
            with open(path, "r+b") as fh:
                fh.truncate(size // 2)
    out = train_cli(run_dir)
    assert out.returncode == 0, out.stdout[-3000:]
    assert f"checkpoint {os.path.join(run_dir, 'checkpoints', '2')} is corrupt; falling back" in out.stdout
    assert f"resumed GRPO from {os.path.join(run_dir, 'checkpoints')}/1" in out.stdout
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", "2.corrupt"))
    assert_same_run(reference, run_dir)
