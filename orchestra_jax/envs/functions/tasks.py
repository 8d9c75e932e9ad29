"""FunctionsTask (one ToolScale-like task, JSON round trip) and the required-information check."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from orchestra_jax.envs.domains.base import Action

SETTING = "functions"
SCHEMA_VERSION = 2
RESPOND = "respond"
CALL_EXPERT = "call_expert"


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    """What the env keeps of one request of a task: its kind, how many gold actions, a write or not, facts."""

    kind: str
    n_actions: int
    write: bool
    facts: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "n_actions": self.n_actions, "write": self.write, "facts": list(self.facts)}

    @staticmethod
    def from_dict(d: Mapping) -> "RequestInfo":
        return RequestInfo(str(d["kind"]), int(d["n_actions"]), bool(d["write"]), tuple(str(f) for f in d["facts"]))


@dataclasses.dataclass(frozen=True)
class FunctionsTask:
    """One function-calling task. `gold_actions` = the requests' actions in order, then the gold `respond`."""

    task_id: str
    domain: str
    user_id: str
    instruction: str
    gold_actions: tuple[Action, ...]
    requests: tuple[RequestInfo, ...]
    required_info: tuple[str, ...]
    level: int                            # evolution steps: 0 base, 1, 2
    n_distractors: int
    hidden_difficulty: float              # expert logit offset the policy never sees
    db_seed: int
    db_size: int
    aliases: tuple[str, ...]              # expert aliases offered in this task
    price_scales: tuple[float, ...]       # price multiplier per offered alias
    preference: tuple[float, ...]         # P over [all aliases..., outcome, cost, latency]
    preference_text: str = ""

    @property
    def n_writes(self) -> int:
        return sum(r.write for r in self.requests)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["gold_actions"] = [a.to_dict() for a in self.gold_actions]
        d["requests"] = [r.to_dict() for r in self.requests]
        for k in ("required_info", "aliases", "price_scales", "preference"):
            d[k] = list(d[k])
        return {"setting": SETTING, "schema_version": SCHEMA_VERSION, **d}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "FunctionsTask":
        """Inverse of to_dict; a bad record raises ValueError naming the field."""
        if not isinstance(d, Mapping):
            raise ValueError(f"functions task must be a mapping, got {type(d).__name__}")
        if d.get("setting", SETTING) != SETTING:
            raise ValueError(f"functions task: setting must be {SETTING!r}, got {d.get('setting')!r}")
        if d.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ValueError(f"functions task: schema_version {d.get('schema_version')!r} is not {SCHEMA_VERSION}")
        fields = {f.name for f in dataclasses.fields(FunctionsTask)}
        missing = sorted(k for k in fields if k not in d and k != "preference_text")
        tid = d.get("task_id", "?")
        if missing:
            raise ValueError(f"functions task {tid}: missing field(s) {missing}")
        for name, conv in (("gold_actions", Action.from_dict), ("requests", RequestInfo.from_dict)):
            try:
                tuple(conv(a) for a in d[name])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"functions task {tid}: bad field {name!r} ({e})") from None
        actions = tuple(Action.from_dict(a) for a in d["gold_actions"])
        requests = tuple(RequestInfo.from_dict(r) for r in d["requests"])
        if not actions or actions[-1].name != RESPOND:
            raise ValueError(f"functions task {tid}: field 'gold_actions' must end with {RESPOND!r}")
        if sum(r.n_actions for r in requests) != len(actions) - 1:
            raise ValueError(f"functions task {tid}: field 'requests' covers {sum(r.n_actions for r in requests)} "
                             f"actions, 'gold_actions' has {len(actions) - 1} before respond")
        try:
            return FunctionsTask(
                task_id=str(d["task_id"]), domain=str(d["domain"]), user_id=str(d["user_id"]),
                instruction=str(d["instruction"]), gold_actions=actions, requests=requests,
                required_info=tuple(str(x) for x in d["required_info"]), level=int(d["level"]),
                n_distractors=int(d["n_distractors"]), hidden_difficulty=float(d["hidden_difficulty"]),
                db_seed=int(d["db_seed"]), db_size=int(d["db_size"]), aliases=tuple(str(x) for x in d["aliases"]),
                price_scales=tuple(float(x) for x in d["price_scales"]),
                preference=tuple(float(x) for x in d["preference"]), preference_text=str(d.get("preference_text", "")))
        except (TypeError, ValueError) as e:
            raise ValueError(f"functions task {tid}: bad field value ({e})") from None

    def segments(self) -> list[tuple[Action, ...]]:
        """Gold actions per request (without the final respond)."""
        out, k = [], 0
        for r in self.requests:
            out.append(tuple(self.gold_actions[k:k + r.n_actions]))
            k += r.n_actions
        return out


def normalise_text(text: str) -> str:
    """Lower case, no '$' or thousands commas, single spaces: how required facts are matched."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text.lower()).replace("$", "")
    return " ".join(text.split())


def info_given(message: str, facts: Sequence[str], max_chars: int = 0) -> bool:
    """Every required fact occurs in the message as a whole token (after `normalise_text`: '155.00' does
    not contain '55.00'); a message over `max_chars` (> 0) fails, so dumping every record cannot game it."""
    if max_chars > 0 and len(message) > max_chars:
        return False
    m = normalise_text(message)
    return all(re.search(r"(?<![\w.])" + re.escape(normalise_text(f)) + r"(?![\w]|\.\d)", m) for f in facts)


def reply_text(facts: Sequence[str]) -> str:
    return "All done." + (" Details: " + "; ".join(facts) + "." if facts else "")
