"""One process of a 2-process CPU job (run by test_multihost_checkpoint.py): saves a sharded state with
this process's own data-iterator state, then restores it and writes what it got back.

usage: multihost_ckpt_worker.py COORDINATOR PROCESS_ID CKPT_DIR OUT_JSON MODE   (MODE: save | restore)
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from orchestra_jax.checkpoint import Checkpointer
from orchestra_jax.parallel import DistributedConfig, MeshConfig, initialize, make_mesh
from orchestra_jax.preemption import PreemptionGuard


def main(coordinator, process_id, ckpt_dir, out_json, mode):
    initialize(DistributedConfig(coordinator_address=coordinator, num_processes=2, process_id=process_id,
                                 initialization_timeout_s=60))
    mesh = make_mesh(MeshConfig(data=-1, fsdp=1, tensor=1))
    sharding = NamedSharding(mesh, P("data"))
    w = jax.make_array_from_callback((8, 3), sharding, lambda idx: np.arange(24, dtype=np.float32).reshape(8, 3)[idx])
    state = {"w": w, "step": np.asarray(4, np.int32)}  # host scalars: numpy (a single-device jax array is host-local)
    ck = Checkpointer(ckpt_dir, keep=2, save_every=2)
    out = {}
    if mode == "save":
        # each host's own iterator position (they read different task shards)
        data = {"next_index": 100 + process_id, "host": f"p{process_id}"}
        out["should_save_3"] = ck.should_save(3)
        out["saved_4"] = bool(ck.save(4, state, data))
        ck.wait()
        with PreemptionGuard() as guard:  # the stop flag is agreed by every process
            if process_id == 1:
                guard.request()
            out["stop_requested"] = guard.stop_requested()
    else:
        target = {"w": jax.ShapeDtypeStruct((8, 3), jnp.float32, sharding=sharding),
                  "step": jax.ShapeDtypeStruct((), jnp.int32)}
        restored, data = ck.restore(None, target)
        out["data"] = data
        out["step"] = int(restored["step"])
        out["w_local_sum"] = float(sum(np.asarray(s.data).sum() for s in restored["w"].addressable_shards))
        out["keys"] = sorted(ck.saved_keys())
    ck.close()
    with open(out_json, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
