"""Logical axis rules -> NamedShardings for parameters, optimizer state and batches; the sharded update.

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
from typing import Any, Callable, Mapping, Sequence

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


def _place_host_leaves(batch: dict, shardings: dict) -> dict:
    return {k: v if isinstance(v, jax.Array) and not v.is_fully_addressable else put_on_mesh(v, shardings[k])
            for k, v in batch.items()}


def shard_params(params: Any, logical_axes: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """Places parameters (policy or reference) onto the mesh following their logical axes."""
    return put_on_mesh(params, logical_to_sharding(logical_axes, mesh, rules, params))


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> dict:
    """Places a global batch dict (same on every process) onto the mesh, rows over data x fsdp."""
    return put_on_mesh(dict(batch), batch_shardings(batch, mesh, rules))


# ---------------------------------------------------------------------------------------- sharded update
def _batch_signature(batch: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(np.shape(v)), str(v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype))
                        for k, v in batch.items()))


class ShardedUpdate:
    """`update(params, opt_state, batch, ref_params=None) -> (params, opt_state, metrics)` jitted over a mesh.

    Parameters and optimizer state keep their shardings in and out (and are donated: the caller must not
    reuse the arrays it passed in); the reference params (if any) are sharded like the parameters; batch rows
    are split over data x fsdp; metrics come back replicated. The model runs under
    `nn.logical_axis_rules(rules)` and `jax.set_mesh(mesh)`, so its logical activation constraints resolve
    against this mesh. One compilation per batch layout (keys, shapes, dtypes); `num_compiled` counts them.

    Called with a list of same-layout micro-batches instead of one batch, it accumulates their gradients
    with the update's pieces (`rl.step.UpdateFns`: count, init_acc, accumulate, apply), each jitted once per
    micro-batch layout: a step of any number of micro-batches runs the same four programs (steps whose row
    count varies do not each compile a whole update).
    """

    def __init__(self, update: Callable, model_cfg, optimizer, mesh: Mesh, rules: LogicalRules,
                 donate: bool = True):
        from orchestra_jax.model import param_logical_axes
        rules = model_rules(model_cfg, mesh, rules)
        self.mesh, self.rules, self.optimizer, self.model_cfg = mesh, rules, optimizer, model_cfg
        self.param_logical_axes = param_logical_axes(model_cfg)
        self.params_shapes = abstract_params(model_cfg)
        self.param_shardings = logical_to_sharding(self.param_logical_axes, mesh, rules, self.params_shapes)
        self.opt_state_shardings = opt_state_shardings(optimizer, self.params_shapes, self.param_shardings, mesh)
        self._update = update
        self._donate = (0, 1) if donate else ()
        self._compiled: dict[tuple, Callable] = {}

    def _traced(self, params, opt_state, batch, ref_params):
        import flax.linen as nn
        with nn.logical_axis_rules(self.rules):
            return self._update(params, opt_state, batch, ref_params)

    def jitted(self, batch: Mapping[str, Any], with_ref: bool = False) -> Callable:
        """The jitted update for this batch layout (built once per layout)."""
        signature = (_batch_signature(batch), with_ref)
        if signature not in self._compiled:
            self._compiled[signature] = jax.jit(
                self._traced,
                in_shardings=(self.param_shardings, self.opt_state_shardings,
                              batch_shardings(batch, self.mesh, self.rules),
                              self.param_shardings if with_ref else None),
                out_shardings=(self.param_shardings, self.opt_state_shardings, replicated(self.mesh)),
                donate_argnums=self._donate)
        return self._compiled[signature]

    def _jitted_pieces(self, batch: Mapping[str, Any], with_ref: bool) -> tuple[Callable, ...]:
        """(count, init_acc, accumulate, apply) jitted for this micro-batch layout."""
        signature = ("pieces", _batch_signature(batch), with_ref)
        if signature not in self._compiled:
            import flax.linen as nn
            fns, rep, p_shard = self._update, replicated(self.mesh), self.param_shardings
            b_shard = batch_shardings(batch, self.mesh, self.rules)
            acc_shard = (rep, p_shard)  # (scalars, float32 gradients shaped like the params)

            def accumulate(params, acc, mb, ref_params, totals):
                with nn.logical_axis_rules(self.rules):
                    return fns.accumulate(params, acc, mb, ref_params, totals)

            self._compiled[signature] = (
                jax.jit(fns.count, in_shardings=(b_shard, rep), out_shardings=rep, donate_argnums=(1,)),
                jax.jit(fns.init_acc, in_shardings=(p_shard, b_shard), out_shardings=acc_shard),
                jax.jit(accumulate, in_shardings=(p_shard, acc_shard, b_shard, p_shard if with_ref else None, rep),
                        out_shardings=acc_shard, donate_argnums=(1,)),
                jax.jit(fns.apply, in_shardings=(p_shard, self.opt_state_shardings, acc_shard, rep),
                        out_shardings=(p_shard, self.opt_state_shardings, rep),
                        donate_argnums=self._donate))
        return self._compiled[signature]

    def _accumulated(self, params, opt_state, micro_batches: Sequence[Mapping[str, Any]], ref_params):
        if not all(hasattr(self._update, n) for n in ("count", "init_acc", "accumulate", "apply")):
            raise TypeError("ShardedUpdate: a list of micro-batches needs an update with count / init_acc / "
                            "accumulate / apply pieces (rl.step.build_update)")
        batches = [dict(b) for b in micro_batches]
        if not batches or len({_batch_signature(b) for b in batches}) != 1:
            raise ValueError(f"ShardedUpdate: micro-batches must share one layout (keys, shapes, dtypes); got "
                             f"{len({_batch_signature(b) for b in batches})} layouts in {len(batches)} micro-batches")
        count, init_acc, accumulate, apply = self._jitted_pieces(batches[0], ref_params is not None)
        if jax.process_count() > 1:
            shard = batch_shardings(batches[0], self.mesh, self.rules)
            batches = [_place_host_leaves(b, shard) for b in batches]
        with jax.set_mesh(self.mesh):
            totals = put_on_mesh((np.zeros((), np.float32), np.zeros((), np.float32)), replicated(self.mesh))
            for b in batches:  # the whole step's normalisers first
                totals = count(b, totals)
            acc = init_acc(params, batches[0])
            for b in batches:
                acc = accumulate(params, acc, b, ref_params, totals)
            return apply(params, opt_state, acc, totals)

    @property
    def num_compiled(self) -> int:
        """Compiled executables so far over all batch layouts (a static-shape run has exactly 1; a run of
        micro-batch lists 4, whatever their number)."""
        fns = [f for v in self._compiled.values() for f in (v if isinstance(v, tuple) else (v,))]
        return sum(fn._cache_size() for fn in fns)

    def __call__(self, params, opt_state, batch, ref_params=None):
        if isinstance(batch, (list, tuple)):
            return self._accumulated(params, opt_state, batch, ref_params)
        batch = dict(batch)
        fn = self.jitted(batch, ref_params is not None)
        if jax.process_count() > 1:  # host arrays = the global batch, identical on every process
            batch = _place_host_leaves(batch, batch_shardings(batch, self.mesh, self.rules))
        with jax.set_mesh(self.mesh):
            return fn(params, opt_state, batch, ref_params)

    # Helpers so callers need not rebuild shardings.
    def shard_params(self, params: Any) -> Any:
        return put_on_mesh(params, self.param_shardings)

    def init_opt_state(self, params: Any) -> Any:
        """optimizer.init run under jit, producing the state directly in its sharded layout."""
        return jax.jit(self.optimizer.init, in_shardings=(self.param_shardings,),
                       out_shardings=self.opt_state_shardings)(params)

    def shard_batch(self, batch: Mapping[str, Any]) -> dict:
        return shard_batch(batch, self.mesh, self.rules)


def make_sharded_update_fn(update: Callable, model_cfg, optimizer, mesh: Mesh, rules: LogicalRules | None = None,
                           *, donate: bool = True) -> ShardedUpdate:
    """Wraps an un-jitted update (`rl.step.build_update(...)`: (params, opt_state, batch, ref_params=None) ->
    (params, opt_state, metrics)) with explicit shardings on `mesh`. The caller builds the update, so this
    layer never imports the RL code above it."""
    rules = DEFAULT_RULES if rules is None else rules
    return ShardedUpdate(update, model_cfg, optimizer, mesh, rules, donate=donate)


def make_sharded_logprob_fn(logprob: Callable, model_cfg, mesh: Mesh, rules: LogicalRules | None = None) -> Callable:
    """`fn(params, batch) -> (logp_BT, entropy_BT)` jitted over `mesh`, where `logprob(model_cfg, params, tokens,
    positions, segment_ids[, prefix_segment_ids, prev_index])` is the un-jitted per-token log-prob function
    (`rl.step.token_logprobs`); the two prefix-sharing arrays are passed when the batch has them. The params
    use the policy's shardings; a batch in micro-batch layout [M, R/M, L] gives [M, R/M, L] results (the
    reshape is inside the jit: an eager reshape of the global batch loses its row sharding, and on several
    processes would mix their rows). `fn.num_compiled` counts compilations."""
    import flax.linen as nn
    rules = model_rules(model_cfg, mesh, DEFAULT_RULES if rules is None else rules)
    p_shard = param_shardings(model_cfg, mesh, rules)
    compiled: dict[tuple, Callable] = {}

    def traced(params, *arrays):
        lead = arrays[0].shape[:-2]  # [M, R/M, L] micro-batches: flattened inside the jit (row order kept)
        arrays = [a.reshape((-1,) + a.shape[len(lead) + 1:]) for a in arrays]
        with nn.logical_axis_rules(rules):
            logp, entropy = logprob(model_cfg, params, *arrays)
        return logp.reshape(lead + (-1,) + logp.shape[1:]), entropy.reshape(lead + (-1,) + entropy.shape[1:])

    def fn(params, batch):
        keys = ["tokens", "positions", "segment_ids"]
        if "prefix_segment_ids" in batch or "prev_index" in batch:
            keys += ["prefix_segment_ids", "prev_index"]
        arrays = {k: batch[k] for k in keys}
        signature = _batch_signature(arrays)
        if signature not in compiled:
            b = batch_shardings(arrays, mesh, rules)
            out = b["tokens"]
            compiled[signature] = jax.jit(traced, in_shardings=(p_shard,) + tuple(b[k] for k in keys),
                                          out_shardings=(out, out))
        if jax.process_count() > 1:
            arrays = _place_host_leaves(arrays, batch_shardings(arrays, mesh, rules))
        with jax.set_mesh(mesh):
            return compiled[signature](params, *(arrays[k] for k in keys))

    fn.num_compiled = lambda: sum(f._cache_size() for f in compiled.values())
    return fn


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
