"""Multi-host runtime: `jax.distributed.initialize` from the environment, process-aware data helpers.

JAX is multi-controller: every host runs the same program on its own devices and the runtime joins them
into one set of global devices. `initialize(cfg)` picks the coordinator, process count and process id:

1. explicit: cfg.coordinator_address + num_processes + process_id (or the JAX_COORDINATOR_ADDRESS,
   JAX_NUM_PROCESSES, JAX_PROCESS_ID environment variables);
2. SLURM: SLURM_NTASKS (or SLURM_NPROCS) > 1, SLURM_PROCID, coordinator = first host of
   SLURM_STEP_NODELIST / SLURM_JOB_NODELIST on cfg.coordinator_port (default: derived from the job id);
3. Cloud TPU pod slice / GKE: TPU_WORKER_HOSTNAMES (several hosts), TPU_PROCESS_ADDRESSES or
   MEGASCALE_COORDINATOR_ADDRESS, or mode="on" (ORCHESTRA_DISTRIBUTED=on, set by launch/tpu_vm.sh):
   `jax.distributed.initialize()` with JAX's own cluster detection (TPU metadata, GKE, SLURM, OpenMPI);
4. otherwise a single process: nothing to do.

After it, `jax.devices()` are all devices of all processes; `jax.local_devices()` this host's.

Multi-host rules for the rest of the pipeline:
- every process runs the same jitted functions on the same global shapes, in the same order;
- each process feeds only its rows: shard the task stream by process (`grain_shard_options()` /
  `process_shard`), and build global arrays with `host_local_batch_to_global`; rollouts are split the
  same way (each process rolls out its share of the groups);
- orbax checkpointing is collective: EVERY process must call `CheckpointManager.save` / `restore` (each
  writes its own shards; process 0 writes the metadata); a save called only on process 0 hangs;
- console logs, metrics.jsonl and wandb from process 0 only (`is_main_process()`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How to join the processes of a multi-host job.

    mode: "auto" (initialize only when the environment shows several processes), "on" (always call
      jax.distributed.initialize, with JAX's cluster auto-detection filling unset fields), "off" (never).
      The environment variable ORCHESTRA_DISTRIBUTED overrides it (the launch scripts set it).
    coordinator_address: "host:port" of process 0; "" = from the environment.
    num_processes / process_id: -1 = from the environment.
    coordinator_port: port used when the coordinator host comes from SLURM; 0 = derived from the job id.
    local_device_ids: devices this process drives (e.g. one GPU per process); () = all visible devices.
    initialization_timeout_s: how long to wait for all processes before failing.
    cpu_collectives: cross-process collectives on CPU ("gloo" or "mpi").
    """

    mode: str = "auto"
    coordinator_address: str = ""
    num_processes: int = -1
    process_id: int = -1
    coordinator_port: int = 0
    local_device_ids: tuple[int, ...] = ()
    initialization_timeout_s: int = 300
    cpu_collectives: str = "gloo"


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """What `initialize` did: source is "single", "explicit", "slurm" or "auto-detect"."""

    source: str
    process_index: int
    process_count: int
    coordinator_address: str = ""


def _env_int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        if env.get(name, "").strip():
            try:
                return int(env[name])
            except ValueError as e:
                raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from e
    return None


def first_slurm_host(nodelist: str) -> str:
    """First host name of a SLURM node list: 'gpu[003-010,012],cpu1' -> 'gpu003'."""
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("empty SLURM node list")
    match = re.match(r"([^,\[]*)(\[([^\]]*)\])?", nodelist)
    prefix, _, ranges = match.groups()
    if ranges is None:
        return prefix
    first = re.split(r"[,-]", ranges)[0]
    return prefix + first


def _no_autodetect(kwargs: dict[str, Any]) -> dict[str, Any]:
    # With every field given, JAX would still run its cluster detection to fill local_device_ids, which
    # under SLURM restricts a process to the GPU of its local rank; one process per node must see all.
    if "local_device_ids" not in kwargs:
        kwargs["cluster_detection_method"] = "deactivate"
    return kwargs


def resolve(cfg: DistributedConfig, env: Mapping[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """Decides how to initialize, without side effects: (source, kwargs for jax.distributed.initialize).

    source "single" means no initialization is needed.
    """
    env = os.environ if env is None else env
    mode = env.get("ORCHESTRA_DISTRIBUTED", "").strip().lower() or cfg.mode
    if mode not in MODES:
        raise ValueError(f"distributed.mode={mode!r}: expected one of {MODES}")
    if mode == "off":
        return "single", {}
    common: dict[str, Any] = {"initialization_timeout": cfg.initialization_timeout_s}
    if cfg.local_device_ids:
        common["local_device_ids"] = list(cfg.local_device_ids)

    coordinator = cfg.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
    num = cfg.num_processes if cfg.num_processes >= 0 else _env_int(env, "JAX_NUM_PROCESSES")
    pid = cfg.process_id if cfg.process_id >= 0 else _env_int(env, "JAX_PROCESS_ID")
    if coordinator or num is not None or pid is not None:
        missing = [n for n, v in (("coordinator_address", coordinator), ("num_processes", num),
                                  ("process_id", pid)) if v in ("", None)]
        if missing:
            raise ValueError(f"distributed: explicit setup needs coordinator_address, num_processes and "
                             f"process_id; missing {missing}")
        if not 0 <= pid < num:
            raise ValueError(f"distributed: process_id={pid} out of range for num_processes={num}")
        if num == 1 and mode == "auto":
            return "single", {}
        return "explicit", _no_autodetect(dict(common, coordinator_address=coordinator, num_processes=num,
                                               process_id=pid))

    slurm_tasks = _env_int(env, "SLURM_NTASKS", "SLURM_NPROCS")
    if slurm_tasks is not None and "SLURM_PROCID" in env and "SLURM_JOB_ID" in env:
        if slurm_tasks == 1 and mode == "auto":
            return "single", {}
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise ValueError("distributed: SLURM job without SLURM_STEP_NODELIST / SLURM_JOB_NODELIST")
        port = cfg.coordinator_port or _env_int(env, "JAX_COORDINATOR_PORT") or (
            int(env["SLURM_JOB_ID"]) % 4096 + 61440)  # same ephemeral-range rule as JAX's SLURM detection
        kwargs = dict(common, coordinator_address=f"{first_slurm_host(nodelist)}:{port}",
                      num_processes=slurm_tasks, process_id=int(env["SLURM_PROCID"]))
        # One process per GPU (srun --ntasks-per-node=<gpus>): each drives the GPU of its local rank.
        gpus_per_task = _env_int(env, "ORCHESTRA_GPUS_PER_TASK")
        if "local_device_ids" not in kwargs and gpus_per_task == 1 and "SLURM_LOCALID" in env:
            kwargs["local_device_ids"] = [int(env["SLURM_LOCALID"])]
        return "slurm", _no_autodetect(kwargs)

    tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if mode == "on" or len(tpu_hosts) > 1 or env.get("TPU_PROCESS_ADDRESSES") or \
            env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "auto-detect", common
    return "single", {}


def initialize(cfg: DistributedConfig = DistributedConfig()) -> ProcessInfo:
    """Joins this process to the job (idempotent); a no-op for a single process. Call before any other
    JAX call that touches devices."""
    source, kwargs = resolve(cfg)
    if source != "single" and not jax.distributed.is_initialized():
        if cfg.cpu_collectives not in ("gloo", "mpi"):
            raise ValueError(f"distributed.cpu_collectives={cfg.cpu_collectives!r}: expected 'gloo' or 'mpi'")
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
        log.info("jax.distributed.initialize via %s: %s", source, kwargs)
        jax.distributed.initialize(**kwargs)
    info = ProcessInfo(source=source, process_index=jax.process_index(), process_count=jax.process_count(),
                       coordinator_address=kwargs.get("coordinator_address", ""))
    if info.process_count > 1:
        log.info("process %d of %d, %d local / %d global devices", info.process_index, info.process_count,
                 jax.local_device_count(), jax.device_count())
    return info


def shutdown() -> None:
    """Leaves the job cleanly (all processes should call it at the end)."""
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def is_main_process() -> bool:
    """True on process 0: the one that logs, writes metrics.jsonl and talks to wandb."""
    return jax.process_index() == 0


def process_shard(dataset_len: int, process_index: int | None = None, process_count: int | None = None,
                  drop_remainder: bool = True) -> range:
    """Contiguous index range of a dataset this process reads (same split rule as grain's ShardOptions)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} out of range for process_count={count}")
    if drop_remainder:
        per = dataset_len // count
        return range(index * per, (index + 1) * per)
    per, extra = divmod(dataset_len, count)
    start = index * per + min(index, extra)
    return range(start, start + per + (1 if index < extra else 0))


def grain_shard_options(drop_remainder: bool = True):
    """grain ShardOptions for this process (pass as `shard_options=` to grain's IndexSampler /
    `MapDataset.shard`-style APIs): process i of n reads the i-th of n disjoint shards."""
    import grain.python as grain
    return grain.ShardOptions(shard_index=jax.process_index(), shard_count=jax.process_count(),
                              drop_remainder=drop_remainder)


def local_row_range(global_rows: int, sharding: jax.sharding.Sharding) -> tuple[int, int]:
    """Rows [start, stop) of a [R, ...] array that this process's devices hold under `sharding`.

    With rows split over data x fsdp and devices ordered host-major (as `make_mesh` orders them), each
    process holds one contiguous block of R / process_count rows.
    """
    index_map = sharding.addressable_devices_indices_map((global_rows,))
    starts = [idx[0].start or 0 for idx in index_map.values()]
    stops = [global_rows if idx[0].stop is None else idx[0].stop for idx in index_map.values()]
    start, stop = min(starts), max(stops)
    covered = sorted({(a, b) for a, b in zip(starts, stops)})
    total = sum(b - a for a, b in covered)
    if total != stop - start and not all(b - a == global_rows for a, b in covered):
        raise ValueError(f"this process's rows under {sharding} are not one contiguous block: {covered}")
    return start, stop


def host_local_batch_to_global(local_batch: Mapping[str, Any], mesh: jax.sharding.Mesh,
                               rules=None) -> dict:
    """Builds global batch arrays from each process's own rows (`jax.make_array_from_process_local_data`).

    local_batch[k]: [R_local, L] (or [M, R_local, L]) on this process; the global batch has
    R_local * process_count rows, in process order. Rows are split over data x fsdp as in
    `sharding.batch_shardings`.
    """
    from orchestra_jax.parallel.sharding import DEFAULT_RULES, batch_spec
    rules = DEFAULT_RULES if rules is None else rules
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        row_axis = 0 if value.ndim <= 2 else value.ndim - 2
        global_shape = list(value.shape)
        global_shape[row_axis] *= jax.process_count()
        sharding = jax.sharding.NamedSharding(mesh, batch_spec(value.ndim, mesh, rules))
        out[key] = jax.make_array_from_process_local_data(sharding, value, tuple(global_shape))
    return out


def split_for_process(items: Sequence[Any], process_index: int | None = None,
                      process_count: int | None = None) -> list[Any]:
    """This process's contiguous share of a list (e.g. rollout groups); the length must divide evenly so
    every process runs the same shapes."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if len(items) % count:
        raise ValueError(f"{len(items)} items cannot be split evenly over {count} processes")
    per = len(items) // count
    return list(items[index * per:(index + 1) * per])
