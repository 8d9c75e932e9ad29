"""Orbax checkpoints of a training run: one pytree of arrays plus the data iterator's JSON state.

Layout: ``<directory>/<step>/{state,data}``. ``state`` is a pytree (params, optimizer state, rng key, step,
reward-normaliser state ...) saved with ``StandardSave``; ``data`` is the grain iterator state (JSON).
Saves are asynchronous (the training loop goes on while the files are written); ``keep`` bounds the
number of steps kept on disk.

Restore always goes through an abstract target (shapes, dtypes, shardings of the live state): without
one orbax turns optax's namedtuples into lists. Before restoring, the checkpoint's own metadata is
compared with the target, so a checkpoint from another model size fails with one line naming the tree
path and both shapes instead of an orbax traceback.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


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


class Checkpointer:
    """Saves and restores ``(state pytree, data JSON)`` per step under ``directory``, keeping ``keep`` steps."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"checkpoint keep must be >= 1, got {keep}")
        self.directory = os.path.abspath(directory)
        self._mngr = ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
        )

    def latest_step(self) -> int | None:
        """The newest complete step on disk, or None."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None = None, force: bool = True) -> bool:
        """Starts an (async) save of ``state`` and the iterator's ``data_state`` at ``step``."""
        return self._mngr.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {})
            ),
            force=force,
        )

    def restore(self, step: int | None, target: Any) -> tuple[Any, dict]:
        """Restores ``(state, data_state)`` at ``step`` (None = latest) onto the structure of ``target``.

        ``target`` is the live state or its ``abstract_like``; raises CheckpointError naming the first
        mismatching tree paths and shapes, or the step and cause if the files cannot be read.
        """
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        where = os.path.join(self.directory, str(step))
        try:
            meta = self._mngr.item_metadata(step)["state"]
            meta_tree = getattr(meta, "tree", meta)
        except Exception as e:  # orbax raises many types for missing/corrupt metadata
            raise CheckpointError(f"checkpoint {where} is unreadable: {type(e).__name__}: {e}") from e
        if meta_tree is None:
            raise CheckpointError(f"checkpoint {where} is unreadable: no state metadata")
        mismatch = describe_mismatch(flat_shapes(meta_tree), flat_shapes(target))
        if mismatch:
            raise CheckpointError(f"checkpoint {where} does not match the model state: {mismatch}")
        abstract = abstract_like(target)
        try:
            out = self._mngr.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()),
            )
        except Exception as e:
            raise CheckpointError(f"checkpoint {where} is corrupt: {type(e).__name__}: {e}") from e
        return out["state"], dict(out["data"] or {})

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
