"""The update and the log-prob pass jitted over a mesh with explicit shardings (`parallel.sharding` gives them).

The caller builds the un-jitted functions (`rl.step.build_update`, `rl.step.token_logprobs`), so this layer
never imports the RL code above it.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from orchestra_jax.parallel.sharding import (DEFAULT_RULES, LogicalRules, abstract_params, batch_shardings,
                                             logical_to_sharding, model_rules, opt_state_shardings,
                                             param_shardings, put_on_mesh, replicated, shard_batch)


def place_host_leaves(batch: dict, shardings: dict) -> dict:
    """Host arrays of a batch (identical on every process) placed on the mesh; global arrays kept as they are."""
    return {k: v if isinstance(v, jax.Array) and not v.is_fully_addressable else put_on_mesh(v, shardings[k])
            for k, v in batch.items()}


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

    Called with a list of micro-batches instead of one batch, it accumulates their gradients with the
    update's pieces (`rl.step.UpdateFns`: count, init_acc, accumulate, apply), each jitted once per
    micro-batch layout: a step of any number of same-layout micro-batches runs the same four programs (steps
    whose row count varies do not each compile a whole update); micro-batches of another length (shorter
    rows) add their own count / accumulate programs.
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
        self._pieces: dict[tuple, tuple[Callable, ...]] = {}  # (count, init_acc, accumulate, apply) per layout

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
        signature = (_batch_signature(batch), with_ref)
        if signature not in self._pieces:
            import flax.linen as nn
            fns, rep, p_shard = self._update, replicated(self.mesh), self.param_shardings
            b_shard = batch_shardings(batch, self.mesh, self.rules)
            acc_shard = (rep, p_shard)  # (scalars, float32 gradients shaped like the params)

            def accumulate(params, acc, mb, ref_params, totals):
                with nn.logical_axis_rules(self.rules):
                    return fns.accumulate(params, acc, mb, ref_params, totals)

            self._pieces[signature] = (
                jax.jit(fns.count, in_shardings=(b_shard, rep), out_shardings=rep, donate_argnums=(1,)),
                jax.jit(fns.init_acc, in_shardings=(p_shard, b_shard), out_shardings=acc_shard),
                jax.jit(accumulate, in_shardings=(p_shard, acc_shard, b_shard, p_shard if with_ref else None, rep),
                        out_shardings=acc_shard, donate_argnums=(1,)),
                jax.jit(fns.apply, in_shardings=(p_shard, self.opt_state_shardings, acc_shard, rep),
                        out_shardings=(p_shard, self.opt_state_shardings, rep),
                        donate_argnums=self._donate))
        return self._pieces[signature]

    def _accumulated(self, params, opt_state, micro_batches: Sequence[Mapping[str, Any]], ref_params):
        if not all(hasattr(self._update, n) for n in ("count", "init_acc", "accumulate", "apply")):
            raise TypeError("ShardedUpdate: a list of micro-batches needs an update with count / init_acc / "
                            "accumulate / apply pieces (rl.step.build_update)")
        batches = [dict(b) for b in micro_batches]
        if not batches:
            raise ValueError("ShardedUpdate: an empty list of micro-batches")
        if len({tuple(sorted(b)) for b in batches}) != 1:
            raise ValueError(f"ShardedUpdate: micro-batches must have the same keys; got "
                             f"{sorted({tuple(sorted(b)) for b in batches})}")
        # micro-batches may differ in shape (train.short_row_lens): the pieces are jitted per layout
        pieces = [self._jitted_pieces(b, ref_params is not None) for b in batches]
        if jax.process_count() > 1:
            batches = [place_host_leaves(b, batch_shardings(b, self.mesh, self.rules)) for b in batches]
        with jax.set_mesh(self.mesh):
            totals = put_on_mesh((np.zeros((), np.float32), np.zeros((), np.float32)), replicated(self.mesh))
            for (count, *_), b in zip(pieces, batches):  # the whole step's normalisers first
                totals = count(b, totals)
            _, init_acc, _, apply = pieces[0]
            acc = init_acc(params, batches[0])
            for (_, _, accumulate, _), b in zip(pieces, batches):
                acc = accumulate(params, acc, b, ref_params, totals)
            return apply(params, opt_state, acc, totals)

    @property
    def num_compiled(self) -> int:
        """Compiled executables so far over all batch layouts (a static-shape run has exactly 1; a run of
        micro-batch lists 4, whatever their number)."""
        fns = [*self._compiled.values(), *(f for pieces in self._pieces.values() for f in pieces)]
        return sum(fn._cache_size() for fn in fns)

    def __call__(self, params, opt_state, batch, ref_params=None):
        if isinstance(batch, (list, tuple)):
            return self._accumulated(params, opt_state, batch, ref_params)
        batch = dict(batch)
        fn = self.jitted(batch, ref_params is not None)
        if jax.process_count() > 1:  # host arrays = the global batch, identical on every process
            batch = place_host_leaves(batch, batch_shardings(batch, self.mesh, self.rules))
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
    positions, segment_ids[, prefix_segment_ids, prev_index][, loss_index])` is the un-jitted per-token
    log-prob function (`rl.step.token_logprobs`); the optional arrays are passed (by name) when the batch has them. The params
    use the policy's shardings; a batch in micro-batch layout [M, R/M, L] gives [M, R/M, L] results (the
    reshape is inside the jit: an eager reshape of the global batch loses its row sharding, and on several
    processes would mix their rows). `fn.num_compiled` counts compilations."""
    import flax.linen as nn
    rules = model_rules(model_cfg, mesh, DEFAULT_RULES if rules is None else rules)
    p_shard = param_shardings(model_cfg, mesh, rules)
    compiled: dict[tuple, Callable] = {}

    def traced(keys, params, *arrays):
        lead = arrays[0].shape[:-2]  # [M, R/M, L] micro-batches: flattened inside the jit (row order kept)
        arrays = [a.reshape((-1,) + a.shape[len(lead) + 1:]) for a in arrays]
        with nn.logical_axis_rules(rules):
            logp, entropy = logprob(model_cfg, params, **dict(zip(keys, arrays)))
        return logp.reshape(lead + (-1,) + logp.shape[1:]), entropy.reshape(lead + (-1,) + entropy.shape[1:])

    def fn(params, batch):
        keys = ["tokens", "positions", "segment_ids"]
        if "prefix_segment_ids" in batch or "prev_index" in batch:
            keys += ["prefix_segment_ids", "prev_index"]
        keys += ["loss_index"] if "loss_index" in batch else []
        arrays = {k: batch[k] for k in keys}
        signature = _batch_signature(arrays)
        if signature not in compiled:
            b = batch_shardings(arrays, mesh, rules)
            out = b["tokens"]
            compiled[signature] = jax.jit(functools.partial(traced, tuple(keys)),
                                          in_shardings=(p_shard,) + tuple(b[k] for k in keys),
                                          out_shardings=(out, out))
        if jax.process_count() > 1:
            arrays = place_host_leaves(arrays, batch_shardings(arrays, mesh, rules))
        with jax.set_mesh(mesh):
            return compiled[signature](params, *(arrays[k] for k in keys))

    fn.num_compiled = lambda: sum(f._cache_size() for f in compiled.values())
    return fn
