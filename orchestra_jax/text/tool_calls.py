"""Hermes tool calls in an assistant turn: ``<tool_call>{json}</tool_call>`` -> ToolCall | ToolCallError.

Parser policy (``parse_tool_call``), chosen so that every accepted call is unambiguous:

- text before ``<tool_call>`` (reasoning, ``<think>`` blocks) is ignored;
- exactly one ``<tool_call>`` block is accepted; several calls are an error (``parse_tool_calls``
  accepts several);
- after ``</tool_call>`` only whitespace and end markers (``<|im_end|>``, ``<|endoftext|>``) may follow;
- the block holds one JSON object ``{"name": str, "arguments": object}``; ``arguments`` may be omitted
  (then ``{}``); other keys, NaN/Infinity or overflowing numbers, non-object arguments, empty names are
  errors.

The parser never raises: any input (including non-str) yields a ``ToolCall`` or a ``ToolCallError`` whose
message is meant to be shown to the policy as the observation.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from orchestra_jax.text.markers import END_OF_TEXT, IM_END, TOOL_CALL_CLOSE, TOOL_CALL_OPEN

# Longest JSON body the parser will look at; longer bodies are an error, not a slow parse.
MAX_CALL_CHARS = 200_000
_MAX_SHOWN = 80  # characters of offending text quoted back in error messages


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """A well-formed tool call: ``name`` and a JSON-object ``arguments`` dict."""

    name: str
    arguments: dict

    ok = True  # class attribute (not a field): lets callers branch without isinstance


@dataclasses.dataclass(frozen=True)
class ToolCallError:
    """A malformed tool call. ``message`` is human readable (show it to the policy); ``code`` is one of
    not_text, no_call, unclosed, multiple, trailing_text, too_long, invalid_json, bad_structure,
    bad_name, bad_arguments, internal."""

    message: str
    code: str = "invalid"

    ok = False


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999 overflows to inf
        raise ValueError(f"number {_shorten(text)} is out of range")
    return value


def _parse_body(body: str) -> ToolCall | ToolCallError:
    """Parse the JSON between ``<tool_call>`` and ``</tool_call>``."""
    body = body.strip()
    if not body:
        return ToolCallError("empty <tool_call> block: expected a JSON object with 'name' and 'arguments'",
                             "invalid_json")
    if len(body) > MAX_CALL_CHARS:
        return ToolCallError(f"tool call JSON is {len(body)} characters, more than the limit {MAX_CALL_CHARS}",
                             "too_long")
    try:
        obj = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        return ToolCallError("tool call JSON is nested too deeply", "invalid_json")
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, huge integers
        return ToolCallError(f"tool call is not valid JSON ({e}): {_shorten(body)!r}", "invalid_json")
    if not isinstance(obj, dict):
        return ToolCallError(f"tool call must be a JSON object, got {type(obj).__name__}", "bad_structure")
    extra = sorted(set(obj) - {"name", "arguments"})
    if extra:
        return ToolCallError(f"tool call has unexpected keys {extra}; only 'name' and 'arguments' are allowed",
                             "bad_structure")
    if "name" not in obj:
        return ToolCallError("tool call is missing 'name'", "bad_name")
    name = obj["name"]
    if not isinstance(name, str):
        return ToolCallError(f"tool call 'name' must be a string, got {type(name).__name__}", "bad_name")
    if not name.strip():
        return ToolCallError("tool call 'name' is empty", "bad_name")
    arguments = obj.get("arguments", {})
    if not isinstance(arguments, dict):
        return ToolCallError(
            f"tool call 'arguments' must be a JSON object, got {type(arguments).__name__}", "bad_arguments")
    return ToolCall(name=name, arguments=arguments)


def _end_without_markers(text: str, start: int) -> int:
    """End index of ``text[start:]`` once trailing whitespace and end-of-turn markers are dropped
    (index arithmetic, no copies: linear even for adversarial tails)."""
    end = len(text)
    while end > start:
        if text[end - 1].isspace():
            end -= 1
            continue
        for marker in (IM_END, END_OF_TEXT):
            if end - len(marker) >= start and text.endswith(marker, 0, end):
                end -= len(marker)
                break
        else:
            break
    return end


def _split_calls(text: str) -> list[str] | ToolCallError:
    """Bodies of all ``<tool_call>`` blocks; errors for unclosed blocks or stray text. Linear time."""
    pos = text.find(TOOL_CALL_OPEN)
    if pos < 0:
        if TOOL_CALL_CLOSE in text:
            return ToolCallError("found </tool_call> without an opening <tool_call>", "no_call")
        return ToolCallError(
            'no tool call found: write <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>', "no_call")
    if text.find(TOOL_CALL_CLOSE, 0, pos) >= 0:
        return ToolCallError("found </tool_call> before the first <tool_call>", "unclosed")
    bodies = []
    while True:
        start = pos + len(TOOL_CALL_OPEN)
        end = text.find(TOOL_CALL_CLOSE, start)
        if end < 0:
            return ToolCallError("unclosed <tool_call>: missing </tool_call>", "unclosed")
        if text.find(TOOL_CALL_OPEN, start, end) >= 0:
            return ToolCallError("nested <tool_call> inside a tool call", "unclosed")
        bodies.append(text[start:end])
        after = end + len(TOOL_CALL_CLOSE)
        nxt = text.find(TOOL_CALL_OPEN, after)
        if nxt < 0:
            tail = text[after:_end_without_markers(text, after)]
            if tail.strip():
                return ToolCallError(f"unexpected text after </tool_call>: {_shorten(tail.strip())!r}",
                                     "trailing_text")
            return bodies
        between = text[after:nxt]
        if between.strip():
            return ToolCallError(f"unexpected text between tool calls: {_shorten(between.strip())!r}",
                                 "trailing_text")
        pos = nxt


def parse_tool_calls(text: Any) -> list[ToolCall] | ToolCallError:
    """All tool calls in an assistant turn (one or more). Never raises.

    Returns the calls in order, or the first problem as a ``ToolCallError``.
    """
    try:
        if not isinstance(text, str):
            return ToolCallError(f"tool call text must be a string, got {type(text).__name__}", "not_text")
        bodies = _split_calls(text)
        if isinstance(bodies, ToolCallError):
            return bodies
        calls = []
        for body in bodies:
            call = _parse_body(body)
            if isinstance(call, ToolCallError):
                return call
            calls.append(call)
        return calls
    except Exception as e:  # last resort: the contract is "never raises"
        return ToolCallError(f"could not parse tool call ({type(e).__name__})", "internal")


def parse_tool_call(text: Any) -> ToolCall | ToolCallError:
    """The single tool call of an assistant turn, or a ``ToolCallError`` explaining what is wrong.

    Never raises, for any input. Several calls in one turn are an error (one call per turn).
    """
    calls = parse_tool_calls(text)
    if isinstance(calls, ToolCallError):
        return calls
    if len(calls) != 1:
        return ToolCallError(f"expected exactly one tool call per turn, found {len(calls)}", "multiple")
    return calls[0]
