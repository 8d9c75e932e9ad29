"""Grain pipelines over task JSONL files: seeded shuffle, endless repeat, batches of tasks per step.

A task file holds one JSON object per line (``Task.to_dict()`` of the env). The training loop draws one
batch of ``tasks_per_step`` records per GRPO step from an iterator whose state (``get_state()``, a small
JSON-able dict) goes into every checkpoint, so a resumed run sees exactly the batches an uninterrupted run
would have seen. Grain runs in-process (``worker_count=0``): grain 0.2.18's multiprocessing needs absl
flags parsed and buys nothing for a few hundred small records.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import grain

SCHEMA_KEY = "_schema"
SCHEMA_VERSION = 1


def write_jsonl(path: str, records: Iterable[dict[str, Any]]) -> int:
    """Writes ``records`` to ``path`` atomically (tmp file + rename), one JSON object per line.

    Returns the number of records written. Every line carries ``{"_schema": 1}`` so a reader can reject a
    file written by an incompatible version.
    """
    def lines():
        for n, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise ValueError(f"write_jsonl: record {n} is a {type(rec).__name__}, expected dict")
            yield json.dumps({SCHEMA_KEY: SCHEMA_VERSION, **rec}, sort_keys=True)

    return write_lines_atomically(path, lines())


def write_lines_atomically(path: str, lines: Iterable[str]) -> int:
    """Writes ``lines`` (one per line) to a temp file and renames it over ``path``, so a crash never
    leaves a half-written file; returns the number of lines. Shared by every JSONL writer."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Reads a JSONL file written by ``write_jsonl``; a bad line raises ValueError naming file and line."""
    if not os.path.exists(path):
        raise ValueError(f"task file not found: {path}")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            version = rec.pop(SCHEMA_KEY, SCHEMA_VERSION)
            if version != SCHEMA_VERSION:
                raise ValueError(f"{path}:{lineno}: schema version {version}, this code reads {SCHEMA_VERSION}")
            out.append(rec)
    if not out:
        raise ValueError(f"task file is empty: {path}")
    return out


def task_dataset(
    records: Sequence[dict[str, Any]],
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    repeat: bool = True,
) -> grain.MapDataset:
    """A grain MapDataset of batches (python lists) of ``batch_size`` task records.

    Shuffled with ``seed`` and reshuffled every epoch (grain reseeds each repeat); repeats forever when
    ``repeat``. ``shard_index/shard_count`` take every shard_count-th record (one shard per host) before
    shuffling, so hosts see disjoint tasks.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    ds = grain.MapDataset.source(list(records))
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError("task_dataset: no records in this shard")
    ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat(None)
    return ds.batch(batch_size, drop_remainder=not repeat, batch_fn=list)


def task_iterator(
    path_or_records: str | Sequence[dict[str, Any]],
    batch_size: int,
    seed: int,
    state: dict[str, Any] | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
):
    """An endless grain iterator over batches of task records, optionally resumed from ``state``.

    ``it.get_state()`` returns a JSON-able dict; ``task_iterator(..., state=that)`` continues exactly
    where ``it`` was.
    """
    records = read_jsonl(path_or_records) if isinstance(path_or_records, str) else path_or_records
    it = iter(task_dataset(records, batch_size, seed, shard_index, shard_count, repeat=True))
    if state is not None:
        it.set_state(state)
    return it
