"""orbax checkpoints: exact round trip (optax namedtuples kept), keep-N, clear mismatch/corruption errors."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from orchestra_jax.checkpoint import CheckpointError, Checkpointer


def _state(d=4, seed=0):
    k = jax.random.PRNGKey(seed)
    params = {"dense": {"w": jax.random.normal(k, (3, d)), "b": jnp.arange(d, dtype=jnp.float32)}}
    opt = optax.adamw(1e-2)
    opt_state = opt.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)
    return {"params": params, "opt_state": opt_state, "rng": jax.random.PRNGKey(seed + 7),
            "step": jnp.int32(5), "reward_state": {"count": jnp.float32(3.0), "mean": jnp.ones(2)}}


def test_roundtrip_exact_with_namedtuples_and_data_state(tmp_path):
    ck = Checkpointer(str(tmp_path / "ck"), keep=2)
    state = _state()
    ck.save(5, state, {"next_index": 12})
    ck.wait()
    target = _state(seed=1)  # different values, same structure
    restored, data = ck.restore(None, target)
    assert data == {"next_index": 12}
    assert type(restored["opt_state"]) is type(state["opt_state"])
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ck.close()


def test_keep_n_and_reopen(tmp_path):
    d = str(tmp_path / "ck")
    ck = Checkpointer(d, keep=2)
    for s in (1, 2, 3):
        ck.save(s, _state(seed=s), {"next_index": s})
    ck.close()
    ck2 = Checkpointer(d, keep=2)
    assert ck2.all_steps() == [2, 3] and ck2.latest_step() == 3
    _, data = ck2.restore(None, _state())
    assert data == {"next_index": 3}


def test_shape_mismatch_names_path_and_shapes(tmp_path):
    ck = Checkpointer(str(tmp_path / "ck"))
    ck.save(1, _state(d=4))
    ck.wait()
    with pytest.raises(CheckpointError, match=r"params/dense/w: checkpoint shape \(3, 4\) != expected \(3, 8\)"):
        ck.restore(1, _state(d=8))


def test_missing_leaf_is_named(tmp_path):
    ck = Checkpointer(str(tmp_path / "ck"))
    ck.save(1, _state())
    ck.wait()
    target = _state()
    target["params"]["extra"] = jnp.zeros(2)
    with pytest.raises(CheckpointError, match=r"params/extra missing from checkpoint"):
        ck.restore(1, target)


def test_corrupt_files_give_one_clear_error(tmp_path):
    d = str(tmp_path / "ck")
    ck = Checkpointer(d)
    ck.save(1, _state())
    ck.close()
    # truncate every file under the state item: metadata and array data become garbage
    for root, _, files in os.walk(os.path.join(d, "1", "state")):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"checkpoint .*1 is (unreadable|corrupt)"):
        Checkpointer(d).restore(1, _state())


def _truncate_tree(folder):
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "r+b") as fh:
                fh.truncate(os.path.getsize(path) // 2)


def test_truncated_latest_falls_back_to_previous_with_warning(tmp_path, capsys):
    d = str(tmp_path / "ck")
    ck = Checkpointer(d, keep=3)
    for s in (1, 2):
        ck.save(s, _state(seed=s), {"next_index": s})
    ck.close()
    _truncate_tree(os.path.join(d, "2", "state"))
    ck = Checkpointer(d, keep=3)
    with pytest.warns(RuntimeWarning, match=r"ck/2 is (unreadable|corrupt)"):
        state, data = ck.restore(None, _state())
    assert data == {"next_index": 1}
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(_state(seed=1))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "ck/2 is corrupt; falling back to the previous one" in capsys.readouterr().out
    # the corrupt step is set aside (kept for inspection), so the run can save step 2 again
    assert ck.all_steps() == [1] and os.path.isdir(os.path.join(d, "2.corrupt"))
    assert ck.save(2, _state(seed=5), {"next_index": 9})
    ck.wait()
    _, data = ck.restore(None, _state())
    assert data == {"next_index": 9}
    ck.close()


def test_every_checkpoint_corrupt_is_one_error_naming_them(tmp_path):
    d = str(tmp_path / "ck")
    ck = Checkpointer(d, keep=3)
    for s in (1, 2):
        ck.save(s, _state(seed=s))
    ck.close()
    for s in ("1", "2"):
        _truncate_tree(os.path.join(d, s, "state"))
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match=r"no readable checkpoint.*ck/2.*ck/1"):
        Checkpointer(d).restore(None, _state())


def test_mismatch_is_not_a_reason_to_fall_back(tmp_path):
    from orchestra_jax.checkpoint import CheckpointMismatchError

    d = str(tmp_path / "ck")
    ck = Checkpointer(d)
    ck.save(1, _state(d=4))
    ck.save(2, _state(d=4))
    ck.wait()
    with pytest.raises(CheckpointMismatchError, match=r"ck/2 was made with another model/optimizer config: "
                                                      r".*params/dense/w: checkpoint shape \(3, 4\) != expected \(3, 8\)"):
        ck.restore(None, _state(d=8))
    assert ck.all_steps() == [1, 2]  # nothing moved


def test_unfinished_save_is_never_listed(tmp_path):
    """A directory left by a save killed midway (orbax's tmp naming) is not a step; the next start removes it."""
    from orchestra_jax.checkpoint import latest_step_in

    d = tmp_path / "ck"
    ck = Checkpointer(str(d))
    ck.save(1, _state(seed=1), {"next_index": 1})
    ck.close()
    partial = d / "2.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00half")
    assert latest_step_in(str(d)) == 1
    ck = Checkpointer(str(d))
    assert ck.all_steps() == [1]
    _, data = ck.restore(None, _state())
    assert data == {"next_index": 1}
    assert not partial.exists()  # cleanup_tmp_directories


def test_save_decision_follows_interval_unless_forced(tmp_path):
    ck = Checkpointer(str(tmp_path / "ck"), keep=5, save_every=3)
    started = [ck.save(s, _state(seed=s), force=(s == 5)) for s in range(1, 6)]
    ck.wait()
    assert started == [False, False, True, False, True]
    assert ck.all_steps() == [3, 5]
    assert not ck.reached_preemption(4)  # one process: no preemption service
    assert not ck.save(5, _state(), force=True)  # already on disk: no second save, no error
    ck.close()


def test_saved_keys_and_per_process_data_state(tmp_path):
    ck = Checkpointer(str(tmp_path / "ck"))
    state = _state()
    state["ref_params"] = state["params"]
    ck.save(1, state, {"pos": 3})
    ck.wait()
    assert ck.saved_keys(1) == {"params", "opt_state", "rng", "step", "reward_state", "ref_params"}
    assert ck.saved_keys() == ck.saved_keys(1)
    import orbax.checkpoint as ocp

    raw = ocp.JsonCheckpointHandler().restore(tmp_path / "ck" / "1" / "data")
    assert raw == {"per_process": [{"pos": 3}]}  # one entry per process, this one restores its own
    ck.close()


def test_remote_paths_are_not_made_local():
    from orchestra_jax.run_dir import as_path

    assert str(as_path("gs://bucket/run/checkpoints")) == "gs://bucket/run/checkpoints"
    assert str(as_path("rel/dir")) == os.path.join(os.getcwd(), "rel/dir")
