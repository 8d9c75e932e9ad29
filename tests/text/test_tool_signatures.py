"""Tools listed as one-line signatures: exact text on a hand-written schema, and on every function-calling
domain nothing a call needs is lost (each tool, argument, allowed value, optional mark) in under half the
characters of the compact JSON listing."""
import pytest

from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.text.chat import TOOLS_FORMATS, render_prompt, render_tools_section
from orchestra_jax.text.tool_signatures import tool_signature, tool_signatures, type_text

BOOK = {"name": "book", "description": "Book seats.",
        "parameters": {"type": "object", "required": ["train_id", "seats"], "properties": {
            "train_id": {"type": "string", "description": "Train id, e.g. TR00012."},
            "seats": {"type": "integer", "description": "Seats."},
            "fare": {"type": "string", "enum": ["economy", "first"], "description": "Fare class."},
            "notes": {"type": "array", "items": {"type": "string"}}}}}
CANCEL = {"name": "cancel", "description": "Cancel a booking.",
          "parameters": {"type": "object", "required": ["train_id"], "properties": {
              "train_id": {"type": "string", "description": "Train id, e.g. TR00012."}}}}


def test_signature_text():
    # "seats: Seats." only repeats the name: left out; a hint with content is kept; optional args get '?'
    assert tool_signature(BOOK) == ("book(train_id: str, seats: int, fare?: economy|first, notes?: list[str]) "
                                    "Book seats. train_id: Train id, e.g. TR00012. fare: Fare class.")
    assert tool_signature({"name": "policy", "description": "The policy."}) == "policy() The policy."


def test_a_repeated_hint_is_given_once():
    assert tool_signatures([BOOK, CANCEL])[1] == "cancel(train_id: str) Cancel a booking."
    assert tool_signatures([CANCEL, BOOK])[0] == tool_signature(CANCEL)
    assert "train_id: Train id" not in tool_signatures([CANCEL, BOOK])[1]


def test_signatures_section_keeps_the_tags_and_call_format():
    out = render_prompt([{"role": "user", "content": "Q"}], tools=[BOOK], tools_format="signatures")
    assert out == ("<|im_start|>system\n# Tools\nname(argument: type, optional?: type) what it does. argument: hint\n"
                   "<tools>\n" + tool_signature(BOOK) + "\n</tools>\nCall one tool as <tool_call>\n"
                   '{"name": <name>, "arguments": {...}}\n</tool_call><|im_end|>\n'
                   "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="tools_format must be one of .*'json'"):
        render_tools_section([BOOK], tools_format="json")
    with pytest.raises(ValueError, match="tool schema has no name"):
        tool_signature({"description": "x"})
    with pytest.raises(ValueError, match="enum must be a non-empty list"):
        type_text({"enum": []})
    assert type_text({"type": ["string", "null"]}) == "str|null"


@pytest.fixture(scope="module")
def domain_tools():
    """{domain: tool schemas offered in its first episode}, all ten function-calling domains."""
    env = make_env(EnvConfig(setting="functions"))
    tasks = env.sample_tasks(0, 140, "test") + env.sample_tasks(0, 60, "heldout_domains")
    _, prompts = env.reset(tasks, 0)
    out = {}
    for task, prompt in zip(tasks, prompts):
        out.setdefault(task.domain, prompt["tools"])
    assert len(out) == 10, sorted(out)
    return out


def test_every_domain_keeps_what_a_call_needs_in_under_half_the_characters(domain_tools):
    for domain, tools in domain_tools.items():
        section = render_tools_section(tools, tools_format="signatures")
        lines = section.split("<tools>\n")[1].split("\n</tools>")[0].split("\n")
        assert len(lines) == len(tools), domain
        for tool, line in zip(tools, lines):
            fn = tool.get("function", tool)
            params = fn.get("parameters") or {}
            assert line.startswith(fn["name"] + "("), (domain, line)
            head = line[:line.index(")")]
            for arg, spec in (params.get("properties") or {}).items():
                optional = "" if arg in params.get("required", []) else "?"
                assert f"{arg}{optional}: " in head, (domain, fn["name"], arg)
                for value in spec.get("enum", []):
                    assert str(value) in head, (domain, fn["name"], arg, value)
        compact = render_tools_section(tools, tools_format="compact")
        assert len(section) < 0.5 * len(compact), (domain, len(section), len(compact))
    assert set(TOOLS_FORMATS) == {"qwen", "compact", "signatures"}
