"""Qwen3 chat protocol: prompt rendering, Hermes tool calls and tool responses.

Text layout (same bytes as Qwen3's Hugging Face chat template for the supported subset)::

    <|im_start|>system
    {system}

    # Tools
    ...
    <tools>
    {"type": "function", "function": {...}}
    </tools>
    ...<|im_end|>
    <|im_start|>user
    {question}<|im_end|>
    <|im_start|>assistant
    <think>...</think>

    <tool_call>
    {"name": "search", "arguments": {"query": "..."}}
    </tool_call><|im_end|>
    <|im_start|>user
    <tool_response>
    {observation}
    </tool_response><|im_end|>
    <|im_start|>assistant

An assistant turn is ``[free text, e.g. <think>...</think>] <tool_call>...</tool_call><|im_end|>``.
The sampler stops at ``</tool_call>`` or ``<|im_end|>``; after ``<|im_end|>`` the rollout appends
``tool_response_turn(observation)``, which is exactly what the template renders for a tool message.

The tool-call parser lives in `text.tool_calls` (re-exported here).
"""
from __future__ import annotations

import enum
import json
from typing import Any, Iterable, Mapping, Sequence

from orchestra_jax.text.markers import (END_OF_TEXT, IM_END, IM_START, THINK_CLOSE, THINK_OPEN,  # noqa: F401
                                        TOOL_CALL_CLOSE, TOOL_CALL_OPEN, TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN)
# the chat protocol's parser, re-exported: callers import the protocol from one place
from orchestra_jax.text.tool_calls import (MAX_CALL_CHARS, ToolCall, ToolCallError, parse_tool_call,  # noqa: F401
                                           parse_tool_calls)
from orchestra_jax.text.tool_signatures import tool_signatures

_QWEN_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_QWEN_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
# Compact variant for the tiny CPU policy: same tags, fewer words, JSON without spaces.
_COMPACT_TOOLS_HEADER = "# Tools\n<tools>"
_COMPACT_TOOLS_FOOTER = (
    '\n</tools>\nCall one tool as <tool_call>\n{"name": <name>, "arguments": {...}}\n</tool_call>'
)
# Signatures (text.tool_signatures): one line per tool instead of its JSON schema, same tags and call format.
_SIGNATURES_TOOLS_HEADER = "# Tools\nname(argument: type, optional?: type) what it does. argument: hint\n<tools>"


class ToolsFormat(enum.StrEnum):
    """How the system prompt lists the tools (``render_tools_section``)."""
    qwen = "qwen"              # Qwen's wording, one JSON schema per line
    compact = "compact"        # short wording, JSON without spaces
    signatures = "signatures"  # short wording, one ``name(arg: type) description`` line per tool


TOOLS_FORMATS = tuple(f.value for f in ToolsFormat)

_ROLES = ("system", "user", "assistant", "tool")


_MARKERS = (IM_START, IM_END, END_OF_TEXT, TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN,
            TOOL_RESPONSE_CLOSE, THINK_OPEN, THINK_CLOSE)


def _escape_markers(json_text: str) -> str:
    """Write a protocol marker that occurs inside a JSON string with its '<' as ``\\u003c``: same JSON
    value, but the text can no longer close the call early or tokenise to a special token."""
    for marker in _MARKERS:
        json_text = json_text.replace(marker, "\\u003c" + marker[1:])
    return json_text


def format_tool_call(name: str, arguments: Mapping[str, Any] | None = None) -> str:
    """Hermes tool-call text, as Qwen3's template writes it:
    ``<tool_call>\\n{"name": "...", "arguments": {...}}\\n</tool_call>``.

    Protocol markers inside names or string arguments are JSON-escaped, so ``parse_tool_call`` always
    recovers exactly (name, arguments). Raises ValueError for an empty/non-str name, non-dict or non-JSON-serialisable arguments.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"tool name must be a non-empty string, got {name!r}")
    arguments = {} if arguments is None else arguments
    if not isinstance(arguments, Mapping):
        raise ValueError(f"tool arguments must be a dict, got {type(arguments).__name__}")
    try:
        args_json = json.dumps(dict(arguments), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"tool arguments for {name!r} are not JSON-serialisable: {e}") from e
    body = f'{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {args_json}}}'
    return f"{TOOL_CALL_OPEN}\n{_escape_markers(body)}\n{TOOL_CALL_CLOSE}"


def tool_response_turn(content: str) -> str:
    """Text appended after an assistant turn that ended with ``<|im_end|>``: a user turn holding the tool
    response, then the header of the next assistant turn.
    ``'\\n<|im_start|>user\\n<tool_response>\\n' + content + '\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n'``
    """
    if not isinstance(content, str):
        raise ValueError(f"tool response content must be a string, got {type(content).__name__}")
    return (f"\n{IM_START}user\n{TOOL_RESPONSE_OPEN}\n{content}\n{TOOL_RESPONSE_CLOSE}{IM_END}\n"
            f"{IM_START}assistant\n")


def tool_schema(tool: Mapping[str, Any]) -> dict:
    """OpenAI/Qwen tool entry ``{"type": "function", "function": {...}}``; a bare function schema
    (``{"name", "description", "parameters"}``) is wrapped."""
    if not isinstance(tool, Mapping):
        raise ValueError(f"each tool must be a dict, got {type(tool).__name__}")
    if "type" in tool:
        return dict(tool)
    if "name" not in tool:
        raise ValueError(f"tool schema has neither 'type' nor 'name': keys {sorted(tool)}")
    return {"type": "function", "function": dict(tool)}


def render_tools_section(tools: Iterable[Mapping[str, Any]], *, tools_format: str = "qwen") -> str:
    """The ``# Tools`` block of the system prompt (without the system header).

    tools_format: "qwen" (Qwen's wording, one JSON schema per line), "compact" (short wording, JSON without
    spaces) or "signatures" (short wording, one ``name(arg: type) description`` line per tool)."""
    if tools_format not in TOOLS_FORMATS:
        raise ValueError(f"tools_format must be one of {TOOLS_FORMATS}, got {tools_format!r}")
    schemas = [tool_schema(t) for t in tools]
    if tools_format == "signatures":
        lines = "".join("\n" + line for line in tool_signatures([s.get("function", s) for s in schemas]))
        return _SIGNATURES_TOOLS_HEADER + lines + _COMPACT_TOOLS_FOOTER
    compact = tools_format == "compact"
    header, footer = (_COMPACT_TOOLS_HEADER, _COMPACT_TOOLS_FOOTER) if compact else (
        _QWEN_TOOLS_HEADER, _QWEN_TOOLS_FOOTER)
    separators = (",", ":") if compact else (", ", ": ")
    lines = "".join("\n" + json.dumps(s, ensure_ascii=False, separators=separators) for s in schemas)
    return header + lines + footer


def _content(message: Mapping[str, Any], index: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise ValueError(f"messages[{index}]['content'] must be a string, got {type(content).__name__}")
    return content


def _render_assistant_calls(message: Mapping[str, Any], index: int, content: str) -> str:
    out = []
    for j, call in enumerate(message.get("tool_calls") or ()):
        if isinstance(call, ToolCall):
            name, arguments = call.name, call.arguments
        elif isinstance(call, Mapping):
            fn = call.get("function", call)
            name, arguments = fn.get("name"), fn.get("arguments", {})
            if isinstance(arguments, str):  # already JSON text (OpenAI style)
                try:
                    arguments = json.loads(arguments)
                except ValueError as e:
                    raise ValueError(f"messages[{index}]['tool_calls'][{j}] arguments are not JSON: {e}") from e
        else:
            raise ValueError(f"messages[{index}]['tool_calls'][{j}] must be a dict or ToolCall")
        if (j == 0 and content) or j > 0:
            out.append("\n")
        out.append(format_tool_call(name, arguments))
    return "".join(out)


def _last_query_index(messages: Sequence[Mapping[str, Any]]) -> int:
    """Index of the last user message that is not a wrapped tool response (Qwen3's ``last_query_index``)."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m["role"] == "user":
            c = _content(m, i)
            if not (c.startswith(TOOL_RESPONSE_OPEN) and c.endswith(TOOL_RESPONSE_CLOSE)):
                return i
    return len(messages) - 1


def _split_reasoning(message: Mapping[str, Any], index: int, content: str) -> tuple[str, str]:
    """(content, reasoning) of an assistant message: ``reasoning_content`` if given, else the text of a
    ``<think>...</think>`` prefix, as Qwen3's template splits it."""
    reasoning = message.get("reasoning_content")
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise ValueError(f"messages[{index}]['reasoning_content'] must be a string")
        return content, reasoning
    if THINK_CLOSE in content:
        before, after = content.split(THINK_CLOSE)[0], content.split(THINK_CLOSE)[-1]
        return after.lstrip("\n"), before.rstrip("\n").split(THINK_OPEN)[-1].lstrip("\n")
    return content, ""


def render_prompt(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None, *,
                  tools_format: str = "qwen", add_generation_prompt: bool = True,
                  enable_thinking: bool | None = None) -> str:
    """Render a conversation in Qwen3's chat format.

    messages: dicts with ``role`` (system / user / assistant / tool) and ``content`` (str); an assistant
      message may carry ``tool_calls`` (dicts ``{"name", "arguments"}``, OpenAI ``{"function": {...}}`` or
      ``ToolCall``). Consecutive ``tool`` messages share one user turn, as in Qwen's template.
    tools: JSON schemas listed in the system prompt's ``# Tools`` section (Qwen wording by default;
      ``tools_format="compact"``: a short wording and space-free JSON for tiny CPU models; "signatures": one
      ``name(arg: type) description`` line per tool, the shortest).
    add_generation_prompt: end with ``<|im_start|>assistant\\n``.
    enable_thinking: False appends Qwen3's empty ``<think>\\n\\n</think>\\n\\n`` after the generation prompt.

    Follows Qwen3's template, including its reasoning handling: an assistant message's ``<think>`` block
    (or ``reasoning_content``) is kept only after the last user query and dropped from earlier turns. So
    re-rendering a conversation is not token-identical to what the policy sampled: rollouts append tokens
    instead (``tool_response_turn``) and use ``render_prompt`` only for the first prompt.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}] must be a dict, got {type(m).__name__}")
        if m.get("role") not in _ROLES:
            raise ValueError(f"messages[{i}] has role {m.get('role')!r}; expected one of {_ROLES}")
    out = []
    first_is_system = bool(messages) and messages[0]["role"] == "system"
    if tools:
        out.append(f"{IM_START}system\n")
        if first_is_system:
            out.append(_content(messages[0], 0) + "\n\n")
        out.append(render_tools_section(tools, tools_format=tools_format) + f"{IM_END}\n")
    elif first_is_system:
        out.append(f"{IM_START}system\n{_content(messages[0], 0)}{IM_END}\n")
    last_query = _last_query_index(messages)
    for i, m in enumerate(messages):
        role = m["role"]
        if i == 0 and role == "system":
            continue
        content = _content(m, i)
        if role in ("user", "system"):
            out.append(f"{IM_START}{role}\n{content}{IM_END}\n")
        elif role == "assistant":
            content, reasoning = _split_reasoning(m, i, content)
            # Qwen3 keeps reasoning only for turns after the last real user query.
            if i > last_query and (i == len(messages) - 1 or reasoning):
                out.append(f"{IM_START}assistant\n{THINK_OPEN}\n{reasoning.strip(chr(10))}\n{THINK_CLOSE}\n\n"
                           f"{content.lstrip(chr(10))}")
            else:
                out.append(f"{IM_START}assistant\n{content}")
            out.append(_render_assistant_calls(m, i, content))
            out.append(f"{IM_END}\n")
        else:  # tool
            if i == 0 or messages[i - 1]["role"] != "tool":
                out.append(f"{IM_START}user")
            out.append(f"\n{TOOL_RESPONSE_OPEN}\n{content}\n{TOOL_RESPONSE_CLOSE}")
            if i == len(messages) - 1 or messages[i + 1]["role"] != "tool":
                out.append(f"{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
        if enable_thinking is False:
            out.append(f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n")
    return "".join(out)
