"""Scale-out: device meshes, logical-axis sharding, the sharded update, multi-host runtime."""
from orchestra_jax.parallel.distributed import (DistributedConfig, ProcessInfo, host_local_batch_to_global,
                                                initialize, is_main_process, process_shard)
from orchestra_jax.parallel.mesh import MESH_AXES, MeshConfig, make_mesh, mesh_summary
from orchestra_jax.parallel.sharded_fns import ShardedUpdate, make_sharded_logprob_fn, make_sharded_update_fn
from orchestra_jax.parallel.sharding import (DEFAULT_RULES, batch_row_multiple, batch_shardings, logical_to_sharding,
                                             logical_to_spec, make_rules, opt_state_shardings, param_shardings,
                                             put_on_mesh, shard_batch, shard_params)

__all__ = [
    "DEFAULT_RULES", "DistributedConfig", "MESH_AXES", "MeshConfig", "ProcessInfo", "ShardedUpdate",
    "batch_row_multiple", "batch_shardings", "host_local_batch_to_global", "initialize", "is_main_process",
    "logical_to_sharding", "logical_to_spec", "make_mesh", "make_rules", "make_sharded_logprob_fn",
    "make_sharded_update_fn", "mesh_summary", "opt_state_shardings", "param_shardings", "process_shard",
    "put_on_mesh", "shard_batch", "shard_params",
]
