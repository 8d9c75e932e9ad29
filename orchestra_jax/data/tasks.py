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
from typing import Any, Iterable, Mapping, Sequence

import grain
from etils import epath

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
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{path.name}.tmp{os.getpid()}"
    n = 0
    with tmp.open("w") as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
    tmp.replace(path)
    return n


def as_path(path: str | os.PathLike) -> epath.Path:
    """Local paths and remote URLs (``gs://bucket/...``) alike, through etils.epath."""
    return epath.Path(os.fspath(path))


class RecordFileError(ValueError):
    """A task / trajectory file that cannot be read: names the file and the line."""


# The SFT teacher-trajectory records (train.teacher_trajectories writes them): field -> JSON type.
TRAJECTORY_FIELDS = {"prompt": dict, "actions": list, "observations": list}

_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_TYPE_NAMES.get(x, x.__name__) for x in t)
    return _TYPE_NAMES.get(t, t.__name__)


def _json_type(value) -> str:
    return "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)


def check_fields(rec: dict, fields: Mapping[str, type | tuple], where: str) -> None:
    """Raises RecordFileError naming ``where`` if a field of ``fields`` is missing or of another JSON type
    (a bool is not an integer, an integer is a number)."""
    for name, expected in fields.items():
        if name not in rec:
            raise RecordFileError(f"{where}: missing field {name!r} (expected {_type_name(expected)})")
        value = rec[name]
        types = expected if isinstance(expected, tuple) else (expected,)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            continue
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            raise RecordFileError(f"{where}: field {name!r} is {_json_type(value)}, expected {_type_name(expected)}")


def parse_jsonl(text: str, source: str, fields: Mapping[str, type | tuple] | None = None) -> list[dict[str, Any]]:
    """The records of JSONL ``text`` (see ``read_jsonl``); ``source`` names it in errors."""
    out = []
    lines = text.split("\n")
    complete = text.endswith("\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            last = lineno == len(lines) and not complete
            why = "truncated (the last line has no newline: the file was cut while being written)" if last \
                else f"not valid JSON ({getattr(e, 'msg', type(e).__name__)})"
            raise RecordFileError(f"{where}: {why}") from None
        if not isinstance(rec, dict):
            raise RecordFileError(f"{where}: expected a JSON object, got {_json_type(rec)}")
        version = rec.pop(SCHEMA_KEY, SCHEMA_VERSION)
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise RecordFileError(f"{where}: schema version {version!r}, this code reads {SCHEMA_VERSION}")
        if fields:
            check_fields(rec, fields, where)
        out.append(rec)
    if not out:
        raise RecordFileError(f"{source}: no records (the file is empty)")
    return out


def read_jsonl(path: str, fields: Mapping[str, type | tuple] | None = None) -> list[dict[str, Any]]:
    """Reads a JSONL file written by ``write_jsonl``.

    Every problem raises one RecordFileError naming the file and line, before anything is returned: invalid
    JSON, a truncated last line, a line that is not an object, another schema version, and (with
    ``fields``: name -> type) a missing field or one of the wrong JSON type. Reading changes nothing.
    """
    if not as_path(path).exists():
        raise RecordFileError(f"task file not found: {path}")
    return parse_jsonl(decode_text(as_path(path).read_bytes(), path), path, fields)


def decode_text(raw: bytes, source: str) -> str:
    """UTF-8 text of a record file; bad bytes raise RecordFileError naming the line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = 1 + raw[: e.start].count(b"\n")
        raise RecordFileError(f"{source}:{line}: not UTF-8 text ({e.reason})") from None


def read_trajectories(path: str) -> list[dict[str, Any]]:
    """SFT teacher trajectories: ``read_jsonl`` with TRAJECTORY_FIELDS, ``prompt.messages`` an array and the
    actions and observations arrays of strings."""
    records = read_jsonl(path, TRAJECTORY_FIELDS)
    numbers = [i for i, ln in enumerate(as_path(path).read_text().split("\n"), 1) if ln.strip()]
    for lineno, rec in zip(numbers, records):
        where = f"{path}:{lineno}"
        check_fields(rec["prompt"], {"messages": list}, f"{where}: prompt")
        for name in ("actions", "observations"):
            bad = [i for i, x in enumerate(rec[name]) if not isinstance(x, str)]
            if bad:
                raise RecordFileError(f"{where}: {name}[{bad[0]}] is {_json_type(rec[name][bad[0]])}, expected string")
    return records


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
