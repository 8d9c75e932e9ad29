"""Orbax checkpoints of a training run: one pytree of arrays plus the data iterator's JSON state.

Layout: ``<directory>/<step>/{state,data}``. ``state`` is a pytree (params, optimizer state, rng key, step,
reward-normaliser state ...) saved with ``StandardSave``; ``data`` holds every process's grain iterator
state (JSON, ``{"per_process": [state_0, state_1, ...]}``, gathered at save time), so each host resumes
its own data position. Saves are asynchronous (the loop goes on while the files are written); ``keep``
bounds the number of steps kept on disk. ``directory`` may be ``gs://...`` (etils.epath, as orbax).

Preemption: periodic saves go through orbax's save decision (``should_save``: every ``save_every`` steps,
or when the multi-host preemption sync point is reached, ``reached_preemption``); only the last step and an
explicit stop request force a save. Crash safety: orbax writes each step into a temporary directory and
renames it when complete, so a step killed mid-save is never listed (leftovers are removed on the next
start). A listed step whose files are corrupt (e.g. truncated) is moved aside to ``<step>.corrupt`` with a
warning naming it, and the previous step is restored instead.

Restore always goes through an abstract target (shapes, dtypes, shardings of the live state): without
one orbax turns optax's namedtuples into lists. Before restoring, the checkpoint's own metadata is
compared with the target, so a checkpoint from another model size fails with one line naming the tree
path and both shapes instead of an orbax traceback.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from orchestra_jax.run_dir import as_path


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    """``{"params/layers_0/w": shape, ...}`` for every array leaf; namedtuple fields, dict keys and list
    indices all become path parts, so a live optax state and orbax's metadata for it compare equal."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for path, leaf in leaves:
        shape = getattr(leaf, "shape", None)
        if shape is None:
            shape = np.shape(leaf)
        out["/".join(_key_name(k) for k in path)] = tuple(int(d) for d in shape)
    return out


def describe_mismatch(saved: dict[str, tuple], expected: dict[str, tuple]) -> str | None:
    """One line naming what differs between two ``flat_shapes`` maps, or None if they agree."""
    problems = []
    params_first = lambda p: (not p.startswith("params"), p)  # the params paths are the informative ones
    for path in sorted(expected, key=params_first):
        if path not in saved:
            problems.append(f"{path} missing from checkpoint (expected shape {expected[path]})")
        elif saved[path] != expected[path]:
            problems.append(f"{path}: checkpoint shape {saved[path]} != expected {expected[path]}")
    for path in sorted(set(saved) - set(expected), key=params_first):
        problems.append(f"{path} in checkpoint (shape {saved[path]}) but not in the model state")
    if not problems:
        return None
    more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def abstract_like(tree):
    """ShapeDtypeStruct pytree with each jax array's own sharding (numpy leaves: the first local
    device), so a restore lands where the live state lives, not replicated over every device."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x if x.sharding is not None else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=default)
        sharding = getattr(x, "sharding", None) if isinstance(x, jax.Array) else None
        return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if sharding is None else x.dtype,
                                    sharding=sharding or default)

    return jax.tree_util.tree_map(one, tree)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model state."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint made from another model / optimizer config (never a reason to fall back)."""


def gather_process_states(data_state: dict | None) -> list[dict]:
    """Every process's JSON-able ``data_state``, in process order, on every process (one allgather of the
    UTF-8 bytes; a plain list on one process)."""
    if jax.process_count() == 1:
        return [dict(data_state or {})]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(data_state or {}, sort_keys=True).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(raw)))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: len(raw)] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [json.loads(bytes(rows[i, : lengths[i]]).decode()) for i in range(len(lengths))]


def own_process_state(saved: dict) -> dict:
    """This process's entry of a saved ``data`` item (older checkpoints hold one state for everyone)."""
    if "per_process" not in saved:
        return dict(saved)
    states = saved["per_process"]
    if len(states) != jax.process_count():
        raise CheckpointError(f"checkpoint holds data-iterator states of {len(states)} processes, this job "
                              f"has {jax.process_count()}: resume with the same number of processes")
    return dict(states[jax.process_index()])


def latest_step_in(directory) -> int:
    """The newest complete step under ``directory`` (0 if none), without creating anything; temporary
    directories of unfinished saves and set-aside ``<step>.corrupt`` ones are not steps."""
    path = as_path(directory)
    if not path.exists():
        return 0
    steps = [int(p.name) for p in path.iterdir() if p.name.isdigit()]
    return max(steps) if steps else 0


class Checkpointer:
    """Saves and restores ``(state pytree, data JSON)`` per step under ``directory``, keeping ``keep`` steps.

    ``save_every``: the periodic interval that ``should_save`` and ``save(force=False)`` follow, together
    with the preemption sync point. None: the caller decides, every ``save`` call saves.
    """

    def __init__(self, directory, keep: int = 3, async_save: bool = True, save_every: int | None = None):
        if keep < 1:
            raise ValueError(f"checkpoint keep must be >= 1, got {keep}")
        if save_every is not None and save_every < 1:
            raise ValueError(f"checkpoint save_every must be >= 1, got {save_every}")
        self.save_every = save_every
        self.path = as_path(directory)
        self.directory = str(self.path)
        policies = [ocp.checkpoint_managers.PreemptionCheckpointingPolicy()]
        if save_every:
            policies.append(ocp.checkpoint_managers.FixedIntervalPolicy(int(save_every)))
        self._mngr = ocp.CheckpointManager(
            self.path,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
            ),
        )

    def latest_step(self) -> int | None:
        """The newest complete step on disk, or None."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def step_path(self, step: int) -> str:
        return str(self.path / str(int(step)))

    def saved_keys(self, step: int | None = None) -> set[str]:
        """Top-level keys of the state saved at ``step`` (None = latest), from its metadata."""
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        try:
            meta = self._mngr.item_metadata(step)["state"]
            tree = getattr(meta, "tree", meta)
            return set(tree.keys())
        except Exception as e:
            raise CheckpointError(f"checkpoint {self.step_path(step)} is unreadable: {type(e).__name__}: {e}") from e

    def should_save(self, step: int) -> bool:
        """orbax's decision: a periodic step, or the preemption sync point (all hosts agree)."""
        return self._mngr.should_save(int(step))

    def reached_preemption(self, step: int) -> bool:
        """True on every host once the multi-host preemption sync point is reached (False on one process)."""
        return self._mngr.reached_preemption(int(step))

    def save(self, step: int, state: Any, data_state: dict | None = None, force: bool = False) -> bool:
        """Starts an (async) save of ``state`` and every process's ``data_state`` at ``step``.

        With ``save_every`` set and no ``force``, orbax saves only when ``should_save(step)``; returns whether
        a save started. Call it on every process (the data states are gathered collectively).
        """
        per_process = gather_process_states(data_state)
        if self.latest_step() is not None and self.latest_step() >= int(step):
            return False  # already on disk (e.g. a periodic save at the step a stop was requested)
        return self._mngr.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"per_process": per_process})
            ),
            force=force or self.save_every is None,
        )

    def _restore_step(self, step: int, target: Any) -> tuple[Any, dict]:
        where = self.step_path(step)
        try:
            meta = self._mngr.item_metadata(step)["state"]
            meta_tree = getattr(meta, "tree", meta)
        except Exception as e:  # orbax raises many types for missing/corrupt metadata
            raise CheckpointError(f"checkpoint {where} is unreadable: {type(e).__name__}: {e}") from e
        if meta_tree is None:
            raise CheckpointError(f"checkpoint {where} is unreadable: no state metadata")
        mismatch = describe_mismatch(flat_shapes(meta_tree), flat_shapes(target))
        if mismatch:
            raise CheckpointMismatchError(
                f"checkpoint {where} was made with another model/optimizer config: {mismatch}")
        abstract = abstract_like(target)
        try:
            out = self._mngr.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()),
            )
        except Exception as e:
            raise CheckpointError(f"checkpoint {where} is corrupt: {type(e).__name__}: {e}") from e
        return out["state"], own_process_state(dict(out["data"] or {}))

    def _set_aside(self, step: int) -> None:
        """Moves a corrupt step out of orbax's listing (kept for inspection) so the step can be saved again."""
        if jax.process_index() == 0:
            src = self.path / str(int(step))
            dst = self.path / f"{int(step)}.corrupt"
            if dst.exists():
                dst.rmtree()
            src.rename(dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"orchestra_jax_set_aside_{step}")
        self._mngr.reload()

    def restore(self, step: int | None, target: Any) -> tuple[Any, dict]:
        """Restores ``(state, data_state)`` at ``step`` onto the structure of ``target``.

        ``target`` is the live state or its ``abstract_like``. ``step=None``: the latest step; if its files
        are corrupt, it is set aside with a warning naming it and the previous step is tried, and so on.
        Raises CheckpointMismatchError naming tree paths and shapes for a checkpoint of another config, and
        CheckpointError naming the step and cause when nothing readable is left.
        """
        if step is not None:
            return self._restore_step(int(step), target)
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        failures = []
        for s in reversed(steps):
            try:
                return self._restore_step(s, target)
            except CheckpointMismatchError:
                raise
            except CheckpointError as e:
                failures.append(str(e))
                warnings.warn(f"{e}; moved it to {self.step_path(s)}.corrupt and falling back to the previous "
                              f"checkpoint", RuntimeWarning, stacklevel=2)
                print(f"WARNING: checkpoint {self.step_path(s)} is corrupt; falling back to the previous one",
                      flush=True)
                self._set_aside(s)
        raise CheckpointError(f"no readable checkpoint in {self.directory}: " + " | ".join(failures))

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
