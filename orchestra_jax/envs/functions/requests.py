"""Request kinds and their gold action programs; task synthesis with multi-intent requests and evolution.

A request kind (``spec.REQUEST_KINDS``) turns the database, a user and a seeded rng into one user request:
its sentence, its gold actions (reads, then at most one write) and the facts the final answer must hold.
A task is a *recipe* (user, the requests' kinds, seeds and flags, distractors) built request by request on
the database as the earlier gold actions left it. ``evolve`` makes a harder recipe: one more request, a
conditional booking ("if it is full, take the next one"), an order named by its description instead of
its id, extra facts to report, or a distractor sentence. A task's level is its number of evolution steps.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from orchestra_jax.envs.domains.base import DB, Action, DomainError, money_text
from orchestra_jax.envs.functions.engine import Tools, column, display, rows_where
from orchestra_jax.envs.functions.spec import DomainSpec, placeholders

RESPOND = "respond"
EVOLUTIONS = ("add_request", "conditional", "describe", "ask", "distract")
ASKABLE = ("book", "cancel", "change_option", "change_quantity", "add_funds")
DESCRIBABLE = ("change_option", "change_quantity")


@dataclasses.dataclass(frozen=True)
class Request:
    """One user goal: its sentence, gold actions (reads then <= 1 write) and facts to report."""

    kind: str
    text: str
    actions: tuple[Action, ...]
    facts: tuple[str, ...] = ()
    write: bool = True


@dataclasses.dataclass(frozen=True)
class RequestRecipe:
    kind: str
    seed: int
    flags: frozenset = frozenset()


@dataclasses.dataclass(frozen=True)
class Recipe:
    user: str
    requests: tuple[RequestRecipe, ...]
    distractors: tuple[int, ...] = ()     # indices into spec.phrases.distractors
    level: int = 0


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


class RequestBuilder:
    """Request generators of one domain spec (each returns None when its goal is infeasible or ambiguous)."""

    def __init__(self, spec: DomainSpec, tools: Tools):
        self.spec, self.t = spec, tools
        self.ph = spec.phrases
        self.user, self.item, self.order = tools.user, tools.item, tools.order
        self.search = spec.tool_of("search")
        self.at_field = placeholders(self.ph.at)[0]
        self.at_word = self.ph.lookup.get(self.at_field, self.at_field.replace("_", " "))
        self.kinds: dict[str, Callable] = {
            "book": self.book, "book_conditional": self.book_conditional, "cancel": self.cancel,
            "change_option": self.change_option, "change_quantity": self.change_quantity,
            "update_profile": self.update_profile, "add_funds": self.add_funds, "lookup_item": self.lookup_item,
            "lookup_info": self.lookup_info}

    # ---- phrases
    def _value(self, rec, field: str) -> str:
        return display(getattr(rec, column(self.item.field(field))), column(self.item.field(field)))

    def filter_text(self, it) -> str:
        return self.ph.item_filter.format(**{f: getattr(it, f) for f in placeholders(self.ph.item_filter)})

    def at_text(self, it) -> str:
        return self.ph.at.format(**{self.at_field: self._value(it, self.at_field)})

    def describe(self, db: DB, o) -> str:
        it = db[self.item.name][getattr(o, self.item.id_field)]
        return f"my {self.order.noun} for the {self.item.noun} {self.filter_text(it)} {self.at_text(it)}"

    # ---- helpers
    def _candidates(self, db: DB, it) -> tuple[dict, list]:
        filters = {f: getattr(it, f) for f in self.search.filters}
        return filters, self.t.sorted_search(db, self.search, **filters)

    def _affordable(self, db, user, it, opt, q) -> bool:
        return self.t.balance(db[self.user.name][user]) >= q * self.t.price(it, opt)

    def _my_active(self, db, user, used):
        return [o for o in rows_where(db[self.order.name], {self.user.id_field: user, "status": self.order.active})
                if getattr(o, self.order.id_field) not in used]

    def _unique_description(self, db, user, o) -> bool:
        mine = self._my_active(db, user, set())
        return sum(self.describe(db, x) == self.describe(db, o) for x in mine) == 1

    # ---- kinds
    def book(self, db, rng, user, used, flags):
        it = _pick(rng, list(db[self.item.name].values()))
        opt, q = _pick(rng, self.t.options), int(rng.integers(1, 4))
        filters, cands = self._candidates(db, it)
        ok = [c for c in cands if self.t.stock(c, opt) >= q]
        if not ok or getattr(ok[0], self.item.id_field) in used or not self._affordable(db, user, ok[0], opt, q):
            return None
        best = ok[0]
        iid = getattr(best, self.item.id_field)
        used.add(iid)
        unit = _plural(q, self.ph.unit)
        text = (f"Book {q} {opt} {unit} on the {self.ph.sort_word} {self.item.noun} {self.filter_text(it)} that "
                f"still has {q} {opt} {unit} free.")
        facts = ()
        if "ask" in flags:
            text += f" Tell me its {self.at_word} and the total price."
            facts = (self._value(best, self.at_field), money_text(q * self.t.price(best, opt)))
        return Request("book", text, (Action(self.search.name, filters), self._create(user, iid, opt, q)), facts)

    def book_conditional(self, db, rng, user, used, flags):
        it = _pick(rng, list(db[self.item.name].values()))
        opt, q = _pick(rng, self.t.options), int(rng.integers(1, 4))
        filters, cands = self._candidates(db, it)
        full = [k for k, c in enumerate(cands) if self.t.stock(c, opt) < q]
        # half of the conditional requests name a train that is full (when the route has one)
        k = int(_pick(rng, full)) if full and rng.random() < 0.5 else int(rng.integers(len(cands)))
        target = cands[k]
        chosen = target if self.t.stock(target, opt) >= q else next(
            (c for c in cands[k + 1:] if self.t.stock(c, opt) >= q), None)
        if chosen is None or getattr(chosen, self.item.id_field) in used or not self._affordable(db, user, chosen, opt, q):
            return None
        if len({self._value(c, self.at_field) for c in cands}) != len(cands):
            return None  # the time would not name one row
        iid = getattr(chosen, self.item.id_field)
        used.add(iid)
        unit = _plural(q, self.ph.unit)
        text = (f"I want {q} {opt} {unit} on the {self.item.noun} {self.filter_text(target)} {self.at_text(target)}; "
                f"if it has fewer than {q} {opt} {unit} left, book the next {self.item.noun} after it that has "
                f"enough instead. Tell me the {self.at_word} of the one you booked.")
        return Request("book_conditional", text, (Action(self.search.name, filters), self._create(user, iid, opt, q)),
                       (self._value(chosen, self.at_field),))

    def _create(self, user, iid, opt, q) -> Action:
        return Action(self.spec.tool_of("create").name, {self.user.id_field: user, self.item.id_field: iid,
                                                           "option": opt, "quantity": q})

    def cancel(self, db, rng, user, used, flags):
        mine = self._my_active(db, user, used)
        if not mine:
            return None
        o = _pick(rng, mine)
        if not self._unique_description(db, user, o):
            return None
        oid = getattr(o, self.order.id_field)
        used.add(oid)
        text = f"Cancel {self.describe(db, o)}."
        facts = ()
        if "ask" in flags:
            text += " How much will be refunded?"
            facts = (money_text(o.total_cents),)
        return Request("cancel", text, (Action(self.spec.tool_of("list_orders").name, {self.user.id_field: user}),
                                        Action(self.spec.tool_of("cancel").name, {self.order.id_field: oid})), facts)

    def _change(self, kind, db, rng, user, used, flags):
        mine = self._my_active(db, user, used)
        if not mine:
            return None
        o = _pick(rng, mine)
        oid = getattr(o, self.order.id_field)
        if kind == "change_option":
            new = _pick(rng, [x for x in self.t.options if x != o.option])
            arg, fn = {"option": new}, self.t.change_option
        else:
            new = int(_pick(rng, [x for x in range(1, 6) if x != o.quantity]))
            arg, fn = {"quantity": new}, self.t.change_quantity
        try:
            out, _ = fn(db, oid, new)
        except DomainError:
            return None
        describe = "describe" in flags
        if describe and not self._unique_description(db, user, o):
            return None
        used.add(oid)
        ref = self.describe(db, o) if describe else f"{self.order.noun} {oid}"
        if kind == "change_option":
            text = f"Please switch {ref} to {new}."
        else:
            text = f"I need {new} {_plural(new, self.ph.unit)} instead of {o.quantity} on {ref}."
        facts = ()
        if "ask" in flags:
            text += " What is the new total?"
            facts = (out["new_total"],)
        read = (Action(self.spec.tool_of("list_orders").name, {self.user.id_field: user}) if describe else
                Action(self.spec.tool_of("get:order").name, {self.order.id_field: oid}))
        return Request(kind, text, (read, Action(self.spec.tool_of(kind).name, {self.order.id_field: oid, **arg})), facts)

    def change_option(self, db, rng, user, used, flags):
        return self._change("change_option", db, rng, user, used, flags)

    def change_quantity(self, db, rng, user, used, flags):
        return self._change("change_quantity", db, rng, user, used, flags)

    def update_profile(self, db, rng, user, used, flags):
        tool = _pick(rng, [t for t in self.spec.tools if t.kind == "set_field"])
        if f"field:{tool.field}" in used:
            return None
        u = db[self.user.name][user]
        value = _pick(rng, [v for v in self.user.field(tool.field).values if v != getattr(u, tool.field)])
        used.add(f"field:{tool.field}")
        text = f"Please change my {tool.field.replace('_', ' ')} to {value}."
        return Request("update_profile", text, (Action(self.spec.tool_of("get:user").name, {self.user.id_field: user}),
                                                Action(tool.name, {self.user.id_field: user, tool.field: value})))

    def add_funds(self, db, rng, user, used, flags):
        if "funds" in used:
            return None
        used.add("funds")
        amount = int(rng.integers(2, 31)) * 10
        text = f"Please add ${amount} to my {self.ph.balance_word}."
        facts = ()
        if "ask" in flags:
            text += " What is my new balance?"
            facts = (money_text(self.t.balance(db[self.user.name][user]) + amount * 100),)
        return Request("add_funds", text, (Action(self.spec.tool_of("add_funds").name,
                                                  {self.user.id_field: user, "amount": amount}),), facts)

    def lookup_item(self, db, rng, user, used, flags):
        it = _pick(rng, list(db[self.item.name].values()))
        field = _pick(rng, sorted(self.ph.lookup))
        iid = getattr(it, self.item.id_field)
        text = f"What is the {self.ph.lookup[field]} of {self.item.noun} {iid}?"
        return Request("lookup_item", text, (Action(self.spec.tool_of("get:item").name, {self.item.id_field: iid}),),
                       (self._value(it, field),), write=False)

    def lookup_info(self, db, rng, user, used, flags):
        field = _pick(rng, sorted(self.ph.info_questions))
        table = next(t for t in self.spec.tables if t.role == "info" and field in [f.name for f in t.fields])
        tool = next(t for t in self.spec.tools if t.kind == "find" and t.table == table.name)
        row = _pick(rng, list(db[table.name].values()))
        key = getattr(row, table.key)
        if sum(getattr(r, table.key) == key for r in db[table.name].values()) != 1:
            return None
        col = column(table.field(field))
        text = self.ph.info_questions[field].format(**{table.key: key})
        return Request("lookup_info", text, (Action(tool.name, {table.key: key}),),
                       (display(getattr(row, col), col),), write=False)

    # ---- recipes
    def build(self, db: DB, recipe: Recipe, execute) -> list[Request] | None:
        """The requests of a recipe on `db`, or None when one is infeasible. `execute(db, actions) -> db`."""
        used: set = set()
        out = []
        for rr in recipe.requests:
            rng = np.random.default_rng(rr.seed)
            req = None
            for _ in range(6):  # a few draws of the same kind (same seed stream)
                trial = set(used)
                req = self.kinds[rr.kind](db, rng, recipe.user, trial, rr.flags)
                if req is not None:
                    break
            if req is None:
                return None
            try:
                db, written = execute(db, req.actions)
            except ValueError:
                return None
            used = trial | {key for _, key in written}
            out.append(req)
        return out

    def evolve(self, recipe: Recipe, rng: np.random.Generator, max_requests: int = 4) -> Recipe | None:
        """A harder variant of `recipe` (one evolution step), or None when no step applies."""
        kinds = [r.kind for r in recipe.requests]
        ops = []
        if len(kinds) < max_requests:
            ops.append("add_request")
        if "book" in kinds and any(r.kind == "book_conditional" for r in self.spec.requests):
            ops.append("conditional")
        if any(r.kind in DESCRIBABLE and "describe" not in r.flags for r in recipe.requests):
            ops.append("describe")
        if any(r.kind in ASKABLE and "ask" not in r.flags for r in recipe.requests):
            ops.append("ask")
        if len(recipe.distractors) < 2:
            ops.append("distract")
        if not ops:
            return None
        op = _pick(rng, ops)
        reqs = list(recipe.requests)
        if op == "add_request":
            reqs.append(RequestRecipe(self.draw_kind(rng), int(rng.integers(2**31))))
        elif op == "distract":
            return dataclasses.replace(recipe, distractors=recipe.distractors + (int(rng.integers(len(self.ph.distractors))),),
                                       level=recipe.level + 1)
        else:
            target = {"conditional": ("book",), "describe": DESCRIBABLE, "ask": ASKABLE}[op]
            idx = [k for k, r in enumerate(reqs) if r.kind in target and not (op in r.flags)]
            k = int(_pick(rng, idx))
            if op == "conditional":
                reqs[k] = dataclasses.replace(reqs[k], kind="book_conditional")
            else:
                reqs[k] = dataclasses.replace(reqs[k], flags=reqs[k].flags | {op})
        return dataclasses.replace(recipe, requests=tuple(reqs), level=recipe.level + 1)

    def draw_kind(self, rng: np.random.Generator) -> str:
        w = np.array([r.weight for r in self.spec.requests], float)
        return self.spec.requests[int(rng.choice(len(w), p=w / w.sum()))].kind

    def instruction(self, db: DB, recipe: Recipe, requests: list[Request]) -> str:
        sentences = [r.text for r in requests]
        if len(sentences) > 1:
            sentences = [f"First, {_lower_first(sentences[0])}"] + [f"Then, {_lower_first(s)}" for s in sentences[1:]]
        for k, d in enumerate(recipe.distractors):
            sentences.insert((d + k) % (len(sentences) + 1), self.ph.distractors[d])
        u = db[self.user.name][recipe.user]
        name = getattr(u, self.user.fields[0].name)
        return f"Hi, I am {name}, {self.user.noun} id {recipe.user}. " + " ".join(sentences)


def _lower_first(sentence: str) -> str:
    first = sentence.split(" ", 1)[0]
    return sentence if first in ("I", "I'd") else sentence[0].lower() + sentence[1:]


def _pick(rng: np.random.Generator, seq) -> Any:
    return seq[int(rng.integers(len(seq)))]
