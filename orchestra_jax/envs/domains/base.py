"""Building blocks of a function-calling domain: typed parameters, function specs, the database.

A database is `dict[table name, dict[entry id, record]]` whose records are frozen dataclasses, so
records are shared between episodes and a write copies only the table it touches (copy-on-write).
A domain function is pure: `impl(db, **args) -> (output, writes)`; it raises `DomainError` when a
precondition fails and never mutates `db`. `call_function` validates every argument against the
function's schema first and applies the writes only when the whole call succeeded, so a rejected
call never changes the database (calls are transactional).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Callable, Mapping

import numpy as np

Record = Any  # a frozen dataclass instance
Table = dict[str, Record]
DB = dict[str, Table]
Write = tuple[str, str, Record]  # (table, entry id, new record)

_JSON_TYPES = ("string", "integer", "number", "boolean")


class DomainError(Exception):
    """A domain precondition failed (unknown entry, no seats, insufficient funds...)."""


@dataclasses.dataclass(frozen=True)
class Param:
    """One typed argument of a domain function.

    `ref` names the table whose ids the argument must be (checked before the call runs);
    `enum`, `minimum` and `maximum` restrict values; money arguments are `number` in dollars with at
    most two decimals (`money=True`).
    """

    name: str
    type: str
    description: str
    enum: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    ref: str | None = None
    money: bool = False

    def __post_init__(self):
        if self.type not in _JSON_TYPES:
            raise ValueError(f"Param {self.name!r}: type must be one of {_JSON_TYPES}, got {self.type!r}")

    def json_schema(self) -> dict:
        schema: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


@dataclasses.dataclass(frozen=True)
class FunctionSpec:
    """A domain function: name, description, parameters (all required), read or write, implementation."""

    name: str
    description: str
    params: tuple[Param, ...]
    impl: Callable[..., tuple[Any, tuple[Write, ...]]]
    write: bool = False

    def json_schema(self) -> dict:
        """OpenAI / Qwen3-style tool schema shown to the policy."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": {
                    "type": "object",
                    "properties": {p.name: p.json_schema() for p in self.params},
                    "required": [p.name for p in self.params],
                },
            },
        }


def validate_arguments(spec: FunctionSpec, arguments: Any, db: DB) -> dict[str, Any]:
    """Checks `arguments` against `spec` (keys, JSON types, enums, ranges, referenced ids).

    Returns the normalised arguments (money as integer cents under the same name); raises DomainError
    with a message naming the offending argument.
    """
    if not isinstance(arguments, Mapping):
        raise DomainError(f"{spec.name}: arguments must be a JSON object, got {type(arguments).__name__}")
    known = {p.name for p in spec.params}
    unknown = sorted(str(k)[:40] for k in arguments if k not in known)
    if unknown:
        raise DomainError(f"{spec.name}: unknown argument(s) {unknown[:5]}; expected {sorted(known)}")
    out: dict[str, Any] = {}
    for p in spec.params:
        if p.name not in arguments:
            raise DomainError(f"{spec.name}: missing required argument {p.name!r}")
        out[p.name] = _check_value(spec.name, p, arguments[p.name], db)
    return out


def _show(value: Any, limit: int = 60) -> str:
    """Short repr of a (possibly huge, policy-written) value for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_value(fn: str, p: Param, value: Any, db: DB) -> Any:
    where = f"{fn}: argument {p.name!r}"
    if p.type == "string":
        if not isinstance(value, str):
            raise DomainError(f"{where} must be a string, got {type(value).__name__}")
    elif p.type == "boolean":
        if not isinstance(value, bool):
            raise DomainError(f"{where} must be a boolean, got {type(value).__name__}")
    elif p.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise DomainError(f"{where} must be an integer, got {type(value).__name__}")
    else:  # number
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DomainError(f"{where} must be a finite number, got {_show(value)}")
    if p.enum is not None and value not in p.enum:
        raise DomainError(f"{where} must be one of {list(p.enum)}, got {_show(value)}")
    if p.minimum is not None and value < p.minimum:
        raise DomainError(f"{where} must be >= {p.minimum}, got {_show(value)}")
    if p.maximum is not None and value > p.maximum:
        raise DomainError(f"{where} must be <= {p.maximum}, got {_show(value)}")
    if p.ref is not None and value not in db[p.ref]:
        raise DomainError(f"{where}: no {p.ref[:-1] if p.ref.endswith('s') else p.ref} with id {_show(value)}")
    if p.money:
        cents = round(value * 100)
        if abs(cents - value * 100) > 1e-6:
            raise DomainError(f"{where} must have at most two decimals, got {_show(value)}")
        return int(cents)
    return value


def apply_writes(db: DB, writes: tuple[Write, ...]) -> DB:
    """New database with `writes` applied; copies only the tables written (the input is untouched)."""
    if not writes:
        return db
    new = dict(db)
    copied: set[str] = set()
    for table, key, record in writes:
        if table not in copied:
            new[table] = dict(new[table])
            copied.add(table)
        new[table][key] = record
    return new


@dataclasses.dataclass(frozen=True)
class CallResult:
    """Outcome of one domain call: `ok` False means nothing changed and `output` is the error text.

    `stage`: "ok", "unknown" (no such function), "arguments" (schema: keys, types, ranges, unknown ids)
    or "precondition" (a well-formed call the database state refuses, e.g. no seats left).
    """

    ok: bool
    output: str
    db: DB
    touched: tuple[tuple[str, str], ...] = ()
    stage: str = "ok"


def call_function(spec: FunctionSpec, arguments: Any, db: DB) -> CallResult:
    """Validates, runs and (only if every check passed) commits one domain call. Never raises DomainError."""
    try:
        args = validate_arguments(spec, arguments, db)
    except DomainError as e:
        return CallResult(False, f"Error: {e}", db, stage="arguments")
    try:
        output, writes = spec.impl(db, **args)
    except DomainError as e:
        return CallResult(False, f"Error: {e}", db, stage="precondition")
    touched = tuple((t, k) for t, k, _ in writes)
    return CallResult(True, json.dumps(output, sort_keys=True), apply_writes(db, writes), touched)


def record_dict(record: Record) -> dict:
    """A record as a JSON-ready dict; integer-cent fields (`*_cents`) become dollar numbers."""
    out = {}
    for f in dataclasses.fields(record):
        v = getattr(record, f.name)
        if f.name.endswith("_cents"):
            out[f.name[: -len("_cents")]] = money(v)
        else:
            out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def money(cents: int) -> float:
    return round(cents / 100, 2)


def money_text(cents: int) -> str:
    """Canonical money string used in required information, e.g. '123.40'."""
    return f"{cents / 100:.2f}"


def db_digest(db: DB) -> str:
    """Content hash of a database (order-independent over entries): equal databases, equal digests."""
    h = hashlib.sha256()
    for table in sorted(db):
        h.update(table.encode())
        for key in sorted(db[table]):
            h.update(b"\0" + key.encode() + b"\1" + repr(db[table][key]).encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Action:
    """One function call of a gold sequence."""

    name: str
    arguments: dict

    def to_dict(self) -> dict:
        return {"name": self.name, "arguments": dict(self.arguments)}

    @staticmethod
    def from_dict(d: Mapping) -> "Action":
        return Action(str(d["name"]), dict(d["arguments"]))


class Domain:
    """A function-calling domain: name, agent description and functions (built from a spec by the engine)."""

    def __init__(self, name: str, description: str, functions: tuple[FunctionSpec, ...]):
        self.name, self.description, self.functions = name, description, tuple(functions)
        self.by_name = {f.name: f for f in self.functions}
        if len(self.by_name) != len(self.functions):
            raise ValueError(f"domain {self.name}: duplicate function names")

    def call(self, name: str, arguments: Any, db: DB) -> CallResult:
        spec = self.by_name.get(name) if isinstance(name, str) else None
        if spec is None:
            return CallResult(False, f"Error: unknown function {str(name)[:40]!r} in domain {self.name}", db,
                              stage="unknown")
        return call_function(spec, arguments, db)


def get(db: DB, table: str, key: str) -> Record:
    """Entry `key` of `table` or DomainError naming it."""
    try:
        return db[table][key]
    except KeyError:
        raise DomainError(f"no entry {key!r} in {table}") from None


def next_id(db: DB, table: str, prefix: str) -> str:
    """Deterministic id of the next entry (entries are never deleted, so ids never repeat)."""
    return f"{prefix}{len(db[table]) + 1:05d}"


def pick(rng: np.random.Generator, seq):
    """A uniformly drawn element of a non-empty sequence."""
    return seq[int(rng.integers(len(seq)))]


def perturb_arguments(spec: FunctionSpec, arguments: Mapping, db: DB, rng: np.random.Generator) -> dict:
    """A plausible wrong variant of a valid call: one argument changed to another well-typed value.

    Used by the simulated experts (a wrong step) and by tests (mutated gold sequences). Returns a
    copy of `arguments` that differs from it in exactly one argument (when the schema allows one).
    """
    args = dict(arguments)
    params = [p for p in spec.params if p.name in args]
    order = rng.permutation(len(params))
    for k in order:
        p = params[int(k)]
        old = args[p.name]
        if p.enum is not None:
            choices = [v for v in p.enum if v != old]
        elif p.ref is not None:
            keys = list(db[p.ref])
            choices = [keys[int(j)] for j in rng.integers(len(keys), size=4)]
            choices = [c for c in choices if c != old]
        elif p.type == "integer":
            choices = [v for v in (old - 1, old + 1, old + 2)
                       if (p.minimum is None or v >= p.minimum) and (p.maximum is None or v <= p.maximum)]
        elif p.type == "number":
            choices = [v for v in (round(old + 1.0, 2), round(old * 1.5, 2), round(old * 0.5, 2))
                       if v != old and (p.minimum is None or v >= p.minimum)
                       and (p.maximum is None or v <= p.maximum)]
        elif p.type == "string":
            choices = [old + " please"]
        else:
            choices = [not old]
        if choices:
            args[p.name] = choices[int(rng.integers(len(choices)))]
            return args
    return args
