"""distributed.resolve: which jax.distributed.initialize call each environment leads to (no side effects)."""
import jax
import numpy as np
import pytest
from grain._src.core.sharding import ShardOptions, even_split

from orchestra_jax.parallel import DistributedConfig, MeshConfig, initialize, make_mesh, process_shard
from orchestra_jax.parallel.distributed import (first_slurm_host, grain_shard_options, host_local_batch_to_global,
                                                local_row_range, resolve, split_for_process)

CFG = DistributedConfig()


def test_single_process_is_a_no_op():
    assert resolve(CFG, {}) == ("single", {})
    assert resolve(CFG, {"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}) == ("single", {})
    assert resolve(CFG, {"TPU_WORKER_HOSTNAMES": "host0"}) == ("single", {})
    info = initialize(CFG)  # in this test process: nothing to join
    assert (info.source, info.process_index, info.process_count) == ("single", 0, 1)


def test_explicit_config_and_env():
    cfg = DistributedConfig(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)
    source, kwargs = resolve(cfg, {})
    assert source == "explicit"
    assert kwargs["coordinator_address"] == "10.0.0.1:1234" and kwargs["num_processes"] == 4
    assert kwargs["process_id"] == 2 and kwargs["cluster_detection_method"] == "deactivate"
    source, kwargs = resolve(CFG, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
                                   "JAX_PROCESS_ID": "1"})
    assert (source, kwargs["num_processes"], kwargs["process_id"]) == ("explicit", 2, 1)
    with pytest.raises(ValueError, match=r"missing \['process_id'\]"):
        resolve(DistributedConfig(coordinator_address="h:1", num_processes=2), {})
    with pytest.raises(ValueError, match="process_id=5 out of range"):
        resolve(DistributedConfig(coordinator_address="h:1", num_processes=2, process_id=5), {})


@pytest.mark.parametrize("nodelist, host", [
    ("node001", "node001"), ("node001,host2", "node001"), ("gpu[003-010,012],cpu1", "gpu003"),
    ("a-b[7,9]", "a-b7"),
])
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_slurm_environment():
    env = {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_JOB_ID": "123456", "SLURM_LOCALID": "1",
           "SLURM_STEP_NODELIST": "gpu[011-012]"}
    source, kwargs = resolve(CFG, env)
    assert source == "slurm"
    assert kwargs["coordinator_address"] == f"gpu011:{123456 % 4096 + 61440}"
    assert (kwargs["num_processes"], kwargs["process_id"]) == (4, 3)
    assert "local_device_ids" not in kwargs and kwargs["cluster_detection_method"] == "deactivate"
    # One process per GPU: each drives the GPU of its local rank.
    source, kwargs = resolve(DistributedConfig(coordinator_port=5000), dict(env, ORCHESTRA_GPUS_PER_TASK="1"))
    assert kwargs["local_device_ids"] == [1] and kwargs["coordinator_address"] == "gpu011:5000"
    assert "cluster_detection_method" not in kwargs
    # SLURM_NPROCS (older SLURM) works too.
    env2 = {k: v for k, v in env.items() if k != "SLURM_NTASKS"} | {"SLURM_NPROCS": "2"}
    assert resolve(CFG, env2)[1]["num_processes"] == 2


def test_tpu_and_mode_override():
    assert resolve(CFG, {"TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3"})[0] == "auto-detect"
    assert resolve(CFG, {"MEGASCALE_COORDINATOR_ADDRESS": "h0"})[0] == "auto-detect"
    assert resolve(CFG, {"ORCHESTRA_DISTRIBUTED": "on"})[0] == "auto-detect"
    assert resolve(DistributedConfig(mode="off"), {"TPU_WORKER_HOSTNAMES": "h0,h1"}) == ("single", {})
    assert resolve(CFG, {"ORCHESTRA_DISTRIBUTED": "off", "SLURM_NTASKS": "4"}) == ("single", {})
    with pytest.raises(ValueError, match="distributed.mode='maybe'"):
        resolve(DistributedConfig(mode="maybe"), {})


@pytest.mark.parametrize("n, count", [(10, 3), (12, 4), (5, 8), (100, 7)])
@pytest.mark.parametrize("drop", [True, False])
def test_process_shard_matches_grain(n, count, drop):
    covered = []
    for index in range(count):
        got = process_shard(n, index, count, drop_remainder=drop)
        assert (got.start, got.stop) == even_split(n, ShardOptions(index, count, drop))
        covered += list(got)
    assert covered == list(range(n)) if not drop else len(covered) == count * (n // count)


def test_single_process_helpers():
    assert grain_shard_options() == ShardOptions(0, 1, True)
    assert split_for_process([1, 2, 3, 4], 1, 2) == [3, 4]
    with pytest.raises(ValueError, match="3 items cannot be split evenly over 2"):
        split_for_process([1, 2, 3], 0, 2)
    mesh = make_mesh(MeshConfig(data=2, fsdp=4))
    local = {"tokens": np.arange(16 * 3, dtype=np.int32).reshape(16, 3)}
    out = host_local_batch_to_global(local, mesh)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), local["tokens"])
    assert {s.data.shape for s in out["tokens"].addressable_shards} == {(2, 3)}
    assert local_row_range(16, out["tokens"].sharding) == (0, 16)
    assert jax.process_count() == 1
