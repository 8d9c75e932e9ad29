"""The domain engine: a validated ``DomainSpec`` -> seeded database, tool implementations and JSON schemas.

Records are frozen dataclasses made per table (``<noun>_id`` first, money as ``*_cents``); item rows carry
``price_<option>_cents`` and ``stock_<option>`` per option; order rows are ``(<user>_id, <item>_id, option,
quantity, total_cents, status)``. Every tool is pure (``impl(db, **args) -> (output, writes)``) and runs
through ``domains.base.call_function``, which validates the arguments first and commits the writes only
when the whole call succeeded.
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any

import numpy as np

from orchestra_jax.envs.domains.base import (
    DB, Domain, DomainError, FunctionSpec, Param, get, money_text, next_id, record_dict,
)
from orchestra_jax.envs.functions.spec import DomainSpec, FieldSpec, TableSpec, ToolSpec

FIRST_NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Lena",
               "Max", "Mia", "Noah", "Oscar", "Paul", "Rosa", "Sofia", "Tom", "Vera", "Aiden", "Bella",
               "Carlos", "Diana", "Ethan", "Fiona", "George", "Helen", "Ivan", "Julia")
LAST_NAMES = ("Becker", "Fischer", "Hoffmann", "Koch", "Meyer", "Richter", "Schmidt", "Wagner", "Weber",
              "Dubois", "Durand", "Martin", "Moreau", "Brown", "Clark", "Davis", "Evans", "Garcia", "Hill",
              "Jones", "King", "Lopez", "Miller", "Novak", "Rossi", "Silva", "Tanaka", "Young")
MAX_QUANTITY = 6


# --------------------------------------------------------------------------------------------- records
def column(f: FieldSpec) -> str:
    return f"{f.name}_cents" if f.money else f.name


def record_types(spec: DomainSpec) -> dict[str, type]:
    """One frozen dataclass per table."""
    user, item = spec.role("user"), spec.role("item")
    out = {}
    for t in spec.tables:
        cols = [(t.id_field, str)] + [(column(f), int if f.gen in ("money", "int") else str) for f in t.fields]
        if t.role == "item":
            for o in t.options:
                cols += [(f"price_{o.name}_cents", int), (f"stock_{o.name}", int)]
        if t.role == "order":
            cols += [(user.id_field, str), (item.id_field, str), ("option", str), ("quantity", int),
                     ("total_cents", int), ("status", str)]
        out[t.name] = dataclasses.make_dataclass("".join(w.title() for w in t.name.split("_")), cols, frozen=True)
    return out


def display(value: Any, field: str) -> str:
    """How a field value appears in texts and required facts (money as '12.50')."""
    return money_text(value) if field.endswith("_cents") else str(value)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _gen_value(f: FieldSpec, rng: np.random.Generator, row: dict, i: int) -> Any:
    if f.gen == "person":
        return f"{FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))]} {LAST_NAMES[int(rng.integers(len(LAST_NAMES)))]}"
    if f.gen == "email":
        name = next((v for v in row.values() if isinstance(v, str) and " " in v), "user")
        return f"{name.lower().replace(' ', '.')}{i}@mail.example"
    if f.gen == "phone":
        return f"+1-555-{int(rng.integers(10**6, 10**7)):07d}"
    if f.gen == "money":
        steps = int(round((f.max - f.min) / f.step))
        return int(round((f.min + f.step * int(rng.integers(steps + 1))) * 100))
    if f.gen == "int":
        steps = int(round((f.max - f.min) / f.step))
        return int(f.min + f.step * int(rng.integers(steps + 1)))
    if f.gen == "time":
        steps = int((f.max - f.min) // f.step)
        return _hhmm(int(f.min + f.step * int(rng.integers(steps + 1))))
    if f.gen == "choice":
        values = [v for v in f.values if not f.differs_from or v != row.get(f.differs_from)]
        return values[int(rng.integers(len(values)))]
    if f.gen == "name":
        return " ".join(ws.split("|")[int(rng.integers(len(ws.split("|"))))] for ws in f.words)
    raise ValueError(f.gen)


def _rows(t: TableSpec, n: int, rng: np.random.Generator, types: dict) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    seen: set = set()
    row_value = next((f for f in t.fields if f.gen == "row_value"), None)
    n = len(row_value.values) if row_value is not None else n
    key_fields = t.unique if t.role == "item" else ((t.key,) if t.role == "info" else ())
    for attempt in range(50 * n + 100):
        if len(rows) >= n:
            break
        i = len(rows)
        row: dict[str, Any] = {}
        for f in t.fields:
            row[column(f)] = row_value.values[i] if f is row_value else _gen_value(f, rng, row, i)
        if t.role == "item":
            for o in t.options:
                row[f"price_{o.name}_cents"] = int(rng.integers(int(o.price_min * 2), int(o.price_max * 2) + 1)) * 50
                row[f"stock_{o.name}"] = int(o.stock[int(rng.integers(len(o.stock)))])
        sig = tuple(row[k] for k in key_fields)
        if key_fields and sig in seen:
            continue
        seen.add(sig)
        rid = f"{t.prefix}{i + 1:05d}"
        rows[rid] = types[t.name](rid, **row)
    if len(rows) < n:
        raise ValueError(f"domain table {t.name}: could not draw {n} distinct rows on {list(key_fields)}")
    return rows


def generate_db(spec: DomainSpec, rng: np.random.Generator, size: int) -> DB:
    """The seeded database: main tables (user, item, order) of `size` rows unless the spec sets a size."""
    types = record_types(spec)
    db: DB = {}
    for t in spec.tables:
        if t.role != "order":
            db[t.name] = _rows(t, t.size or size, rng, types)
    user, item, order = spec.role("user"), spec.role("item"), spec.role("order")
    users, items = sorted(db[user.name]), sorted(db[item.name])
    orders = {}
    for i in range(order.size or size):
        it = db[item.name][items[int(rng.integers(len(items)))]]
        opt = item.options[int(rng.integers(len(item.options)))].name
        q = int(rng.integers(1, 4))
        oid = f"{order.prefix}{i + 1:05d}"
        row = {column(f): _gen_value(f, rng, {}, i) for f in order.fields}
        orders[oid] = types[order.name](
            oid, **row, **{user.id_field: users[int(rng.integers(len(users)))], item.id_field: getattr(it, item.id_field)},
            option=opt, quantity=q, total_cents=q * getattr(it, f"price_{opt}_cents"),
            status="cancelled" if rng.random() < order.cancelled_share else order.active)
    db[order.name] = orders
    return db


def rows_where(table: dict, filters: dict) -> list:
    """Rows whose fields equal `filters` (attrgetter: the scans are the hot loop of task synthesis)."""
    if not filters:
        return list(table.values())
    get_ = operator.attrgetter(*filters)
    want = tuple(filters.values()) if len(filters) > 1 else next(iter(filters.values()))
    return [r for r in table.values() if get_(r) == want]


# --------------------------------------------------------------------------------------------- tools
class Tools:
    """The tool implementations of one spec (closures over its tables); ``functions()`` -> FunctionSpecs."""

    def __init__(self, spec: DomainSpec):
        self.spec = spec
        self.user, self.item, self.order = spec.role("user"), spec.role("item"), spec.role("order")
        self.options = tuple(o.name for o in self.item.options)
        self.view_fields = tuple(dict.fromkeys(
            [f for t in spec.tools if t.kind == "search" for f in t.filters] + [t.sort for t in spec.tools
                                                                               if t.kind == "search"]))

    # ---- params
    def id_param(self, t: TableSpec) -> Param:
        return Param(t.id_field, "string", f"{t.noun.capitalize()} id, e.g. {t.prefix}00012.", ref=t.name)

    def option_param(self) -> Param:
        return Param("option", "string", f"Which {self.item.noun} option.", enum=self.options)

    def quantity_param(self) -> Param:
        return Param("quantity", "integer", f"Number of {self.spec.phrases.unit}s.", minimum=1, maximum=MAX_QUANTITY)

    # ---- views
    def order_view(self, db: DB, o) -> dict:
        it = db[self.item.name][getattr(o, self.item.id_field)]
        return {**record_dict(o), **{f: getattr(it, f) for f in self.view_fields if hasattr(it, f)}}

    def price(self, it, option: str) -> int:
        return getattr(it, f"price_{option}_cents")

    def stock(self, it, option: str) -> int:
        return getattr(it, f"stock_{option}")

    def with_stock(self, it, option: str, value: int):
        return dataclasses.replace(it, **{f"stock_{option}": value})

    def balance(self, u) -> int:
        return getattr(u, f"{self.user.balance}_cents")

    def with_balance(self, u, cents: int):
        return dataclasses.replace(u, **{f"{self.user.balance}_cents": cents})

    def sorted_search(self, db: DB, tool: ToolSpec, **filters) -> list:
        hits = rows_where(db[tool.table], filters)
        return sorted(hits, key=lambda r: (getattr(r, tool.sort if hasattr(r, tool.sort) else column(
            self.item.field(tool.sort))), getattr(r, self.item.id_field)))[:tool.limit]

    # ---- writes
    def create(self, db, user_id, item_id, option, quantity):
        u, it = get(db, self.user.name, user_id), get(db, self.item.name, item_id)
        if self.stock(it, option) < quantity:
            raise DomainError(f"{self.item.noun} {item_id} has only {self.stock(it, option)} {option} "
                              f"{self.spec.phrases.unit}s left")
        total = quantity * self.price(it, option)
        if self.balance(u) < total:
            raise DomainError(f"{self.spec.phrases.balance_word} balance {money_text(self.balance(u))} is below "
                              f"the price {money_text(total)}")
        oid = next_id(db, self.order.name, self.order.prefix)
        types = type(next(iter(db[self.order.name].values())))
        extra = {column(f): "" if f.gen not in ("money", "int") else 0 for f in self.order.fields}
        o = types(oid, **extra, **{self.user.id_field: user_id, self.item.id_field: item_id}, option=option,
                  quantity=quantity, total_cents=total, status=self.order.active)
        writes = ((self.order.name, oid, o), (self.item.name, item_id, self.with_stock(it, option, self.stock(it, option) - quantity)),
                  (self.user.name, user_id, self.with_balance(u, self.balance(u) - total)))
        return {self.order.id_field: oid, "total": money_text(total)}, writes

    def active_order(self, db, order_id):
        o = get(db, self.order.name, order_id)
        if o.status != self.order.active:
            raise DomainError(f"{self.order.noun} {order_id} is {o.status}")
        return o

    def cancel(self, db, order_id):
        o = self.active_order(db, order_id)
        it = db[self.item.name][getattr(o, self.item.id_field)]
        u = db[self.user.name][getattr(o, self.user.id_field)]
        writes = ((self.order.name, order_id, dataclasses.replace(o, status="cancelled")),
                  (self.item.name, getattr(it, self.item.id_field), self.with_stock(it, o.option, self.stock(it, o.option) + o.quantity)),
                  (self.user.name, getattr(u, self.user.id_field), self.with_balance(u, self.balance(u) + o.total_cents)))
        return {self.order.id_field: order_id, "refund": money_text(o.total_cents)}, writes

    def rebook(self, db, o, option: str, quantity: int):
        it = db[self.item.name][getattr(o, self.item.id_field)]
        u = db[self.user.name][getattr(o, self.user.id_field)]
        freed = self.with_stock(it, o.option, self.stock(it, o.option) + o.quantity)
        if self.stock(freed, option) < quantity:
            raise DomainError(f"{self.item.noun} {getattr(it, self.item.id_field)} has only "
                              f"{self.stock(freed, option)} {option} {self.spec.phrases.unit}s available")
        total = quantity * self.price(it, option)
        diff = total - o.total_cents
        if diff > self.balance(u):
            raise DomainError(f"{self.spec.phrases.balance_word} balance {money_text(self.balance(u))} is below the "
                              f"difference {money_text(diff)}")
        writes = ((self.order.name, getattr(o, self.order.id_field), dataclasses.replace(o, option=option, quantity=quantity, total_cents=total)),
                  (self.item.name, getattr(it, self.item.id_field), self.with_stock(freed, option, self.stock(freed, option) - quantity)),
                  (self.user.name, getattr(u, self.user.id_field), self.with_balance(u, self.balance(u) - diff)))
        return {self.order.id_field: getattr(o, self.order.id_field), "new_total": money_text(total),
                "charged": money_text(diff)}, writes

    def change_option(self, db, order_id, option):
        o = self.active_order(db, order_id)
        if o.option == option:
            raise DomainError(f"{self.order.noun} {order_id} is already {option}")
        return self.rebook(db, o, option, o.quantity)

    def change_quantity(self, db, order_id, quantity):
        o = self.active_order(db, order_id)
        if o.quantity == quantity:
            raise DomainError(f"{self.order.noun} {order_id} already has quantity {quantity}")
        return self.rebook(db, o, o.option, quantity)

    def set_field(self, field: str):
        def impl(db, user_id, value):
            u = get(db, self.user.name, user_id)
            if getattr(u, field) == value:
                raise DomainError(f"{field.replace('_', ' ')} of {self.user.noun} {user_id} is already {value}")
            return ({self.user.id_field: user_id, field: value},
                    ((self.user.name, user_id, dataclasses.replace(u, **{field: value})),))
        return impl

    def add_funds(self, db, user_id, amount):
        u = get(db, self.user.name, user_id)
        new = self.balance(u) + amount
        return ({self.user.id_field: user_id, "new_balance": money_text(new)},
                ((self.user.name, user_id, self.with_balance(u, new)),))

    # ---- function specs
    def functions(self) -> tuple[FunctionSpec, ...]:
        return tuple(self.function(t) for t in self.spec.tools)

    def function(self, t: ToolSpec) -> FunctionSpec:
        s, U, I, O = self.spec, self.user, self.item, self.order
        k = t.kind
        if k == "get":
            table = s.table(t.table)
            view = (lambda db, r: self.order_view(db, r)) if table.role == "order" else (lambda db, r: record_dict(r))
            return FunctionSpec(t.name, t.description, (self.id_param(table),),
                                lambda db, **a: (view(db, get(db, table.name, a[table.id_field])), ()))
        if k == "search":
            params = tuple(Param(f, "string", f"{f.replace('_', ' ').capitalize()}.", enum=I.field(f).values)
                           for f in t.filters)
            return FunctionSpec(t.name, t.description, params,
                                lambda db, **a: ([record_dict(r) for r in self.sorted_search(db, t, **a)], ()))
        if k == "find":
            table = s.table(t.table)
            key = table.field(table.key)
            p = Param(key.name, "string", f"{table.noun.capitalize()} {key.name}.",
                      enum=key.values if key.values else None)

            def find(db, **a):
                hits = [r for r in db[table.name].values() if getattr(r, key.name) == a[key.name]]
                if not hits:
                    raise DomainError(f"no {table.noun} with {key.name} {a[key.name]!r}")
                return [record_dict(r) for r in sorted(hits, key=lambda r: getattr(r, table.id_field))], ()
            return FunctionSpec(t.name, t.description, (p,), find)
        if k == "list_orders":
            def list_orders(db, **a):
                uid = get(db, U.name, a[U.id_field]) and a[U.id_field]
                mine = rows_where(db[O.name], {U.id_field: uid})
                return [self.order_view(db, o) for o in sorted(mine, key=lambda o: getattr(o, O.id_field))], ()
            return FunctionSpec(t.name, t.description, (self.id_param(U),), list_orders)
        if k == "create":
            return FunctionSpec(t.name, t.description, (self.id_param(U), self.id_param(I), self.option_param(),
                                                        self.quantity_param()),
                                lambda db, **a: self.create(db, a[U.id_field], a[I.id_field], a["option"], a["quantity"]),
                                write=True)
        if k == "cancel":
            return FunctionSpec(t.name, t.description, (self.id_param(O),),
                                lambda db, **a: self.cancel(db, a[O.id_field]), write=True)
        if k == "change_option":
            return FunctionSpec(t.name, t.description, (self.id_param(O), self.option_param()),
                                lambda db, **a: self.change_option(db, a[O.id_field], a["option"]), write=True)
        if k == "change_quantity":
            return FunctionSpec(t.name, t.description, (self.id_param(O), self.quantity_param()),
                                lambda db, **a: self.change_quantity(db, a[O.id_field], a["quantity"]), write=True)
        if k == "set_field":
            f = U.field(t.field)
            impl = self.set_field(t.field)
            return FunctionSpec(t.name, t.description,
                                (self.id_param(U), Param(t.field, "string", f"New {t.field.replace('_', ' ')}.", enum=f.values)),
                                lambda db, **a: impl(db, a[U.id_field], a[t.field]), write=True)
        if k == "add_funds":
            return FunctionSpec(t.name, t.description,
                                (self.id_param(U), Param("amount", "number", "Dollars to add.", minimum=1, maximum=1000, money=True)),
                                lambda db, **a: self.add_funds(db, a[U.id_field], a["amount"]), write=True)
        if k == "quote":
            def quote(db, **a):
                it = get(db, I.name, a[I.id_field])
                return {"total": money_text(a["quantity"] * self.price(it, a["option"]))}, ()
            return FunctionSpec(t.name, t.description, (self.id_param(I), self.option_param(), self.quantity_param()), quote)
        if k == "policy":
            return FunctionSpec(t.name, t.description, (), lambda db: ({"policy": s.policy}, ()))
        raise ValueError(f"unknown tool kind {k!r}")


def build_domain(spec: DomainSpec) -> tuple[Domain, Tools]:
    tools = Tools(spec)
    return Domain(spec.name, spec.description, tools.functions()), tools
