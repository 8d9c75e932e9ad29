"""Mesh construction and logical-axis rules -> shardings (8 host CPU devices from tests/conftest.py)."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from orchestra_jax.model import ModelConfig, init_params, param_logical_axes
from orchestra_jax.parallel import (DEFAULT_RULES, MeshConfig, batch_row_multiple, batch_shardings,
                                    logical_to_sharding, logical_to_spec, make_mesh, make_rules,
                                    opt_state_shardings, param_shardings, shard_batch, shard_params)
from orchestra_jax.parallel.mesh import resolve_axis_sizes
from orchestra_jax.parallel.sharding import model_rules


def test_eight_host_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize("cfg, expected", [
    (MeshConfig(data=1, fsdp=-1, tensor=1), (1, 8, 1)),
    (MeshConfig(data=2, fsdp=-1, tensor=2), (2, 2, 2)),
    (MeshConfig(data=-1, fsdp=4, tensor=1), (2, 4, 1)),
    (MeshConfig(data=8, fsdp=1, tensor=1), (8, 1, 1)),
])
def test_make_mesh_sizes_and_auto_axes(cfg, expected):
    mesh = make_mesh(cfg)
    assert tuple(mesh.shape.values()) == expected
    assert tuple(mesh.axis_names) == ("data", "fsdp", "tensor")
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert mesh.devices.size == 8 and len(set(mesh.devices.flat)) == 8


def test_make_mesh_on_a_device_subset_keeps_order():
    devices = jax.devices()[4:]
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), devices)
    assert list(mesh.devices.flat) == devices


@pytest.mark.parametrize("cfg, message", [
    (MeshConfig(data=3, fsdp=-1), "not divisible"),
    (MeshConfig(data=2, fsdp=2, tensor=1), "2 x 2 x 1 = 4 but there are 8 devices"),
    (MeshConfig(data=-1, fsdp=-1), "at most one axis"),
    (MeshConfig(data=0), "mesh.data=0"),
])
def test_make_mesh_errors_name_the_problem(cfg, message):
    with pytest.raises(ValueError, match=message):
        make_mesh(cfg)
    with pytest.raises(ValueError, match=message):
        resolve_axis_sizes(cfg, 8)


def test_rule_overrides():
    rules = dict(make_rules(("embed=", "batch=data+fsdp+tensor", "mlp=fsdp")))
    assert rules["embed"] is None and rules["batch"] == ("data", "fsdp", "tensor") and rules["mlp"] == "fsdp"
    assert rules["heads"] == "tensor"
    assert make_rules(MeshConfig(rules=("vocab=",)))[1] == ("vocab", None)  # keeps the rule's priority
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        make_rules(("embed=model",))
    with pytest.raises(ValueError, match="expected 'logical=mesh_axis"):
        make_rules(("embed",))


def test_logical_to_spec_priority_and_fallback(caplog):
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    # Activations: batch takes (data, fsdp) first, so embed (also fsdp) stays unsplit (flax semantics).
    assert logical_to_spec(("batch", "sequence", "embed"), mesh) == P(("data", "fsdp"), None, None)
    assert logical_to_spec(("embed", "heads", "head_dim"), mesh) == P("fsdp", "tensor", None)
    assert logical_to_spec(("vocab", "embed"), mesh) == P("tensor", "fsdp")
    # A dimension the mesh axes do not divide drops mesh axes from the end, and says so.
    with caplog.at_level(logging.WARNING):
        spec = logical_to_spec(("embed", "kv_heads", "head_dim"), mesh, shape=(16, 1, 8), name="k_proj")
    assert spec == P("fsdp", None, None)
    assert "k_proj" in caplog.text and "kv_heads" in caplog.text
    assert logical_to_spec(("batch", "sequence"), mesh, shape=(6, 4)) == P("data", None)
    with pytest.raises(ValueError, match="2 logical axes"):
        logical_to_spec(("embed", "mlp"), mesh, shape=(4,))


def tiny_cfg(**kw):
    base = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                intermediate_size=64)
    base.update(kw)
    return ModelConfig(**base)


def test_param_and_opt_state_shardings_follow_logical_axes():
    cfg = tiny_cfg()
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    shardings = param_shardings(cfg, mesh)
    axes = param_logical_axes(cfg)
    flat_axes = dict(jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))[0])
    flat_shard = dict(jax.tree_util.tree_flatten_with_path(shardings)[0])
    assert flat_axes.keys() == flat_shard.keys()
    rules = dict(DEFAULT_RULES)
    for path, names in flat_axes.items():
        expected = P(*(rules.get(n) for n in names))
        assert flat_shard[path].spec == expected, (path, names)
    # Adam moments are sharded like the parameters; the step count is replicated.
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    state = opt_state_shardings(optimizer, shapes, shardings, mesh)
    adam = state[1][0]
    assert jax.tree_util.tree_structure(adam.mu) == jax.tree_util.tree_structure(shardings)
    assert all(a.spec == b.spec for a, b in zip(jax.tree.leaves(adam.nu), jax.tree.leaves(shardings)))
    assert adam.count.spec == P()


def test_model_rules_replicate_undividable_heads(caplog):
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    with caplog.at_level(logging.WARNING):
        rules = dict(model_rules(tiny_cfg(), mesh))
    assert rules["kv_heads"] is None and rules["heads"] == "tensor" and rules["mlp"] == "tensor"
    assert "kv_heads=2" in caplog.text


def test_shard_params_puts_real_shards_on_devices():
    cfg = tiny_cfg()
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
    sharded = shard_params(params, param_logical_axes(cfg), mesh)
    emb = sharded["embed"]["embedding"]  # [V=64, D=32] -> (tensor, fsdp)
    assert {s.data.shape for s in emb.addressable_shards} == {(32, 16)}
    np.testing.assert_array_equal(np.asarray(emb), np.asarray(params["embed"]["embedding"]))


def test_batch_shardings_split_rows_and_check_divisibility():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert batch_row_multiple(mesh) == 4
    batch = {"tokens": np.arange(8 * 6, dtype=np.int32).reshape(8, 6),
             "advantages": np.ones((3, 8, 6), np.float32)}
    shardings = batch_shardings(batch, mesh)
    assert shardings["tokens"].spec == P(("data", "fsdp"), None)
    assert shardings["advantages"].spec == P(None, ("data", "fsdp"), None)
    placed = shard_batch(batch, mesh)
    assert {s.data.shape for s in placed["tokens"].addressable_shards} == {(2, 6)}
    assert {s.data.shape for s in placed["advantages"].addressable_shards} == {(3, 2, 6)}
    with pytest.raises(ValueError, match=r"batch\['tokens'\] has 6 rows"):
        batch_shardings({"tokens": np.zeros((6, 4), np.int32)}, mesh)


def test_logical_to_sharding_tree():
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    tree = {"w": ("embed", "mlp"), "b": ("mlp",), "scalar": ()}
    shapes = {"w": jnp.zeros((8, 6)), "b": jnp.zeros((6,)), "scalar": jnp.zeros(())}
    out = logical_to_sharding(tree, mesh, DEFAULT_RULES, shapes)
    assert out["w"].spec == P("fsdp", "tensor") and out["b"].spec == P("tensor") and out["scalar"].spec == P()
    out = logical_to_sharding(tree, mesh, DEFAULT_RULES, {"w": jnp.zeros((6, 6)), "b": jnp.zeros((5,)),
                                                          "scalar": jnp.zeros(())})
    assert out["w"].spec == P(None, "tensor") and out["b"].spec == P(None)


@pytest.mark.parametrize("preset, devices, expected", [
    ("cpu", 1, (1, 1, 1)), ("cpu8", 8, (2, 2, 2)), ("gpu1", 1, (1, 1, 1)), ("gpu8", 8, (1, 8, 1)),
    ("tpu_v5e_8", 8, (1, 8, 1)), ("tpu_v5p_32", 16, (2, 8, 1)),
])
def test_mesh_presets_validate_and_fit_their_hardware(preset, devices, expected):
    from pathlib import Path

    from omegaconf import OmegaConf
    path = Path(__file__).resolve().parents[2] / "conf" / "mesh" / f"{preset}.yaml"
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines and all("#" in line for line in lines), "every key needs a comment"
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MeshConfig), OmegaConf.load(path)))
    assert isinstance(cfg, MeshConfig)
    assert resolve_axis_sizes(cfg, devices) == expected
    make_rules(cfg)  # overrides parse
    if devices <= 8:
        assert tuple(make_mesh(cfg, jax.devices()[:devices]).shape.values()) == expected


def test_structured_config_rejects_unknown_keys():
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError
    with pytest.raises(ConfigKeyError, match="tensr"):
        OmegaConf.merge(OmegaConf.structured(MeshConfig), {"tensr": 2})
