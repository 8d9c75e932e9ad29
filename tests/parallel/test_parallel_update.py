"""The sharded update equals the single-device update on several meshes, with parameters really sharded."""
import math

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

import parallel_common as pc
from orchestra_jax.parallel import MeshConfig, make_mesh, make_sharded_logprob_fn, make_sharded_update_fn
from orchestra_jax.rl.step import build_update, split_micro_batches, token_logprobs

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def reference():
    """One step on one device (plain jit, no mesh)."""
    device = jax.devices()[0]
    optimizer = pc.optimizer()
    params = jax.device_put(pc.params(), device)
    update = pc.single_device_update()
    new_params, new_state, metrics = update(params, jax.jit(optimizer.init)(params), pc.batch())
    return jax.tree.map(np.asarray, new_params), jax.tree.map(np.asarray, new_state), pc.to_floats(metrics)


def expected_shard_shape(shape, sharding: NamedSharding):
    out = list(shape)
    for dim, axes in enumerate(sharding.spec):
        for axis in (axes,) if isinstance(axes, str) else (axes or ()):
            out[dim] //= sharding.mesh.shape[axis]
    return tuple(out)


def assert_sharded_as_declared(tree, shardings):
    for array, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        assert array.sharding.is_equivalent_to(sharding, array.ndim)
        want = expected_shard_shape(array.shape, sharding)
        assert len(array.addressable_shards) == 8
        assert {s.data.shape for s in array.addressable_shards} == {want}


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_update_matches_one_device(reference, shape):
    ref_params, ref_state, ref_metrics = reference
    mesh = make_mesh(MeshConfig(*shape))
    optimizer = pc.optimizer()
    update = make_sharded_update_fn(build_update(pc.MODEL, pc.ALGO, optimizer), pc.MODEL, optimizer, mesh)
    params = update.shard_params(pc.params())
    opt_state = update.init_opt_state(params)
    assert_sharded_as_declared(params, update.param_shardings)
    assert_sharded_as_declared(opt_state, update.opt_state_shardings)
    new_params, new_state, metrics = update(params, opt_state, update.shard_batch(pc.batch()))

    # Same numbers as one device.
    metrics = pc.to_floats(metrics)
    assert metrics.keys() == ref_metrics.keys()
    for key in metrics:
        np.testing.assert_allclose(metrics[key], ref_metrics[key], err_msg=key, **TOL)
    for got, want in zip(jax.tree.leaves(new_params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(got), want, **TOL)
    for got, want in zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_state)):
        np.testing.assert_allclose(np.asarray(got), want, **TOL)

    # Outputs keep the declared layout, and with fsdp / tensor > 1 the shards really are smaller.
    assert_sharded_as_declared(new_params, update.param_shardings)
    assert_sharded_as_declared(new_state, update.opt_state_shardings)
    emb = new_params["embed"]["embedding"]  # [V=64, D=32] -> (vocab: tensor, embed: fsdp)
    assert emb.addressable_shards[0].data.shape == (64 // shape[2], 32 // shape[1])
    q = new_params["layers_0"]["attn"]["q_proj"]["kernel"]  # [D=32, N=4, H=8] -> (fsdp, tensor, None)
    assert q.addressable_shards[0].data.shape == (32 // shape[1], 4 // shape[2], 8)
    mu = new_state.inner[1][0].mu["layers_0"]["mlp"]["down_proj"]["kernel"]  # [F=64, D=32] -> (tensor, fsdp)
    assert mu.addressable_shards[0].data.shape == (64 // shape[2], 32 // shape[1])
    # Memory: 8 devices hold 8 full copies only when nothing is split (pure data parallelism).
    held = sum(math.prod(s.data.shape) for leaf in jax.tree.leaves(new_params) for s in leaf.addressable_shards)
    full = sum(leaf.size for leaf in jax.tree.leaves(new_params))
    if shape[1] * shape[2] == 1:
        assert held == 8 * full
    else:
        assert held <= 8 * full // 2


def test_micro_batched_update_and_logprobs_on_a_mesh(reference):
    mesh = make_mesh(MeshConfig(2, 2, 2))
    optimizer = pc.optimizer()
    batch = split_micro_batches(pc.batch(rows=16), 2)  # [2, 8, L]: rows of each micro-batch split
    single = pc.single_device_update()
    host = jax.device_put(pc.params(), jax.devices()[0])
    want_params, _, want = single(host, jax.jit(optimizer.init)(host), batch)

    update = make_sharded_update_fn(build_update(pc.MODEL, pc.ALGO, optimizer), pc.MODEL, optimizer, mesh)
    params = update.shard_params(pc.params())
    placed = update.shard_batch(batch)
    assert {s.data.shape for s in placed["tokens"].addressable_shards} == {(2, 2, pc.ROW_LEN)}
    got_params, _, got = update(params, update.init_opt_state(params), placed)
    got, want = pc.to_floats(got), pc.to_floats(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], err_msg=key, **TOL)
    for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)

    # Old / reference log-probs over the mesh, reference params sharded like the policy's.
    logprobs = make_sharded_logprob_fn(token_logprobs, pc.MODEL, mesh)
    flat = pc.batch()
    ref_params = update.shard_params(pc.params(seed=1))
    logp, entropy = logprobs(ref_params, update.shard_batch(flat))
    want_logp, want_entropy = jax.jit(token_logprobs, static_argnums=0)(
        pc.MODEL, pc.params(seed=1), flat["tokens"], flat["positions"], flat["segment_ids"])
    np.testing.assert_allclose(np.asarray(logp), np.asarray(want_logp), **TOL)
    np.testing.assert_allclose(np.asarray(entropy), np.asarray(want_entropy), **TOL)
    assert {s.data.shape for s in logp.addressable_shards} == {(2, pc.ROW_LEN)}


def test_model_activation_constraints_resolve_against_the_mesh():
    """The update traces under nn.logical_axis_rules + the mesh, so the Policy's logical activation
    constraints become real sharding constraints (without them flax's constraints are no-ops)."""
    mesh = make_mesh(MeshConfig(2, 2, 2))
    update = make_sharded_update_fn(build_update(pc.MODEL, pc.ALGO, pc.optimizer()), pc.MODEL, pc.optimizer(), mesh)
    params = update.shard_params(pc.params())
    batch = pc.batch()
    with jax.set_mesh(mesh):
        text = update.jitted(batch).lower(params, update.init_opt_state(params), batch, None).as_text()
    rows = pc.ROWS, pc.ROW_LEN
    # mlp hidden [batch, sequence, mlp]: rows over data x fsdp, mlp over tensor.
    assert (f'sharding_constraint %' in text and
            f'<@mesh, [{{"data", "fsdp"}}, {{}}, {{"tensor"}}]> : tensor<{rows[0]}x{rows[1]}x64xf32>' in text)
    # residual stream [batch, sequence, embed]: embed unsplit because batch already took fsdp.
    assert f'<@mesh, [{{"data", "fsdp"}}, {{}}, {{}}]> : tensor<{rows[0]}x{rows[1]}x32xf32>' in text


@pytest.mark.parametrize("shape,with_ref_params", [((1, 1, 1), False), ((2, 2, 2), True)])
def test_a_list_of_micro_batches_accumulates_like_one_batch_with_four_programs(shape, with_ref_params):
    """row_bucket's path: a step's rows as a list of same-shape buckets gives the update of the whole batch
    (normalisers over all of them), and a step with more buckets runs the same compiled programs."""
    mesh = make_mesh(MeshConfig(*shape), jax.devices()[:math.prod(shape)])
    optimizer = pc.optimizer()
    rows = 8 * 3
    whole = pc.batch(seed=3, rows=rows)
    ref_host = pc.params(seed=1)
    if with_ref_params:  # reference log-probs computed inside the update from sharded reference params
        whole = {k: v for k, v in whole.items() if k != "ref_logp"}
    host = jax.device_put(pc.params(), jax.devices()[0])
    want_params, want_state, want = pc.single_device_update()(
        host, jax.jit(optimizer.init)(host), whole,
        jax.device_put(ref_host, jax.devices()[0]) if with_ref_params else None)

    update = make_sharded_update_fn(build_update(pc.MODEL, pc.ALGO, optimizer), pc.MODEL, optimizer, mesh)
    ref = update.shard_params(ref_host) if with_ref_params else None
    params = update.shard_params(pc.params())
    buckets = [{k: v[i:i + 8] for k, v in whole.items()} for i in range(0, rows, 8)]
    got_params, got_state, got = update(params, update.init_opt_state(params), buckets, ref)
    got, want = pc.to_floats(got), pc.to_floats(want)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], err_msg=key, **TOL)
    for a, b in zip(jax.tree.leaves((got_params, got_state)), jax.tree.leaves((want_params, want_state))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)
    assert got["num_sequences"] > 8 and got["num_tokens"] > 0  # the step's normalisers, not one bucket's
    assert update.num_compiled == 4

    # Two buckets, then one: same programs, and the result is that of the two-bucket batch.
    two = {k: v[:16] for k, v in whole.items()}
    params2 = update.shard_params(pc.params())
    _, _, m2 = update(params2, update.init_opt_state(params2), buckets[:2], ref)
    _, _, w2 = pc.single_device_update()(host := jax.device_put(pc.params(), jax.devices()[0]),
                                         jax.jit(optimizer.init)(host), two,
                                         jax.device_put(ref_host, jax.devices()[0]) if with_ref_params else None)
    np.testing.assert_allclose(pc.to_floats(m2)["loss"], pc.to_floats(w2)["loss"], **TOL)
    params1 = update.shard_params(pc.params())
    update(params1, update.init_opt_state(params1), buckets[:1], ref)
    assert update.num_compiled == 4


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 2)])
def test_micro_batches_of_different_lengths_accumulate_like_one_batch(shape):
    """train.short_row_lens' path: a bucket whose rows hold tokens only in their first half goes cut to half the
    row length; with a full-length bucket it gives the update of the whole batch, and the shorter layout adds
    only its own count / accumulate programs."""
    mesh = make_mesh(MeshConfig(*shape), jax.devices()[:math.prod(shape)])
    optimizer = pc.optimizer()
    whole = {k: np.array(v) for k, v in pc.batch(seed=5, rows=16).items()}
    half = pc.ROW_LEN // 2
    for v in whole.values():  # rows 8..15: what lies past their first half becomes padding
        v[8:, half:] = 0
    host = jax.device_put(pc.params(), jax.devices()[0])
    want_params, _, want = pc.single_device_update()(host, jax.jit(optimizer.init)(host), whole)

    update = make_sharded_update_fn(build_update(pc.MODEL, pc.ALGO, optimizer), pc.MODEL, optimizer, mesh)
    params = update.shard_params(pc.params())
    buckets = [{k: v[:8] for k, v in whole.items()}, {k: v[8:, :half] for k, v in whole.items()}]
    got_params, _, got = update(params, update.init_opt_state(params), buckets)
    got, want = pc.to_floats(got), pc.to_floats(want)
    assert got["num_tokens"] == want["num_tokens"] > 0 and abs(want["loss"]) > 0
    for key in want:
        np.testing.assert_allclose(got[key], want[key], err_msg=key, **TOL)
    for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)
    assert update.num_compiled == 4 + 2
    with pytest.raises(ValueError, match="the same keys"):
        update(params, update.init_opt_state(params), [buckets[0], {k: v for k, v in buckets[1].items()
                                                                    if k != "ref_logp"}])
