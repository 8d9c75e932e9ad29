"""One process of a 2-process jax.distributed job on CPU (run by test_parallel_multihost.py).

usage: multihost_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID OUT_DIR STEPS
Each process has 4 CPU devices (XLA_FLAGS from the parent); the mesh (data=2, fsdp=2, tensor=2) spans all
8. Even steps feed each process only its own rows of a fixed synthetic batch, odd steps the whole host
batch (identical on every process), step 2 those rows as a list of two row buckets; process 0 writes the per-step metrics, the final parameters
(gathered) and sharded log-probs to OUT_DIR.
"""
import json
import sys
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

import parallel_common as pc
from orchestra_jax.rl.step import build_update, token_logprobs
from orchestra_jax.parallel import (DistributedConfig, MeshConfig, host_local_batch_to_global, initialize,
                                    is_main_process, make_mesh, make_sharded_logprob_fn,
                                    make_sharded_update_fn)
from orchestra_jax.parallel.distributed import local_row_range, shutdown
from orchestra_jax.parallel.sharding import batch_spec


def main(coordinator: str, num_processes: int, process_id: int, out_dir: str, steps: int) -> None:
    info = initialize(DistributedConfig(coordinator_address=coordinator, num_processes=num_processes,
                                        process_id=process_id, initialization_timeout_s=60))
    assert (info.source, info.process_index, info.process_count) == ("explicit", process_id, num_processes)
    assert jax.local_device_count() == 4 and jax.device_count() == 4 * num_processes, jax.devices()

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    update = make_sharded_update_fn(build_update(pc.MODEL, pc.ALGO, pc.optimizer()), pc.MODEL, pc.optimizer(), mesh)
    params = update.shard_params(pc.params())  # same host values everywhere; each process keeps its shards
    opt_state = update.init_opt_state(params)

    full = pc.batch()
    rows = full["tokens"].shape[0]
    start, stop = local_row_range(rows, NamedSharding(mesh, batch_spec(2, mesh)))
    assert stop - start == rows // num_processes
    batch = host_local_batch_to_global({k: v[start:stop] for k, v in full.items()}, mesh)
    assert batch["tokens"].shape == full["tokens"].shape and not batch["tokens"].is_fully_addressable

    # train.row_bucket's layout: each process's rows in two buckets, each bucket a global batch of half the rows
    half = (stop - start) // 2
    buckets = [host_local_batch_to_global({k: v[start + i * half:start + (i + 1) * half] for k, v in full.items()},
                                          mesh) for i in range(2)]

    history = []
    for step in range(steps):
        # Odd steps pass the host (numpy) global batch, identical on every process: the update places it;
        # step 2 the list of buckets, whose gradients the update accumulates (the same rows in all).
        params, opt_state, metrics = update(params, opt_state,
                                            buckets if step == 2 else full if step % 2 else batch)
        history.append(pc.to_floats(metrics))
    # rl.batch.agree_max: each process proposes its own packed-row count, all take the largest
    from orchestra_jax.rl.batch import agree_max, agree_max_each
    agreed_rows = [agree_max(3 + 4 * process_id), agree_max(9 - 4 * process_id)]
    # rl.batch.bucket_row_lens: each process proposes a length per bucket, all take each bucket's largest
    agreed_lens = agree_max_each([256 * (1 + process_id), 512 - 256 * process_id, 128])
    gathered = multihost_utils.process_allgather(params, tiled=True)
    logp, _ = make_sharded_logprob_fn(token_logprobs, pc.MODEL, mesh)(params, full)
    logp = multihost_utils.process_allgather(logp, tiled=True)
    if is_main_process():
        out = Path(out_dir)
        (out / "metrics.json").write_text(json.dumps({"history": history, "rows": [start, stop],
                                                      "agreed_rows": agreed_rows, "agreed_lens": agreed_lens}))
        flat = {jax.tree_util.keystr(path): np.asarray(leaf)
                for path, leaf in jax.tree_util.tree_flatten_with_path(gathered)[0]}
        np.savez(out / "params.npz", **flat)
        np.save(out / "logp.npy", np.asarray(logp))
    else:
        (Path(out_dir) / f"rows_{process_id}.json").write_text(json.dumps([start, stop]))
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
