"""Chat protocol: Qwen3 rendering against hand-written strings, tool-call parser robustness and round trips."""
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestra_jax.text.chat import (ToolCall, ToolCallError, format_tool_call, parse_tool_call,
                                     parse_tool_calls, render_prompt, tool_response_turn)

SEARCH = {"name": "search", "description": "Search the documents.",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}
SEARCH_JSON = ('{"type": "function", "function": {"name": "search", "description": "Search the documents.", '
               '"parameters": {"type": "object", "properties": {"query": {"type": "string"}}, '
               '"required": ["query"]}}}')

QWEN_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + SEARCH_JSON + "\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n')


# ----------------------------------------------------------------------------------------------- render

def test_render_system_and_user_without_tools():
    msgs = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi?"}]
    assert render_prompt(msgs) == ("<|im_start|>system\nYou are helpful.<|im_end|>\n"
                                   "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")


def test_render_user_only_no_generation_prompt():
    assert render_prompt([{"role": "user", "content": "x"}], add_generation_prompt=False) == \
        "<|im_start|>user\nx<|im_end|>\n"


def test_render_with_tools_and_system():
    msgs = [{"role": "system", "content": "Be cheap."}, {"role": "user", "content": "Who won?"}]
    expected = ("<|im_start|>system\nBe cheap.\n\n" + QWEN_TOOLS +
                "<|im_start|>user\nWho won?<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(msgs, tools=[SEARCH]) == expected
    # already-wrapped OpenAI-style tool entries render identically
    assert render_prompt(msgs, tools=[{"type": "function", "function": SEARCH}]) == expected


def test_render_with_tools_without_system():
    out = render_prompt([{"role": "user", "content": "Q"}], tools=[SEARCH])
    assert out == "<|im_start|>system\n" + QWEN_TOOLS + "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_render_compact_tools():
    out = render_prompt([{"role": "user", "content": "Q"}], tools=[{"name": "f", "parameters": {}}],
                        tools_format="compact")
    assert out == ('<|im_start|>system\n# Tools\n<tools>\n{"type":"function","function":{"name":"f","parameters":{}}}'
                   '\n</tools>\nCall one tool as <tool_call>\n{"name": <name>, "arguments": {...}}\n</tool_call>'
                   '<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n')
    assert len(out) < len(render_prompt([{"role": "user", "content": "Q"}], tools=[{"name": "f", "parameters": {}}]))


def test_render_multi_turn_tool_calls_and_responses():
    msgs = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "search", "arguments": {"query": "a"}}]},
        {"role": "tool", "content": "R1"},
        {"role": "tool", "content": "R2"},
        {"role": "assistant", "content": "ok",
         "tool_calls": [{"function": {"name": "answer", "arguments": '{"text": "b"}'}}]},
    ]
    assert render_prompt(msgs, add_generation_prompt=False) == (
        "<|im_start|>user\nQ<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "search", "arguments": {"query": "a"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nR1\n</tool_response>\n<tool_response>\nR2\n</tool_response><|im_end|>\n"
        # last message, after the last user query: Qwen3 writes an (empty) think block
        '<|im_start|>assistant\n<think>\n\n</think>\n\nok\n<tool_call>\n{"name": "answer", "arguments": {"text": "b"}}'
        "\n</tool_call><|im_end|>\n")


def test_render_drops_reasoning_before_last_query_and_thinking_off():
    msgs = [{"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA1"},
            {"role": "user", "content": "Q2"}]
    assert render_prompt(msgs, enable_thinking=False) == (
        "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_tool_response_turn_matches_rendered_conversation():
    base = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    call = {"name": "search", "arguments": {"query": "x y"}}
    full = render_prompt(base + [{"role": "assistant", "content": "", "tool_calls": [call]},
                                 {"role": "tool", "content": "doc 1\ndoc 2"}], tools=[SEARCH])
    incremental = (render_prompt(base, tools=[SEARCH]) + format_tool_call(**call) + "<|im_end|>"
                   + tool_response_turn("doc 1\ndoc 2"))
    assert full == incremental
    assert tool_response_turn("R") == \
        "\n<|im_start|>user\n<tool_response>\nR\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("messages, match", [
    ("hello", "list of dicts"),
    ([{"role": "bot", "content": "x"}], r"messages\[0\] has role 'bot'"),
    ([{"role": "user", "content": 3}], r"messages\[0\]\['content'\] must be a string"),
    (["x"], r"messages\[0\] must be a dict"),
])
def test_render_bad_messages(messages, match):
    with pytest.raises(ValueError, match=match):
        render_prompt(messages)


# ----------------------------------------------------------------------------------------------- format / parse

def test_format_tool_call_exact_text():
    assert format_tool_call("search", {"query": "héllo", "k": [1, 2.5, None, True]}) == (
        '<tool_call>\n{"name": "search", "arguments": {"query": "héllo", "k": [1, 2.5, null, true]}}\n</tool_call>')
    with pytest.raises(ValueError, match="non-empty string"):
        format_tool_call("", {})
    with pytest.raises(ValueError, match="must be a dict"):
        format_tool_call("f", [1])
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        format_tool_call("f", {"x": float("nan")})


VALID = format_tool_call("search", {"query": "capital of France", "top_k": 3})


@pytest.mark.parametrize("text, code", [
    ("", "no_call"),
    ("The answer is 4.", "no_call"),
    ('{"name": "search", "arguments": {}}', "no_call"),
    ("</tool_call>", "no_call"),
    ("</tool_call><tool_call>", "unclosed"),
    (VALID[:-1], "unclosed"),
    ("<tool_call>\n" + '{"name": "a"}' + "\n", "unclosed"),
    ("<tool_call><tool_call>{}</tool_call>", "unclosed"),
    ("<tool_call>\n\n</tool_call>", "invalid_json"),
    ('<tool_call>{"name": "a", "arguments": {}</tool_call>', "invalid_json"),
    ("<tool_call>{'name': 'a', 'arguments': {}}</tool_call>", "invalid_json"),
    ('<tool_call>{"name": "a", "arguments": {"x": NaN}}</tool_call>', "invalid_json"),
    ('<tool_call>{"name": "a", "arguments": {"x": -Infinity}}</tool_call>', "invalid_json"),
    ('<tool_call>{"name": "a", "arguments": {"x": 1E310}}</tool_call>', "invalid_json"),
    ('<tool_call>{"name": "a", "arguments": {"x": ' + "9" * 5000 + "}}</tool_call>", "invalid_json"),
    ("<tool_call>" + "[" * 100_000 + "]" * 100_000 + "</tool_call>", "invalid_json"),
    ('<tool_call>["a", {}]</tool_call>', "bad_structure"),
    ('<tool_call>{"name": "a", "arguments": {}, "id": 1}</tool_call>', "bad_structure"),
    ('<tool_call>{"arguments": {}}</tool_call>', "bad_name"),
    ('<tool_call>{"name": 3, "arguments": {}}</tool_call>', "bad_name"),
    ('<tool_call>{"name": "  ", "arguments": {}}</tool_call>', "bad_name"),
    ('<tool_call>{"name": "a", "arguments": [1]}</tool_call>', "bad_arguments"),
    ('<tool_call>{"name": "a", "arguments": "{}"}</tool_call>', "bad_arguments"),
    (VALID + " and then some", "trailing_text"),
    (VALID + "<|im_end|>junk", "trailing_text"),
    (VALID + "x" + VALID, "trailing_text"),
    (VALID + "\n" + VALID, "multiple"),
    ("<tool_call>" + "x" * 300_000 + "</tool_call>", "too_long"),
    (None, "not_text"),
    (b"<tool_call></tool_call>", "not_text"),
    (["x"], "not_text"),
])
def test_parse_errors(text, code):
    out = parse_tool_call(text)
    assert isinstance(out, ToolCallError), out
    assert out.code == code, out
    assert isinstance(out.message, str) and len(out.message) > 5 and not out.ok


@pytest.mark.parametrize("text", [
    VALID,
    VALID + "<|im_end|>",
    VALID + "\n<|im_end|>\n<|endoftext|>",
    "<think>\nThe search tool is cheapest.\n</think>\n\n" + VALID,
    '<tool_call>{"name":"search","arguments":{"query":"capital of France","top_k":3}}</tool_call>',
])
def test_parse_valid(text):
    out = parse_tool_call(text)
    assert out == ToolCall("search", {"query": "capital of France", "top_k": 3}) and out.ok


def test_parse_missing_arguments_is_empty_dict_and_multiple_calls():
    assert parse_tool_call('<tool_call>{"name": "f"}</tool_call>') == ToolCall("f", {})
    two = format_tool_call("a", {"x": 1}) + "\n" + format_tool_call("b", {})
    assert parse_tool_calls(two) == [ToolCall("a", {"x": 1}), ToolCall("b", {})]
    assert parse_tool_calls("nothing").code == "no_call"


# JSON values for arguments (finite floats: NaN is not JSON).
json_leaf = st.none() | st.booleans() | st.integers(-10**12, 10**12) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                        max_size=4), max_leaves=12)
tool_name = st.text(min_size=1, max_size=20).filter(lambda s: s.strip())
arguments = st.dictionaries(st.text(max_size=10), json_value, max_size=5)


@settings(max_examples=200, deadline=None)
@given(tool_name, arguments, st.sampled_from(["", "<|im_end|>", "\n<|im_end|>\n"]),
       st.sampled_from(["", "<think>\nx\n</think>\n\n", "Let me search.\n"]))
def test_format_parse_round_trip(name, args, suffix, prefix):
    out = parse_tool_call(prefix + format_tool_call(name, args) + suffix)
    assert out == ToolCall(name, args)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["<tool_call>", "</tool_call>", "<|im_end|>", "<tool_response>", "<think>"]),
       st.text(max_size=5), st.text(max_size=5))
def test_round_trip_with_protocol_markers_inside_strings(marker, a, b):
    name, args = a + marker + b + "x", {a + marker: [marker + b]}
    assert parse_tool_call(format_tool_call(name, args)) == ToolCall(name, args)


# ----------------------------------------------------------------------------------------------- fuzzing



def _base_calls(n=64, seed=0):
    """Fixed valid calls to mutate (drawing fresh nested arguments per example is ~10x slower)."""
    rng = random.Random(seed)
    words = ["search", "q", "é", "你好", "<tool_call>", " ", "\n", '"', "\\", "</tool_call>", "0", "{}"]

    def value(depth):
        r = rng.random()
        if depth > 2 or r < 0.4:
            return rng.choice([None, True, 1, -2.5, 10**20, "".join(rng.choices(words, k=3))])
        if r < 0.7:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(words): value(depth + 1) for _ in range(rng.randint(0, 3))}

    return [format_tool_call(rng.choice(["search", "answer", "enhance_reasoning", "f-1", "ünï"]),
                             {rng.choice(words): value(0) for _ in range(rng.randint(0, 4))}) for _ in range(n)]


BASE_CALLS = _base_calls()


_JUNK = ["<tool_call>", "</tool_call>", "<|im_end|>", '"', "'", "{", "}", "[", "]", ":", ",", "\\", "\n", "null",
         "1e999", "NaN", '"name"', '"arguments"', "é", "\x00", "<", ">", "/"]


def mutate(text: str, seed: int) -> str:
    """Break a valid call (or two) with 1-3 truncations, junk insertions, deletions or quote damage.
    Mutations come from one drawn seed: per-mutation hypothesis draws made 10,000 examples ~3x slower."""
    rng = random.Random(seed)
    if rng.random() < 0.3:
        text = text + rng.choice(["", "\n", "<|im_end|>"]) + text
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["truncate", "insert", "delete", "quote", "brace"])
        i = rng.randint(0, len(text))
        if kind == "truncate":
            text = text[:i]
        elif kind == "insert":
            text = text[:i] + "".join(rng.choices(_JUNK, k=rng.randint(1, 3))) + text[i:]
        elif kind == "delete":
            text = text[:i] + text[i + rng.randint(1, 5):]
        elif kind == "quote":
            text = text.replace('"', rng.choice(["'", "", '""', '\\"']), rng.randint(1, 3))
        else:
            text = text.replace(rng.choice(["{", "}", "[", "]", ":"]), "", 1)
    return text


malformed = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(_JUNK), max_size=24).map("".join),
    st.builds(mutate, st.sampled_from(BASE_CALLS), st.integers(0, 2**32)),
    st.builds(lambda s: "<tool_call>" + s + "</tool_call>", st.text(max_size=100)),
    st.builds(lambda d: "<tool_call>" + "[" * d + "</tool_call>", st.integers(0, 5000)),
)


def _check_result(text, out):
    assert isinstance(out, (ToolCall, ToolCallError))
    if isinstance(out, ToolCallError):
        assert isinstance(out.message, str) and out.message
    else:  # anything accepted is a well-formed call that survives a re-format round trip
        assert isinstance(out.name, str) and out.name.strip() and isinstance(out.arguments, dict)
        assert parse_tool_call(format_tool_call(out.name, out.arguments)) == out


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(malformed)
def test_parser_never_raises_on_malformed_text(text):
    _check_result(text, parse_tool_call(text))
    calls = parse_tool_calls(text)
    assert isinstance(calls, (list, ToolCallError))


@settings(max_examples=150, deadline=None)
@given(tool_name, arguments, st.data())
def test_truncated_valid_call_is_an_error(name, args, data):
    text = format_tool_call(name, args)
    cut = data.draw(st.integers(0, len(text) - 1))
    out = parse_tool_call(text[:cut])
    assert isinstance(out, ToolCallError), (text[:cut], out)


def test_parser_survives_non_json_serialisable_oddities():
    # lone surrogates, NUL bytes and huge nesting inside arguments
    for text in ['<tool_call>{"name": "a", "arguments": {"x": "\\ud800"}}</tool_call>',
                 '<tool_call>{"name": "a\\u0000", "arguments": {}}</tool_call>',
                 '<tool_call>{"name": "a", "arguments": ' + '{"a": ' * 3000 + "1" + "}" * 3000 + "}</tool_call>"]:
        out = parse_tool_call(text)
        assert isinstance(out, (ToolCall, ToolCallError))
    assert parse_tool_call('<tool_call>{"name": "a\\u0000", "arguments": {}}</tool_call>') == ToolCall("a\x00", {})
    assert json.dumps(ToolCallError("m").message) == '"m"'


def test_fuzz_inputs_reach_every_parser_branch():
    """The mutation generator is only useful if it exercises the parser's branches, not just 'no_call'."""
    seen = {}
    for seed in range(2000):
        out = parse_tool_call(mutate(BASE_CALLS[seed % len(BASE_CALLS)], seed))
        key = "ok" if isinstance(out, ToolCall) else out.code
        seen[key] = seen.get(key, 0) + 1
    assert {"ok", "no_call", "unclosed", "multiple", "trailing_text", "invalid_json", "bad_structure"} <= set(seen), seen


def test_parser_is_linear_on_adversarial_long_inputs():
    """Repeated tags and markers must not make parsing quadratic (policy text can be long)."""
    import time
    call = format_tool_call("f", {})
    cases = {"many_calls": call * 50_000, "many_markers": call + "<|im_end|>\n" * 200_000,
             "many_opens": "<tool_call>" * 200_000, "long_junk": "x" * 5_000_000 + call}
    expected = {"many_calls": "multiple", "many_markers": None, "many_opens": "unclosed", "long_junk": None}
    for name, text in cases.items():
        t0 = time.process_time()
        out = parse_tool_call(text)
        # quadratic parsing of these inputs takes minutes; linear takes well under a second (5 s: CI noise)
        assert time.process_time() - t0 < 5.0, name
        assert (out.code if isinstance(out, ToolCallError) else None) == expected[name], (name, out)
