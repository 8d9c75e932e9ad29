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
