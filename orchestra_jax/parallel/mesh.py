"""Device mesh from config: three named axes (data, fsdp, tensor) with Auto axis types.

- data:   pure data parallelism (parameters replicated across it, batch rows split).
- fsdp:   data parallelism whose parameters and optimizer state are also split (ZeRO-3 style).
- tensor: tensor (model) parallelism over heads / mlp / vocab.

Axis types are `AxisType.Auto`: `jax.make_mesh` defaults to Explicit axes, under which a matmul with a
sharded contracting dimension raises ShardingTypeError; Auto lets XLA's partitioner insert collectives.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape; -1 on one axis means "all remaining devices".

    rules: logical axis rule overrides, each "logical=mesh_axis" (e.g. "embed=fsdp"), several mesh axes
    joined with "+" ("batch=data+fsdp"), or an empty right side for "replicated" ("vocab=").
    An override replaces the default rule for that logical name (see sharding.DEFAULT_RULES).
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    rules: tuple[str, ...] = ()

    def axis_sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)


def resolve_axis_sizes(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Replaces a -1 entry by the remaining device count; checks the product equals `num_devices`."""
    sizes = cfg.axis_sizes()
    for name, size in zip(MESH_AXES, sizes):
        if size == 0 or size < -1:
            raise ValueError(f"mesh.{name}={size}: axis sizes must be positive or -1 (fill the rest)")
    fills = [name for name, size in zip(MESH_AXES, sizes) if size == -1]
    if len(fills) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {fills} (sizes {dict(zip(MESH_AXES, sizes))})")
    fixed = math.prod(s for s in sizes if s != -1)
    if fills:
        if num_devices % fixed:
            raise ValueError(
                f"mesh: {num_devices} devices are not divisible by the fixed axes "
                f"{ {n: s for n, s in zip(MESH_AXES, sizes) if s != -1} } (product {fixed}), "
                f"so mesh.{fills[0]}=-1 cannot fill the rest")
        sizes = tuple(num_devices // fixed if s == -1 else s for s in sizes)
    elif fixed != num_devices:
        raise ValueError(
            f"mesh: data x fsdp x tensor = {sizes[0]} x {sizes[1]} x {sizes[2]} = {fixed} "
            f"but there are {num_devices} devices; set one axis to -1 or pass matching sizes")
    return tuple(int(s) for s in sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a (data, fsdp, tensor) Mesh with Auto axis types over `devices` (default: all devices).

    With all devices (the usual case, including multi-host), `jax.make_mesh` orders them for the
    physical topology (ICI rings on TPU, NVLink islands on GPU); an explicit device list is used in
    the given order.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: empty device list")
    shape = resolve_axis_sizes(cfg, len(devices))
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == jax.device_count() and set(devices) == set(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES, axis_types=axis_types)


def mesh_summary(mesh: Mesh) -> str:
    """One line: axis sizes, device kind and process count (for logs)."""
    sizes = ", ".join(f"{name}={size}" for name, size in mesh.shape.items())
    kind = mesh.devices.flat[0].device_kind
    return f"mesh({sizes}) over {mesh.devices.size} x {kind} on {jax.process_count()} process(es)"
