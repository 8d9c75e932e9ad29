"""What a QA policy can read: the menu, the problem's domain and steps, the preference, the observations.

Hand-written readers for the scripted routers (``qa_policies``); they use only the prompt text and the
observations, never the task's hidden fields.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from orchestra_jax.envs.pool import Described, parse_description
from orchestra_jax.envs.preferences import parse_stated_preference

_MENU_LINE = re.compile(r"^([a-z]+-\d): (.+)$")  # env.qa.menu_layout name_first, name_after_facts
_MENU_LINE_NAME_LAST = re.compile(r"^(.+) = ([a-z]+-\d)$")
_BUDGET = re.compile(r"^Budget: \$([\d.e-]+)\.$")


@dataclasses.dataclass(frozen=True)
class Reading:
    """A prompt as read: menu (alias -> description), the problem, the instruction, the task id."""

    aliases: tuple[str, ...]
    described: tuple[Described, ...]
    question: str
    instruction: str
    task_id: str
    budget_usd: float = 0.0        # the stated $ budget (0 = none stated)


def read_prompt(prompt: dict[str, Any]) -> Reading:
    user = next((m["content"] for m in prompt.get("messages", []) if m.get("role") == "user"), "")
    aliases, described, question, rest, budget = [], [], "", [], 0.0
    for line in user.split("\n"):
        m, last = _MENU_LINE.match(line), _MENU_LINE_NAME_LAST.match(line)
        alias, text = (m.group(1), m.group(2)) if m else (last.group(2), last.group(1)) if last else (None, None)
        if m and text.endswith(f" {alias}"):  # menu_layout name_after_facts: the name after every fact
            text = text.replace(f" {alias}", "")
        d = parse_description(text) if text is not None else None
        if d is not None:
            aliases.append(alias)
            described.append(d)
        elif _BUDGET.match(line):
            budget = float(_BUDGET.match(line).group(1))
        elif line.startswith("Task: "):
            question = line[len("Task: "):]
        elif line and line != "Models:":
            rest.append(line)
    return Reading(tuple(aliases), tuple(described), question, " ".join(rest), str(prompt.get("task_id", "")),
                   budget)


def read_domain(question: str) -> str:
    if question.startswith("In which "):
        return "factual"
    if "Which option follows?" in question:
        return "science"
    if question.startswith("Write "):
        return "code"
    return "math"


_CODE_STAGES = ("sorts it", "drops odd values", "doubles each value", "keeps values above 20", "reverses it")
_SCI_CONDS = ("the temperature rises", "the pressure doubles", "a catalyst is added", "the sample is diluted",
              "the field is reversed")


def read_steps(question: str, domain: str) -> int:
    """The problem's number of steps as its structure shows it (1..4)."""
    q = question
    if domain == "factual":
        hops = 3 if "group that owns" in q else 2 if "founder of" in q else 1
        return min(4, hops + (1 if "according to the registry" in q else 0))
    if domain == "science":
        n = sum(c in q for c in _SCI_CONDS)
    elif domain == "code":
        if q.startswith("Write code that takes"):
            n = sum(s in q for s in _CODE_STAGES)
        elif q.startswith("Write a function"):
            n = q.split(" for i ")[0].count(" + ") + 1
        else:
            n = q.count(" plus the ") + 1
    elif "crate" in q:
        n = 1 + q.count("jars break") + q.count("more jars")
    elif q.startswith("How many integers"):
        n = 1 + q.count("or by")
    else:
        n = q.count(", then ") + 1
    return max(1, min(4, n))


def read_hops(question: str) -> int:
    return 3 if "group that owns" in question else 2 if "founder of" in question else 1


def read_preference(r: Reading) -> tuple[float, ...]:
    return parse_stated_preference(r.instruction, r.aliases, [d.local for d in r.described])


@dataclasses.dataclass
class Observed:
    """What the observations so far say: hop documents found, candidates (value, evidence, slot), calls."""

    found: int = 0
    candidates: list = dataclasses.field(default_factory=list)   # (value, "passed"/"failed"/"high"/"low", slot)
    calls: list = dataclasses.field(default_factory=list)        # (tool, slot) of every valid call
    crashes: int = 0
    events: list = dataclasses.field(default_factory=list)       # (tool, slot, outcome, value) per valid call


_CALL = re.compile(r'"name": "(\w+)".*"model": "([a-z]+-\d)"', re.S)
_RESULT = re.compile(r": result (-?\d+), check (passed|failed)\.")
_NOTES = re.compile(r": notes point to ([A-D]), confidence (high|low)\.")


def read_history(history: Sequence[tuple[str, str]], aliases: Sequence[str]) -> Observed:
    o = Observed()
    for action, obs in history:
        if obs.startswith("Error") or not obs:
            continue
        m = _CALL.search(action)
        if not m or m.group(2) not in aliases:
            continue
        tool, slot = m.group(1), list(aliases).index(m.group(2))
        o.calls.append((tool, slot))
        outcome, value = "nothing", None
        if tool == "search" and "] " in obs:
            outcome = "missed" if "different entity" in obs else "found"
            o.found += outcome == "found"
        elif tool == "enhance_reasoning":
            r = _RESULT.search(obs) or _NOTES.search(obs)
            if r:
                o.candidates.append((r.group(1), r.group(2), slot))
                outcome, value = r.group(2), r.group(1)
            elif "crashed" in obs:
                o.crashes += 1
                outcome = "crashed"
        o.events.append((tool, slot, outcome, value))
    return o
