"""Logical axis rules -> NamedShardings for parameters, optimizer state and batches (the jitted update and
log-prob functions over a mesh: `parallel.sharded_fns`).

Arrays carry logical axis names (batch, sequence, embed, heads, kv_heads, head_dim, mlp, vocab); rules map
them to mesh axes (data, fsdp, tensor). With the default rules:
- parameters are split over fsdp on their `embed` dimension (FSDP / ZeRO-3) and over tensor on heads /
  kv_heads / mlp / vocab (tensor parallelism); the optimizer state is sharded exactly like the parameters;
- batch rows are split over data x fsdp; sequence and head_dim are never split.
The update is one `jax.jit` with explicit in / out shardings; XLA's partitioner inserts the all-gathers
(FSDP), reduce-scatters (gradients) and all-reduces (tensor parallel matmuls).

Rules follow flax's priority semantics (`nn.logical_axis_rules`): they are visited in order and a mesh
axis is used at most once per array, so for an activation [batch, sequence, embed] `batch` takes fsdp
first and `embed` stays unsplit.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from orchestra_jax.parallel.mesh import MESH_AXES, MeshConfig

log = logging.getLogger(__name__)

MeshAxes = str | tuple[str, ...] | None
LogicalRules = tuple[tuple[str, MeshAxes], ...]

LOGICAL_AXES: tuple[str, ...] = ("batch", "sequence", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab")

# Order is priority: batch first, so activations keep fsdp for their rows and leave embed unsplit.
DEFAULT_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("sequence", None),
    ("head_dim", None),
    ("layers", None),
)


# ----------------------------------------------------------------------------------------------- rules
def parse_rule_override(text: str) -> tuple[str, MeshAxes]:
    """"embed=fsdp" -> ("embed", "fsdp"); "batch=data+fsdp" -> ("batch", ("data", "fsdp")); "vocab=" -> None."""
    if "=" not in text:
        raise ValueError(f"mesh.rules entry {text!r}: expected 'logical=mesh_axis[+mesh_axis]' or 'logical='")
    name, _, rhs = (part.strip() for part in text.partition("="))
    if not name:
        raise ValueError(f"mesh.rules entry {text!r}: empty logical axis name")
    axes = tuple(a.strip() for a in rhs.split("+") if a.strip()) if rhs.lower() not in ("", "none", "null") else ()
    for axis in axes:
        if axis not in MESH_AXES:
            raise ValueError(f"mesh.rules entry {text!r}: unknown mesh axis {axis!r} (mesh axes: {MESH_AXES})")
    if not axes:
        return name, None
    return name, axes[0] if len(axes) == 1 else axes


def make_rules(overrides: Sequence[str] | MeshConfig = (), base: LogicalRules = DEFAULT_RULES) -> LogicalRules:
    """Default rules with overrides applied (an override keeps the position of the rule it replaces;
    a new logical name goes first, i.e. highest priority)."""
    if isinstance(overrides, MeshConfig):
        overrides = overrides.rules
    rules = list(base)
    for text in overrides:
        name, axes = parse_rule_override(text)
        for i, (existing, _) in enumerate(rules):
            if existing == name:
                rules[i] = (name, axes)
                break
        else:
            rules.insert(0, (name, axes))
    return tuple(rules)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _from_tuple(axes: tuple[str, ...]) -> MeshAxes:
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def logical_to_spec(logical_axes: Sequence[str | None], mesh: Mesh, rules: LogicalRules = DEFAULT_RULES,
                    shape: Sequence[int] | None = None, name: str = "array") -> P:
    """PartitionSpec for one array from its logical axis names (flax priority semantics).

    If `shape` is given, a dimension not divisible by the product of its mesh axes sizes drops mesh axes
    from the end until it divides (down to replication), and a warning names the array and dimension.
    """
    logical_axes = tuple(logical_axes)
    if shape is not None and len(shape) != len(logical_axes):
        raise ValueError(f"{name}: {len(logical_axes)} logical axes {logical_axes} for an array of shape "
                         f"{tuple(shape)}")
    dup = {a for a in logical_axes if a is not None and logical_axes.count(a) > 1}
    if dup:
        raise ValueError(f"{name}: logical axes {sorted(dup)} occur more than once in {logical_axes}")
    for _, axes in rules:
        for axis in _as_tuple(axes):
            if axis not in mesh.shape:
                raise ValueError(f"logical axis rule maps to mesh axis {axis!r}, not in mesh {dict(mesh.shape)}")
    assigned: list[tuple[str, ...] | None] = [None] * len(logical_axes)
    used: set[str] = set()
    for logical, axes in rules:
        if logical not in logical_axes:
            continue
        pos = logical_axes.index(logical)
        mesh_axes = _as_tuple(axes)
        if assigned[pos] is not None or used.intersection(mesh_axes):
            continue
        assigned[pos] = mesh_axes
        used.update(mesh_axes)
    spec = []
    for dim, mesh_axes in enumerate(assigned):
        mesh_axes = mesh_axes or ()
        if shape is not None:
            kept = mesh_axes
            while kept and shape[dim] % math.prod(mesh.shape[a] for a in kept):
                kept = kept[:-1]
            if kept != mesh_axes:
                log.warning("%s: dimension %d (%s, size %d) is not divisible by mesh axes %s (size %d); "
                            "sharding it over %s instead", name, dim, logical_axes[dim], shape[dim], mesh_axes,
                            math.prod(mesh.shape[a] for a in mesh_axes), kept or "nothing (replicated)")
            mesh_axes = kept
        spec.append(_from_tuple(mesh_axes))
    return P(*spec)


def model_rules(model_cfg, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> LogicalRules:
    """Rules adjusted to a model's sizes: a logical axis whose size (heads, kv_heads, mlp, vocab, embed,
    head_dim) its mesh axes do not divide loses those mesh axes (with a warning), so parameter shardings
    and the model's activation constraints stay valid (e.g. 2 kv heads on tensor=4 are replicated)."""
    sizes = {"heads": model_cfg.num_heads, "kv_heads": model_cfg.num_kv_heads,
             "mlp": model_cfg.intermediate_size, "vocab": model_cfg.vocab_size,
             "embed": model_cfg.hidden_size, "head_dim": model_cfg.head_dim}
    out = []
    for name, axes in rules:
        mesh_axes = _as_tuple(axes)
        if name in sizes:
            kept = tuple(a for a in mesh_axes if a in mesh.shape)
            if len(kept) != len(mesh_axes):
                raise ValueError(f"logical axis rule {name} -> {axes}: mesh axes {mesh_axes} not all in mesh "
                                 f"{dict(mesh.shape)}")
            while kept and sizes[name] % math.prod(mesh.shape[a] for a in kept):
                kept = kept[:-1]
            if kept != mesh_axes:
                log.warning("model %s=%d is not divisible by mesh axes %s; sharding it over %s instead",
                            name, sizes[name], mesh_axes, kept or "nothing (replicated)")
            axes = _from_tuple(kept)
        out.append((name, axes))
    return tuple(out)


def _is_axes_leaf(x: Any) -> bool:
    return isinstance(x, P) or (isinstance(x, tuple) and all(e is None or isinstance(e, str) for e in x))


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path) or "array"


def logical_to_sharding(logical_axes_tree: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES,
                        shapes_tree: Any = None) -> Any:
    """Tree of tuples of logical axis names -> same tree of NamedShardings.

    `shapes_tree` (arrays or ShapeDtypeStructs, same structure) enables the divisibility fallback:
    a dimension its mesh axes do not divide is replicated (with a warning) instead of failing in jit.
    """
    if shapes_tree is None:
        return jax.tree_util.tree_map_with_path(
            lambda path, axes: NamedSharding(mesh, logical_to_spec(tuple(axes), mesh, rules, None,
                                                                   _path_name(path))),
            logical_axes_tree, is_leaf=_is_axes_leaf)
    return jax.tree_util.tree_map_with_path(
        lambda path, axes, x: NamedSharding(mesh, logical_to_spec(tuple(axes), mesh, rules, np.shape(x),
                                                                  _path_name(path))),
        logical_axes_tree, shapes_tree, is_leaf=_is_axes_leaf)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# ------------------------------------------------------------------------------------- params / optimizer
def abstract_params(model_cfg) -> Any:
    """ShapeDtypeStruct tree of the model's parameters (no memory allocated)."""
    from orchestra_jax.model import init_params
    return jax.eval_shape(lambda key: init_params(model_cfg, key), jax.random.key(0))


def param_shardings(model_cfg, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """NamedSharding tree for the policy (and reference policy) parameters: FSDP on embed + tensor parallel."""
    from orchestra_jax.model import param_logical_axes
    rules = model_rules(model_cfg, mesh, rules)
    return logical_to_sharding(param_logical_axes(model_cfg), mesh, rules, abstract_params(model_cfg))


def opt_state_shardings(optimizer, params_shapes: Any, params_shardings: Any, mesh: Mesh) -> Any:
    """Optimizer state shardings: every parameter-shaped subtree of the optax state (Adam's mu and nu, ...)
    is sharded like the parameters; everything else (step counts, scalars) is replicated."""
    state_shapes = jax.eval_shape(optimizer.init, params_shapes)
    rep = replicated(mesh)
    return optax.tree_map_params(optimizer, lambda _, sharding: sharding, state_shapes, params_shardings,
                                 transform_non_params=lambda _: rep)


# ---------------------------------------------------------------------------------------------- batches
def batch_row_multiple(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> int:
    """Rows of a packed batch must be a multiple of this (the size of the mesh axes `batch` maps to)."""
    axes = _as_tuple(dict(rules).get("batch"))
    return int(math.prod(mesh.shape[a] for a in axes))


def batch_spec(ndim: int, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> P:
    """Spec of one batch array: [R] / [R, L] / [M, R, L] (micro-batches first); rows split, rest replicated."""
    if ndim == 0:
        return P()
    row_axis = 0 if ndim <= 2 else ndim - 2
    logical = [None] * ndim
    logical[row_axis] = "batch"
    if ndim >= 2:
        logical[-1] = "sequence"
    return logical_to_spec(tuple(logical), mesh, rules)


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> dict:
    """NamedSharding per batch array (rows over data x fsdp); checks the row count divides."""
    multiple = batch_row_multiple(mesh, rules)
    out = {}
    for key, value in batch.items():
        shape = np.shape(value)
        spec = batch_spec(len(shape), mesh, rules)
        if len(shape) >= 1:
            rows = shape[0] if len(shape) <= 2 else shape[-2]
            if rows % multiple:
                raise ValueError(f"batch[{key!r}] has {rows} rows (shape {shape}), not divisible by the "
                                 f"{multiple} devices rows are split over; pack with num_rows a multiple "
                                 f"of parallel.sharding.batch_row_multiple(mesh)")
        out[key] = NamedSharding(mesh, spec)
    return out


# ----------------------------------------------------------------------------------- placing host data
def put_on_mesh(tree: Any, shardings: Any) -> Any:
    """Places a tree of (host or device) arrays onto `shardings` (same structure or a prefix).

    Multi-host: host values must be identical on every process (each process keeps only its shards);
    for per-process rows use `distributed.host_local_batch_to_global`.
    """
    def put(x, sharding):
        if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
            return jax.device_put(x, sharding)  # single process, or resharding an existing global array
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    if isinstance(shardings, NamedSharding):
        return jax.tree_util.tree_map(lambda x: put(x, shardings), tree)
    return jax.tree_util.tree_map(put, tree, shardings)


def shard_params(params: Any, logical_axes: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """Places parameters (policy or reference) onto the mesh following their logical axes."""
    return put_on_mesh(params, logical_to_sharding(logical_axes, mesh, rules, params))


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> dict:
    """Places a global batch dict (same on every process) onto the mesh, rows over data x fsdp."""
    return put_on_mesh(dict(batch), batch_shardings(batch, mesh, rules))


def replicate_to_local(tree: Any, mesh: Mesh) -> Any:
    """A process-local copy of a (sharded, possibly multi-host) tree on one local device: an all-gather on
    the mesh, then this process's first replica. For host-side loops (rollouts, evaluation) that run plain
    jit on this process's own data."""
    fn = _REPLICATE.get(mesh)
    if fn is None:  # one jitted all-gather per mesh: a fresh jit per call would trace and compile every step
        fn = _REPLICATE[mesh] = jax.jit(lambda t: t, out_shardings=replicated(mesh))
    return jax.tree_util.tree_map(lambda x: x.addressable_data(0), fn(tree))


_REPLICATE: dict = {}  # mesh -> the jitted all-gather of replicate_to_local


def replicate_compile_count() -> int:
    """Compiled programs of `replicate_to_local` held by this process (one per mesh and tree structure)."""
    return sum(fn._cache_size() for fn in _REPLICATE.values())


def clear_replicate_cache() -> None:
    """Drops `replicate_to_local`'s compiled programs (a test that counts one run's compiles starts at 0)."""
    _REPLICATE.clear()
