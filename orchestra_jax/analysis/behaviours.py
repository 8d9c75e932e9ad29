"""How often policies show recognisable behaviours, read from per-episode call logs.

Input format (``CallLog``; what ``EpisodeResults.call_log`` holds once the env records it, and what
``analysis.robustness.PerturbedEnv.call_log`` records today): one list per episode, one dict per turn in
order, with keys
    tool       str    tool / function called as the env knows it ("" when the action was no valid call)
    alias      str    model alias the call used ("" for tools without one)
    arguments  dict   the call's arguments (optional; default {"model": alias} when alias is set)
    valid      bool   a well-formed call of an offered tool that the env executed
    cost_usd   float  $ charged for the turn
    price      float  optional: the alias's $ per 1M output tokens shown in this episode
    error      str    optional: "" or the error shown (bad call, tool error, timeout)

Behaviours of one episode (each a bool; a frequency is the fraction of episodes showing it):
    escalation          a valid call to tool T, later a valid call to T on a strictly pricier alias
                        ("cheap model first, then escalate"); price = ``price`` if logged, else the turn's $
    double_check        a valid call to tool T, later a valid call to T on a different alias that is not
                        pricier (a second opinion; disjoint from escalation for each pair of calls)
    repeated_identical  the same (tool, arguments) called twice in the episode
    retry_after_error   a turn with an error followed by a later valid call
    giving_up           the episode ended without a valid call of a final tool (e.g. ``answer``)
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

BEHAVIOURS = ("escalation", "double_check", "repeated_identical", "retry_after_error", "giving_up")
CallLog = Sequence[Sequence[Mapping[str, Any]]]


def _arguments(entry: Mapping[str, Any]) -> dict:
    if "arguments" in entry and entry["arguments"] is not None:
        return dict(entry["arguments"])
    return {"model": entry["alias"]} if entry.get("alias") else {}


def _price(entry: Mapping[str, Any]) -> float:
    return float(entry["price"]) if entry.get("price") is not None else float(entry.get("cost_usd", 0.0))


def episode_behaviours(calls: Sequence[Mapping[str, Any]], final_tools: Sequence[str] = ("answer",)) -> dict[str, bool]:
    """The behaviour flags of one episode's call log."""
    for k, e in enumerate(calls):
        if "tool" not in e or "valid" not in e:
            raise ValueError(f"call log entry {k} lacks 'tool' or 'valid': {dict(e)}")
    valid = [e for e in calls if e["valid"] and e["tool"]]
    flags = dict.fromkeys(BEHAVIOURS, False)
    for i, a in enumerate(valid):
        for b in valid[i + 1:]:
            if a["tool"] != b["tool"] or a.get("alias", "") == b.get("alias", ""):
                continue
            if _price(b) > _price(a):
                flags["escalation"] = True
            else:
                flags["double_check"] = True
    keys = [(e["tool"], json.dumps(_arguments(e), sort_keys=True)) for e in calls if e["tool"]]
    flags["repeated_identical"] = len(keys) != len(set(keys))
    first_error = next((k for k, e in enumerate(calls) if e.get("error") or not e["valid"]), None)
    flags["retry_after_error"] = first_error is not None and any(
        e["valid"] for e in calls[first_error + 1:])
    flags["giving_up"] = not any(e["tool"] in final_tools for e in valid)
    return flags


def behaviour_flags(call_log: CallLog, final_tools: Sequence[str] = ("answer",)) -> dict[str, np.ndarray]:
    """name -> [N] bool over the episodes of a call log."""
    per = [episode_behaviours(c, final_tools) for c in call_log]
    return {b: np.array([p[b] for p in per], bool) for b in BEHAVIOURS}


def behaviour_frequencies(call_log: CallLog, final_tools: Sequence[str] = ("answer",)) -> dict[str, float]:
    """name -> fraction of episodes showing it (plus ``episodes``)."""
    if len(call_log) == 0:
        raise ValueError("behaviour_frequencies: empty call log")
    flags = behaviour_flags(call_log, final_tools)
    return {**{b: float(v.mean()) for b, v in flags.items()}, "episodes": len(call_log)}


def call_log_of(results) -> CallLog | None:
    """The call log an EpisodeResults carries (the env's optional ``call_log`` field), else None."""
    log = getattr(results, "call_log", None)
    return log if log else None
