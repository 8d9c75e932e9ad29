"""Problem generators of the QA setting: the domain and the difficulty show through the text only.

Each domain has three generators. The number of ``steps`` (operations, pipeline stages, conditions, or
retrieval hops) sets the visible difficulty and shows in the problem's structure; no tag, no level word.
Vocabulary overlaps between domains on purpose (math problems that mention a program, code problems that
"compute", science problems with numbers, factual questions about years), and some problems carry a
filler sentence that makes them longer without making them harder.

``generate(rng, domain, steps)`` returns a ``Problem``: question text, answer, and for factual problems the
document chain (one document per hop, in order) plus look-alike distractors.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from orchestra_jax.envs.menu import alias_names

CITIES = ("Aldmoor", "Brenna", "Castor", "Dunfall", "Elmsby", "Fairholt", "Gorran", "Hestia", "Jarrow",
          "Kelden", "Lysport", "Marrow")
TOPICS = ("enzyme kinetics", "orbital motion", "plate tectonics", "gene expression", "heat flow", "optics",
          "ecology", "acid-base titration", "fluid flow", "circuits")
FILLERS = ("Show your work briefly.", "The answer is a single value.", "Take care with the details.",
           "This came up in a weekly review.")
MAX_STEPS = 4


@dataclasses.dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    docs: tuple[tuple[str, str], ...] = ()     # (entity, text): the hop chain first, then distractors
    hops: int = 0                              # documents the answer needs (factual only)


def _name(rng) -> str:
    return alias_names(rng, 1)[0].split("-")[0].capitalize()


def _ops(rng, steps: int, start: int) -> tuple[list[str], int]:
    words, v = [], start
    for _ in range(steps):
        kind = int(rng.integers(3))
        x = int(rng.integers(2, 13))
        if kind == 0:
            words.append(f"add {x}")
            v += x
        elif kind == 1:
            words.append(f"multiply by {x}")
            v *= x
        else:
            words.append(f"subtract {x}")
            v -= x
    return words, v


def _math(rng, steps: int) -> Problem:
    g = int(rng.integers(3))
    if g == 0:
        a = int(rng.integers(3, 40))
        words, v = _ops(rng, steps, a)
        lead = "Compute" if rng.random() < 0.8 else "With a short program if you like, compute"
        return Problem(f"{lead}: start from {a}, " + ", then ".join(words) + ".", str(v))
    if g == 1:
        per, n = int(rng.integers(4, 20)), int(rng.integers(2, 9))
        total, parts = per * n, [f"A crate holds {per} jars and {n} crates arrive."]
        for _ in range(steps - 1):
            x = int(rng.integers(1, 9))
            if rng.random() < 0.5:
                parts.append(f"{x} jars break.")
                total -= x
            else:
                parts.append(f"{x} more jars are added.")
                total += x
        return Problem(" ".join(parts) + " How many jars are there?", str(total))
    n = int(rng.integers(60, 400))
    ds = [int(x) for x in rng.choice(np.arange(3, 14), size=MAX_STEPS, replace=False)]
    conds = [f"divisible by {ds[0]}"] + [f"or by {d}" for d in ds[1:steps]]
    count = sum(1 for i in range(1, n) if any(i % d == 0 for d in ds[:steps]))
    return Problem(f"How many integers below {n} are " + " ".join(conds) + "?", str(count))


def _code(rng, steps: int) -> Problem:
    g = int(rng.integers(3))
    xs = [int(x) for x in rng.integers(1, 60, size=6)]
    stages = [("sorts it", lambda v: sorted(v)), ("drops odd values", lambda v: [x for x in v if x % 2 == 0]),
              ("doubles each value", lambda v: [2 * x for x in v]), ("keeps values above 20", lambda v: [x for x in v if x > 20]),
              ("reverses it", lambda v: v[::-1])]
    if g == 0:
        order = [int(i) for i in rng.choice(len(stages), size=steps, replace=False)]
        v = list(xs)
        for i in order:
            v = stages[i][1](v)
        what = ", ".join(stages[i][0] for i in order)
        return Problem(f"Write code that takes {xs}, {what}, and returns the sum.", str(sum(v)))
    if g == 1:
        n, m = int(rng.integers(5, 30)), int(rng.integers(7, 100))
        terms = ["i * i", "i % 3", "i * 2", "i // 2"][:steps]
        total = sum(sum(eval_term(t, i) for t in terms) for i in range(1, n + 1)) % m
        return Problem(f"Write a function summing {' + '.join(terms)} for i from 1 to {n}, modulo {m}; "
                       "compute f().", str(total))
    word = "".join(str(rng.choice(list("aeioukrstlmn"))) for _ in range(8))
    checks = ["vowels", "letters after 'm'", "repeated letters", "consonants"][:steps]
    total = sum(count_check(c, word) for c in checks)
    return Problem(f"Write a script that counts, in '{word}', the " + " plus the ".join(checks) + ".", str(total))


def eval_term(term: str, i: int) -> int:
    return {"i * i": i * i, "i % 3": i % 3, "i * 2": i * 2, "i // 2": i // 2}[term]


def count_check(check: str, word: str) -> int:
    if check == "vowels":
        return sum(c in "aeiou" for c in word)
    if check == "consonants":
        return sum(c not in "aeiou" for c in word)
    if check == "letters after 'm'":
        return sum(c > "m" for c in word)
    return sum(word.count(c) > 1 for c in set(word))


def _science(rng, steps: int) -> Problem:
    topic = TOPICS[int(rng.integers(len(TOPICS)))]
    conds = [f"the temperature rises to {int(rng.integers(20, 90))} C", "the pressure doubles",
             "a catalyst is added", "the sample is diluted", "the field is reversed"]
    chosen = [conds[int(i)] for i in rng.choice(len(conds), size=steps, replace=False)]
    g = int(rng.integers(3))
    lead = ("In a study of {t}, " if g == 0 else "A lab measures {t}: " if g == 1 else "Consider {t} where ")
    return Problem(lead.format(t=topic) + " and ".join(chosen) + ". Which option follows? (A/B/C/D)",
                   "ABCD"[int(rng.integers(4))])


def _factual(rng, steps: int) -> Problem:
    hops = min(steps, 3)
    org = _name(rng) + " Corp"
    owner, founder = _name(rng) + " Group", _name(rng) + " " + _name(rng)
    city, year = CITIES[int(rng.integers(len(CITIES)))], str(int(rng.integers(1820, 1990)))
    g = int(rng.integers(3))
    if hops == 1:
        q, chain = ((f"In which city is {org} based?", [(org, f"{org} is based in {city}.")]) if g else
                    (f"In which year was {org} founded?", [(org, f"{org} was founded in {year}.")]))
        answer = city if g else year
    elif hops == 2:
        q = f"In which year was the founder of {org} born?"
        chain = [(org, f"{org} was founded by {founder}."), (founder, f"{founder} was born in {year}.")]
        answer = year
    else:
        q = f"In which city was the founder of the group that owns {org} born?"
        chain = [(org, f"{org} is owned by {owner}."), (owner, f"{owner} was founded by {founder}."),
                 (founder, f"{founder} was born in {city}.")]
        answer = city
    if steps > hops:  # a 4-step factual question: one more clause to read, same hops
        q = q[:-1] + ", according to the registry?"
    distractors = []
    for ent, _ in chain:  # look-alikes: a search that misses returns one of these
        twin = ent.split(" ")[0] + "a " + " ".join(ent.split(" ")[1:]) if " " in ent else ent + "a"
        distractors.append((twin.strip(), f"{twin.strip()} is a different entity ({_name(rng)})."))
    return Problem(q, answer, tuple(chain) + tuple(distractors), hops)


GENERATORS = {"math": _math, "code": _code, "science": _science, "factual": _factual}


def generate(rng: np.random.Generator, domain: str, steps: int, filler_prob: float = 0.3) -> Problem:
    if domain not in GENERATORS:
        raise ValueError(f"no problem generator for domain {domain!r}; have {sorted(GENERATORS)}")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be in [1, {MAX_STEPS}], got {steps}")
    p = GENERATORS[domain](rng, steps)
    if rng.random() < filler_prob:
        p = dataclasses.replace(p, question=p.question + " " + FILLERS[int(rng.integers(len(FILLERS)))])
    return p
