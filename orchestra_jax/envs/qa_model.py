"""The QA task record and the success model shared by the env and the oracle.

``QATask`` is one episode's task (with its hidden fields); ``difficulty``, ``base_logit``,
``answer_logit`` and ``best_candidate`` are the formulas of the simulation (see ``qa.py``'s docstring).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from orchestra_jax.envs.config import QAConfig
from orchestra_jax.envs.pool import Profile


@dataclasses.dataclass(frozen=True)
class QATask:
    """One QA episode's task. ``steps``, ``hidden_difficulty``, ``answer``, the docs and ``profiles`` are
    hidden from the policy except through the text and the observations."""

    task_id: str
    split: str
    domain: str
    steps: int
    hidden_difficulty: float
    question: str
    answer: str
    docs: tuple[tuple[str, str], ...]
    hops: int
    profiles: tuple[int, ...]          # pool index per menu slot
    aliases: tuple[str, ...]           # alias per menu slot (fresh per episode)
    price_scale: tuple[float, ...]     # price multiplier per menu slot
    preference: tuple[float, ...]
    preference_text: str = ""
    max_usd: float = 0.0               # the task's stated $ budget (0 = none: env.max_usd)

    @property
    def available(self) -> tuple[str, ...]:
        return self.aliases

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in ("profiles", "aliases", "price_scale", "preference"):
            d[k] = list(d[k])
        d["docs"] = [list(x) for x in self.docs]
        d["setting"] = "qa"
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "QATask":
        if not isinstance(d, dict):
            raise ValueError(f"QA task record must be a dict, got {type(d).__name__}")
        d = dict(d)
        if d.pop("setting", "qa") != "qa":
            raise ValueError(f"task {d.get('task_id')!r} is not a QA task")
        names = {f.name for f in dataclasses.fields(QATask)}
        missing = sorted(names - set(d) - {"preference_text", "max_usd"})
        if missing:
            raise ValueError(f"QA task record {d.get('task_id')!r} is missing field(s) {missing}")
        extra = sorted(set(d) - names)
        if extra:
            raise ValueError(f"QA task record {d.get('task_id')!r} has unknown field(s) {extra}")
        try:
            return QATask(
                task_id=str(d["task_id"]), split=str(d["split"]), domain=str(d["domain"]), steps=int(d["steps"]),
                hidden_difficulty=float(d["hidden_difficulty"]), question=str(d["question"]),
                answer=str(d["answer"]), docs=tuple((str(e), str(x)) for e, x in d["docs"]), hops=int(d["hops"]),
                profiles=tuple(int(i) for i in d["profiles"]), aliases=tuple(str(a) for a in d["aliases"]),
                price_scale=tuple(float(s) for s in d["price_scale"]),
                preference=tuple(float(x) for x in d["preference"]),
                preference_text=str(d.get("preference_text", "")), max_usd=float(d.get("max_usd", 0.0)))
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"QA task record {d.get('task_id')!r}: bad field value ({e})") from None


# ---------------------------------------------------------------- the success model (env and oracle)


def difficulty(q: QAConfig, steps: int, hidden: float) -> float:
    return q.difficulty_step * (steps - 1) + hidden


def base_logit(p: Profile, domain: str, d: float) -> float:
    return p.skill_in(domain) - p.slope * d


def answer_logit(q: QAConfig, base: float, domain: str, hops: int, found: int, cand: bool | None,
                 any_cand: bool) -> float:
    """Answer logit given the context: hop documents found, the best candidate right (True) / wrong
    (False) / none (None)."""
    if domain == "factual":
        missing = (hops - found) / hops if hops else 0.0
        return base + (q.doc_bonus if missing == 0 else -q.missing_doc_penalty * missing)
    if cand is None:
        return base - (q.no_candidate_penalty if domain in ("math", "code") else 0.0)
    return base + (q.candidate_bonus if cand else -q.wrong_candidate_penalty)


def best_candidate(values: Sequence[str]) -> str | None:
    """The candidate an answering model relies on: a value given twice (the latest such), else the last."""
    if not values:
        return None
    for v in reversed(values):
        if values.count(v) >= 2:
            return v
    return values[-1]


def wrong_value(answer: str, rng: np.random.Generator) -> str:
    if answer in ("A", "B", "C", "D"):
        return str(rng.choice([x for x in "ABCD" if x != answer]))
    try:
        v = int(answer)
    except ValueError:
        return answer + "x"
    off = int(rng.integers(1, 13)) * (1 if rng.random() < 0.5 else -1)
    return str(v + off)
