"""Scripted policies of the function-calling setting (interface of envs/baselines.py: ``act(prompt, history,
rng) -> str``, acting only on what a policy sees: the user's message, the tool schemas, the observations).

- ``always_strongest`` / ``cheapest`` / ``random_router``: delegate every turn to one expert (the general-top
  one or else the priciest / the cheapest / a random one) until the conversation ends;
- ``rule_based``: delegates every turn, picking the expert by the visible size of the task (requests,
  conditions, orders named by description): cheap for small tasks, the strongest for big ones;
- ``tools_first``: does the requests a careful script can do from the text alone with one direct call
  (profile changes, top-ups, changes of an order named by id, item look-ups) itself, delegates the others
  with the rule_based choice, and answers itself when it holds every fact (else an expert replies);
  ``tools_first_cheapest`` / ``tools_first_strongest`` delegate to the cheapest / strongest expert instead;
- ``random``: a random call each turn (an expert, a domain function with random arguments, or respond).
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Mapping, Sequence

import numpy as np

from orchestra_jax.envs.functions.tasks import CALL_EXPERT, RESPOND
from orchestra_jax.text.chat import format_tool_call

_ID_RE = re.compile(r"\b[A-Z]{2}\d{5}\b")
_COMPACT_ITEM_RE = re.compile(r"(expert-[\w-]+) ([\w-]+) \$(\d+(?:\.\d+)?)")
_FULL_ITEM_RE = re.compile(r"(expert-[\w-]+): .*? \(([\w-]+)\), \$[\d.]+ in / \$(\d+(?:\.\d+)?) out")
_TAG_RANK = {"general-top": 3, "general-mid": 2, "general": 1, "general-small": 0}


@dataclasses.dataclass(frozen=True)
class ExpertItem:
    alias: str
    tag: str
    price_out: float


def parse_experts(tools: Sequence[Mapping[str, Any]]) -> list[ExpertItem]:
    """The experts offered in a prompt's tool list (both description styles); [] if none."""
    for tool in tools:
        fn = tool.get("function", tool)
        if fn.get("name") == CALL_EXPERT:
            desc = fn.get("description", "")
            found = _FULL_ITEM_RE.findall(desc) or _COMPACT_ITEM_RE.findall(desc)
            return [ExpertItem(a, t, float(p)) for a, t, p in found]
    return []


def user_text(prompt: Mapping[str, Any]) -> str:
    return next(m["content"] for m in reversed(prompt["messages"]) if m["role"] == "user")


def split_requests(prompt: Mapping[str, Any]) -> list[str]:
    """The user's requests in order ("First, ... Then, ..."; one request otherwise), greeting removed."""
    text = user_text(prompt).split("\n")[0]
    text = re.sub(r"^Hi, I am .*? id [A-Z]{2}\d{5}\. ", "", text)
    if "First, " not in text:
        return [text]
    parts = re.split(r"(?:^|\s)(?:First|Then), ", text)[1:]  # anything before "First, " is small talk
    return [p for p in parts if p.strip()]


def visible_size(prompt: Mapping[str, Any]) -> int:
    """Requests + conditions + orders named by description: the task's visible difficulty."""
    text = user_text(prompt)
    return len(split_requests(prompt)) + text.count("if it has fewer") + len(re.findall(r"\bmy \w+ for the\b", text))


def _strongest(items: Sequence[ExpertItem]) -> ExpertItem:
    return max(items, key=lambda m: (_TAG_RANK.get(m.tag, 1), m.price_out, m.alias))


def _cheapest(items: Sequence[ExpertItem]) -> ExpertItem:
    return min(items, key=lambda m: (m.price_out, m.alias))


def rule_choice(size: int, items: Sequence[ExpertItem]) -> ExpertItem:
    """Cheap experts for small tasks, the strongest for big ones (mistakes compound over requests)."""
    if size <= 1:
        return _cheapest(items)
    if size == 2:
        mid = [m for m in items if _TAG_RANK.get(m.tag, 1) >= 2]
        return _cheapest(mid) if mid else _strongest(items)
    return _strongest(items)


def _delegate(prompt, items, choose, rng) -> str:
    if not items:
        return format_tool_call(RESPOND, {"message": "I cannot help with this."})
    return format_tool_call(CALL_EXPERT, {"expert": choose(prompt, items, rng).alias})


@dataclasses.dataclass
class ExpertRouter:
    """Delegates every step to an expert chosen by ``choose(prompt, items, rng)``."""

    name: str
    choose: Any

    def act(self, prompt: Mapping[str, Any], history, rng: np.random.Generator) -> str:
        return _delegate(prompt, parse_experts(prompt["tools"]), self.choose, rng)


# ------------------------------------------------------------------------------------------ tools_first
def _tool_index(prompt) -> dict[str, dict]:
    return {t["function"]["name"]: t["function"] for t in prompt["tools"]}


def _find_tool(prompt, want: set[str], enum_value: str | None = None, id_prefix: str | None = None) -> str | None:
    """A tool whose parameters are exactly `want` (+ checks), e.g. {'customer_id', 'amount'}."""
    for name, fn in _tool_index(prompt).items():
        props = fn["parameters"]["properties"]
        if set(props) != want:
            continue
        if enum_value is not None and not any(enum_value in p.get("enum", []) for p in props.values()):
            continue
        if id_prefix is not None and not any(f"e.g. {id_prefix}" in p.get("description", "") for p in props.values()):
            continue
        return name
    return None


def _id_param(prompt, prefix: str) -> str | None:
    for fn in _tool_index(prompt).values():
        for k, p in fn["parameters"]["properties"].items():
            if f"e.g. {prefix}" in p.get("description", ""):
                return k
    return None


def _stem_overlap(words: str, key: str) -> int:
    ws = [w for w in re.findall(r"[a-z]+", words.lower()) if len(w) >= 3]
    ks = [k for k in key.lower().split("_") if len(k) >= 3]
    return sum(any(w.startswith(k) or k.startswith(w) for w in ws) for k in ks)


def plan_direct(prompt, request: str) -> tuple[str, dict, str | None] | None:
    """(tool, arguments, fact rule) when one direct call does `request`, else None.

    Fact rules: 'key:<name>' (report that output key), 'lookup:<words>' (the output key matching words)."""
    user_m = re.search(r"id ([A-Z]{2}\d{5})\.", user_text(prompt))
    if user_m is None:
        return None
    user = user_m.group(1)
    user_key = _id_param(prompt, user[:2])
    m = re.search(r"Please change my ([\w ]+?) to ([\w-]+)\.", request)
    if m:
        field = m.group(1).replace(" ", "_")
        tool = _find_tool(prompt, {user_key, field}, enum_value=m.group(2))
        return (tool, {user_key: user, field: m.group(2)}, None) if tool else None
    m = re.search(r"Please add \$(\d+) to my \w+\.( What is my new balance\?)?", request)
    if m:
        tool = _find_tool(prompt, {user_key, "amount"})
        return (tool, {user_key: user, "amount": int(m.group(1))}, "key:new_balance" if m.group(2) else None) if tool else None
    m = re.search(r"Please switch [\w ]*?([A-Z]{2}\d{5}) to (\w+)\.( What is the new total\?)?", request)
    if m:
        key = _id_param(prompt, m.group(1)[:2])
        tool = _find_tool(prompt, {key, "option"}, enum_value=m.group(2))
        return (tool, {key: m.group(1), "option": m.group(2)}, "key:new_total" if m.group(3) else None) if tool else None
    m = re.search(r"I need (\d+) \w+ instead of \d+ on [\w ]*?([A-Z]{2}\d{5})\.( What is the new total\?)?", request)
    if m:
        key = _id_param(prompt, m.group(2)[:2])
        tool = _find_tool(prompt, {key, "quantity"})
        return (tool, {key: m.group(2), "quantity": int(m.group(1))}, "key:new_total" if m.group(3) else None) if tool else None
    m = re.search(r"What is the ([\w ]+?) of [\w ]+? ([A-Z]{2}\d{5})\?", request)
    if m:
        key = _id_param(prompt, m.group(2)[:2])
        tool = _find_tool(prompt, {key}, id_prefix=m.group(2)[:2]) if key else None
        return (tool, {key: m.group(2)}, "lookup:" + m.group(1)) if tool else None
    return None


def _fact(output: str, rule: str) -> str | None:
    try:
        rec = json.loads(output)
    except json.JSONDecodeError:
        return None
    if not isinstance(rec, dict):
        return None
    kind, _, arg = rule.partition(":")
    if kind == "key":
        return None if arg not in rec else str(rec[arg])
    best = max(rec, key=lambda k: _stem_overlap(arg, k))
    return str(rec[best]) if _stem_overlap(arg, best) > 0 else None


def _rule(prompt, items, rng) -> ExpertItem:
    return rule_choice(visible_size(prompt), items)


@dataclasses.dataclass
class ToolsFirst:
    """Direct calls for the requests one call does, experts (chosen by ``choose``) for the rest."""

    name: str = "tools_first"
    choose: Any = _rule

    def act(self, prompt: Mapping[str, Any], history, rng: np.random.Generator) -> str:
        items = parse_experts(prompt["tools"])
        choose = self.choose
        requests = split_requests(prompt)
        h, facts, delegated_asks = 0, [], False
        for req in requests:
            plan = plan_direct(prompt, req)
            if plan is not None and h < len(history) and f'"name": "{plan[0]}"' in history[h][0]:
                out = history[h][1]
                h += 1
                if not out.startswith("Error"):
                    if plan[2]:
                        fact = _fact(out, plan[2])
                        if fact is None:
                            delegated_asks = True
                        else:
                            facts.append(fact)
                    continue
                plan = None  # the direct call failed: delegate this request
            if plan is not None and h >= len(history):
                if plan[2] and plan[2].startswith("lookup:") and not any(
                        _stem_overlap(plan[2][7:], k) for k in re.findall(r'"(\w+)"', json.dumps(prompt["tools"]))):
                    return _delegate(prompt, items, choose, rng)
                return format_tool_call(plan[0], plan[1])
            if h < len(history):   # this request went to an expert
                h += 1
                delegated_asks |= bool(re.search(r"Tell me|How much|What is|How many|\?", req))
                continue
            return _delegate(prompt, items, choose, rng)
        if h < len(history) or delegated_asks:  # extra expert turns (retries) or facts only an expert holds
            return _delegate(prompt, items, choose, rng)
        return format_tool_call(RESPOND, {"message": "All done." + (" Details: " + "; ".join(facts) + "." if facts else "")})


@dataclasses.dataclass
class RandomFunctionPolicy:
    """A random call each turn: an expert, a domain function with random well-typed arguments (ids taken
    from the conversation), or respond."""

    name: str = "random"

    def act(self, prompt: Mapping[str, Any], history, rng: np.random.Generator) -> str:
        u = rng.random()
        items = parse_experts(prompt["tools"])
        if u < 0.4 and items:
            return format_tool_call(CALL_EXPERT, {"expert": items[int(rng.integers(len(items)))].alias})
        if u < 0.5:
            return format_tool_call(RESPOND, {"message": "Done."})
        text = user_text(prompt) + " ".join(o for _, o in history)
        ids = sorted(set(_ID_RE.findall(text))) or ["XX00000"]
        fns = [t["function"] for t in prompt["tools"] if t["function"]["name"] not in (CALL_EXPERT, RESPOND)]
        fn = fns[int(rng.integers(len(fns)))]
        args = {}
        for name, p in fn["parameters"]["properties"].items():
            if "enum" in p:
                args[name] = p["enum"][int(rng.integers(len(p["enum"])))]
            elif p["type"] == "integer":
                args[name] = int(rng.integers(p.get("minimum", 0), p.get("maximum", 10) + 1))
            elif p["type"] == "number":
                args[name] = round(float(rng.uniform(p.get("minimum", 0), min(p.get("maximum", 1e3), 1e3))), 2)
            elif p["type"] == "boolean":
                args[name] = bool(rng.random() < 0.5)
            else:
                args[name] = ids[int(rng.integers(len(ids)))]
        return format_tool_call(fn["name"], args)


@dataclasses.dataclass
class NoisyFunctionPolicy:
    """``base`` with probability ``1 - eps``, else ``RandomFunctionPolicy``."""

    base: Any
    eps: float
    name: str = ""

    def __post_init__(self):
        if not 0 <= self.eps <= 1:
            raise ValueError(f"eps must be in [0, 1], got {self.eps}")
        self.name = self.name or f"{self.base.name}_eps{self.eps:g}"

    def act(self, prompt, history, rng):
        if rng.random() < self.eps:
            return RandomFunctionPolicy().act(prompt, history, rng)
        return self.base.act(prompt, history, rng)


FUNCTION_POLICIES = {
    "always_strongest": lambda: ExpertRouter("always_strongest", lambda p, items, rng: _strongest(items)),
    "cheapest": lambda: ExpertRouter("cheapest", lambda p, items, rng: _cheapest(items)),
    "random_router": lambda: ExpertRouter("random_router", lambda p, items, rng: items[int(rng.integers(len(items)))]),
    "rule_based": lambda: ExpertRouter("rule_based", lambda p, items, rng: rule_choice(visible_size(p), items)),
    "tools_first": ToolsFirst,
    "tools_first_cheapest": lambda: ToolsFirst("tools_first_cheapest", lambda p, items, rng: _cheapest(items)),
    "tools_first_strongest": lambda: ToolsFirst("tools_first_strongest", lambda p, items, rng: _strongest(items)),
    "random": RandomFunctionPolicy,
}


def make_function_policy(name: str):
    """A scripted policy by name (see the module docstring), or ``<name>_eps<p>`` for a noisy variant."""
    if name in FUNCTION_POLICIES:
        return FUNCTION_POLICIES[name]()
    if "_eps" in name:
        base, eps = name.rsplit("_eps", 1)
        if base in FUNCTION_POLICIES:
            try:
                return NoisyFunctionPolicy(FUNCTION_POLICIES[base](), float(eps))
            except ValueError:
                pass
    raise ValueError(f"unknown function-calling policy {name!r}; known {sorted(FUNCTION_POLICIES)} "
                     "(+ '_eps<p>' variants)")
