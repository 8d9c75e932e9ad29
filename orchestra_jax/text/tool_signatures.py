"""Tools as one-line signatures instead of JSON schemas: the shortest tools section a small policy reads.

A function-calling prompt lists 17-21 tools; as JSON schemas that is ~6,900 characters, most of it the
schema's own keys ("type", "properties", "description", "required") repeated for every argument. A
signature keeps what the policy needs to write a call (name, arguments, their types or allowed values,
which are optional, what the tool does and the argument hints):

    get_member(member_id: str) Member profile and club credit. member_id: Member id, e.g. ME00012.
    find_team(team: Lions|Eagles|Sharks) A team by its name.
    search(query: str, limit?: int) ...

Calls are still written as JSON inside <tool_call> tags, exactly as with the schema listing.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

_TYPE_NAMES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "object": "dict",
               "null": "null"}


def type_text(spec: Mapping[str, Any]) -> str:
    """An argument's type as short text: enum values joined by '|', else the JSON type's Python-style name."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"argument schema must be a dict, got {type(spec).__name__}")
    if "enum" in spec:
        values = spec["enum"]
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"argument enum must be a non-empty list, got {values!r}")
        return "|".join(str(v) for v in values)
    kind = spec.get("type", "any")
    if isinstance(kind, (list, tuple)):  # ["string", "null"]
        return "|".join(_TYPE_NAMES.get(str(k), str(k)) for k in kind)
    if kind == "array":
        return f"list[{type_text(spec.get('items', {}))}]"
    return _TYPE_NAMES.get(str(kind), str(kind))


def _arg_hint(arg: str, spec: Mapping[str, Any]) -> str | None:
    """``"arg: hint"`` from the argument's description, or None when there is none or it only repeats the
    argument's name ("Team team.", "Date."): such a hint adds tokens and nothing else."""
    hint = str(spec.get("description", "")).strip()
    words = {w.strip(".,:;").lower() for w in hint.split()}
    if not hint or words <= set(arg.lower().replace("_", " ").split()) | {""}:
        return None
    return f"{arg}: {hint}"


def _signature(function: Mapping[str, Any], known_hints: frozenset) -> tuple[str, list[str]]:
    """(the signature line, every hint of the function's arguments, given or left out)."""
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"tool schema has no name: keys {sorted(function)}")
    params = function.get("parameters") or {}
    props = params.get("properties") or {}
    if not isinstance(props, Mapping):
        raise ValueError(f"tool {name!r}: parameters.properties must be a dict")
    required = set(params.get("required") or ())
    args = [f"{arg}{'' if arg in required else '?'}: {type_text(spec)}" for arg, spec in props.items()]
    hints = [h for h in (_arg_hint(arg, spec) for arg, spec in props.items()) if h is not None]
    description = str(function.get("description", "")).strip()
    line = " ".join(x for x in (f"{name}({', '.join(args)})", description,
                                *(h for h in hints if h not in known_hints)) if x)
    return line, hints


def tool_signature(function: Mapping[str, Any], known_hints: frozenset = frozenset()) -> str:
    """``name(arg: type, opt?: type) Description. arg: hint.`` for one function schema
    (``{"name", "description", "parameters"}``); an ``arg: hint`` in ``known_hints`` is left out."""
    return _signature(function, known_hints)[0]


def tool_signatures(functions: Sequence[Mapping[str, Any]]) -> list[str]:
    """One signature per function; an argument hint is given once, at the first tool that has it (an id
    format such as "member_id: Member id, e.g. ME00012." would otherwise repeat in half the lines)."""
    out, known = [], set()
    for function in functions:
        line, hints = _signature(function, frozenset(known))
        out.append(line)
        known.update(hints)
    return out
