"""Declarative domain specs (YAML in ``envs/domains/*.yaml``): load and validate, errors naming the field.

A spec declares a domain's vocabulary, its tables (one ``user`` table of accounts with a money balance,
one ``item`` catalogue whose rows sell ``options`` with a price and a stock each, one ``order`` table of
purchases, and any number of read-only ``info`` tables), the tools (each of an engine *kind*, see
``engine.TOOL_KINDS``), the phrases the request texts are built from, and the request kinds with weights.
Everything else (database, tool implementations, JSON schemas, gold action programs) is built from it by
the engine, so adding a domain means adding a spec file.
"""
from __future__ import annotations

import dataclasses
import datetime
import re
import string
from pathlib import Path
from typing import Any, Mapping

import yaml

SPEC_DIR = Path(__file__).resolve().parents[1] / "domains"
ROLES = ("user", "item", "order", "info")
GENERATORS = ("person", "email", "phone", "money", "int", "choice", "time", "row_value", "name")
TOOL_KINDS = ("get", "search", "find", "list_orders", "create", "cancel", "change_option", "change_quantity",
              "set_field", "add_funds", "quote", "policy")
REQUEST_KINDS = ("book", "book_conditional", "cancel", "change_option", "change_quantity", "update_profile",
                 "add_funds", "lookup_item", "lookup_info")
# tool kinds each request kind's gold program calls
REQUEST_TOOLS = {"book": ("search", "create"), "book_conditional": ("search", "create"),
                 "cancel": ("list_orders", "cancel"), "change_option": ("get:order", "change_option"),
                 "change_quantity": ("get:order", "change_quantity"), "update_profile": ("get:user", "set_field"),
                 "add_funds": ("add_funds",), "lookup_item": ("get:item",), "lookup_info": ("find",)}
MIN_TOOLS, MAX_TOOLS = 14, 25


class SpecError(ValueError):
    """A domain spec is invalid; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    name: str
    gen: str
    values: tuple[str, ...] = ()          # choice: the values (from `values` or a vocab)
    min: float = 0.0
    max: float = 0.0
    step: float = 1.0                     # money: dollars grid; time: minutes grid
    differs_from: str = ""                # choice: never equal to this field of the same row
    words: tuple[str, ...] = ()           # name: word lists joined ("Golden Fork")

    @property
    def money(self) -> bool:
        return self.gen == "money"


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    name: str
    price_min: float
    price_max: float
    stock: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    role: str
    prefix: str
    noun: str
    size: int                              # rows; 0 = db_size (main tables) or one per row_value (info)
    fields: tuple[FieldSpec, ...]
    options: tuple[OptionSpec, ...] = ()   # item
    unique: tuple[str, ...] = ()           # item: no two rows share these fields
    balance: str = ""                      # user: money field paid from
    key: str = ""                          # info: the field `find` looks rows up by
    active: str = "confirmed"              # order: status of a live order
    cancelled_share: float = 0.15          # order: share of generated orders already cancelled

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def id_field(self) -> str:
        return f"{self.noun.replace(' ', '_')}_id"


@dataclasses.dataclass(frozen=True)
class ToolSpec:
    name: str
    kind: str
    description: str
    table: str = ""
    filters: tuple[str, ...] = ()          # search
    sort: str = ""                         # search
    field: str = ""                        # set_field
    limit: int = 10                        # search: most rows returned


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    kind: str
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class Phrases:
    item_filter: str                       # "from {origin} to {destination} on {date}"
    at: str                                # "departing at {departure}" (the sort field's value)
    sort_word: str                         # "earliest"
    unit: str                              # "seat"
    balance_word: str                      # "wallet"
    lookup: Mapping[str, str]              # item field -> "travel time in minutes"
    info_questions: Mapping[str, str]      # info field -> "How many platforms does {name} have?"
    distractors: tuple[str, ...]           # sentences that never change the gold actions


@dataclasses.dataclass(frozen=True)
class DomainSpec:
    name: str
    description: str
    policy: str
    tables: tuple[TableSpec, ...]
    tools: tuple[ToolSpec, ...]
    phrases: Phrases
    requests: tuple[RequestSpec, ...]
    source: str = ""

    def table(self, name: str) -> TableSpec:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)

    def role(self, role: str) -> TableSpec:
        return next(t for t in self.tables if t.role == role)

    def tool_of(self, kind: str) -> ToolSpec:
        """The tool of a request step: 'search' = the search on the item filters, 'get:order' = get on the
        order table, else the first tool of that kind."""
        kind, _, role = kind.partition(":")
        for t in self.tools:
            if t.kind != kind:
                continue
            if role and self.table(t.table).role != role:
                continue
            if kind == "search" and set(t.filters) != set(placeholders(self.phrases.item_filter)):
                continue
            return t
        raise KeyError(kind + (":" + role if role else ""))


# ------------------------------------------------------------------------------------------- parsing
def placeholders(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


class _Reader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, msg: str):
        raise SpecError(f"domain spec {self.source}: {where}: {msg}")

    def mapping(self, d: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        if not isinstance(d, Mapping):
            self.fail(where, f"must be a mapping, got {type(d).__name__}")
        unknown = sorted(str(k) for k in d if k not in required + optional)
        if unknown:
            self.fail(where, f"unknown key(s) {unknown}; allowed {sorted(required + optional)}")
        missing = [k for k in required if k not in d]
        if missing:
            self.fail(where, f"missing key(s) {missing}")
        return dict(d)

    def text(self, v: Any, where: str) -> str:
        if not isinstance(v, str) or not v.strip():
            self.fail(where, f"must be a non-empty string, got {v!r}")
        return v

    def ident(self, v: Any, where: str) -> str:
        if not isinstance(v, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", v):
            self.fail(where, f"must be a lower-case identifier, got {v!r}")
        return v

    def number(self, v: Any, where: str, lo: float | None = None) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(where, f"must be a number, got {v!r}")
        if lo is not None and v < lo:
            self.fail(where, f"must be >= {lo}, got {v}")
        return float(v)

    def str_list(self, v: Any, where: str, min_len: int = 1) -> tuple[str, ...]:
        if not isinstance(v, list) or len(v) < min_len or not all(isinstance(x, (str, int, float, datetime.date)) for x in v):
            self.fail(where, f"must be a list of at least {min_len} values, got {v!r}")
        out = tuple(str(x) for x in v)
        if len(set(out)) != len(out):
            self.fail(where, f"has duplicate values {sorted(x for x in set(out) if out.count(x) > 1)}")
        return out


def _time_minutes(r: _Reader, v: Any, where: str) -> int:
    if not isinstance(v, str) or not re.fullmatch(r"\d\d:\d\d", v):
        r.fail(where, f"must be a time 'HH:MM', got {v!r}")
    return int(v[:2]) * 60 + int(v[3:])


def _field(r: _Reader, name: str, d: Any, where: str, vocab: Mapping[str, tuple[str, ...]]) -> FieldSpec:
    d = r.mapping(d, where, ("gen",), ("values", "vocab", "min", "max", "step", "differs_from", "words"))
    gen = d["gen"]
    if gen not in GENERATORS:
        r.fail(f"{where}.gen", f"unknown generator {gen!r}; known {list(GENERATORS)}")
    kw: dict[str, Any] = {}
    if gen in ("choice", "row_value"):
        if ("values" in d) == ("vocab" in d):
            r.fail(where, f"a {gen} field needs exactly one of 'values' or 'vocab'")
        if "vocab" in d:
            if d["vocab"] not in vocab:
                r.fail(f"{where}.vocab", f"unknown vocab {d['vocab']!r}; known {sorted(vocab)}")
            kw["values"] = vocab[d["vocab"]]
        else:
            kw["values"] = r.str_list(d["values"], f"{where}.values", 2)
        kw["differs_from"] = str(d.get("differs_from", ""))
    elif gen in ("money", "int"):
        for k in ("min", "max"):
            if k not in d:
                r.fail(where, f"a {gen} field needs 'min' and 'max'")
        lo = 0 if gen == "money" else None  # money is never negative; counts and readings may be
        kw["min"], kw["max"] = r.number(d["min"], f"{where}.min", lo), r.number(d["max"], f"{where}.max", lo)
        if kw["max"] <= kw["min"]:
            r.fail(f"{where}.max", f"must be > min ({kw['min']}), got {kw['max']}")
        kw["step"] = r.number(d.get("step", 1), f"{where}.step", 0.01)
    elif gen == "time":
        kw["min"], kw["max"] = _time_minutes(r, d.get("min"), f"{where}.min"), _time_minutes(r, d.get("max"), f"{where}.max")
        if kw["max"] <= kw["min"]:
            r.fail(f"{where}.max", "must be later than min")
        kw["step"] = r.number(d.get("step", 15), f"{where}.step", 1)
    elif gen == "name":
        words = d.get("words")
        if not isinstance(words, list) or len(words) < 2:
            r.fail(f"{where}.words", "a name field needs a list of >= 2 word lists (vocab names or lists)")
        lists = []
        for k, w in enumerate(words):
            if isinstance(w, str):
                if w not in vocab:
                    r.fail(f"{where}.words[{k}]", f"unknown vocab {w!r}; known {sorted(vocab)}")
                lists.append(vocab[w])
            else:
                lists.append(r.str_list(w, f"{where}.words[{k}]", 2))
        kw["words"] = tuple("|".join(x) for x in lists)
    return FieldSpec(name=name, gen=gen, **kw)


def _table(r: _Reader, name: str, d: Any, vocab) -> TableSpec:
    where = f"tables.{name}"
    r.ident(name, where)
    d = r.mapping(d, where, ("role", "prefix", "noun", "fields"),
                  ("size", "options", "unique", "balance", "key", "active", "cancelled_share"))
    role = d["role"]
    if role not in ROLES:
        r.fail(f"{where}.role", f"must be one of {list(ROLES)}, got {role!r}")
    prefix = d["prefix"]
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Z]{2}", prefix):
        r.fail(f"{where}.prefix", f"must be two capital letters, got {prefix!r}")
    fields_d = d["fields"] if role != "order" else (d["fields"] or {})
    if not isinstance(fields_d, Mapping) or (role != "order" and not fields_d):
        r.fail(f"{where}.fields", "must be a non-empty mapping of field name -> generator")
    fields = tuple(_field(r, r.ident(k, f"{where}.fields.{k}"), v, f"{where}.fields.{k}", vocab)
                   for k, v in fields_d.items())
    names = [f.name for f in fields]
    for f in fields:
        if f.differs_from and f.differs_from not in names:
            r.fail(f"{where}.fields.{f.name}.differs_from", f"no field {f.differs_from!r} in this table")
    kw: dict[str, Any] = {"size": int(r.number(d.get("size", 0), f"{where}.size", 0))}
    if role == "item":
        opts = d.get("options")
        if not isinstance(opts, Mapping) or len(opts) < 2:
            r.fail(f"{where}.options", "an item table needs a mapping of >= 2 options (name -> price, stock)")
        kw["options"] = tuple(_option(r, r.ident(k, f"{where}.options.{k}"), v, f"{where}.options.{k}")
                              for k, v in opts.items())
        kw["unique"] = r.str_list(d.get("unique", names[:1]), f"{where}.unique")
        for u in kw["unique"]:
            if u not in names:
                r.fail(f"{where}.unique", f"no field {u!r} in this table")
    if role == "user":
        bal = d.get("balance")
        if bal not in names or not next(f for f in fields if f.name == bal).money:
            r.fail(f"{where}.balance", f"must name a money field of the table, got {bal!r}")
        kw["balance"] = bal
    if role == "info":
        key = d.get("key")
        if key not in names or next(f for f in fields if f.name == key).gen not in ("row_value", "name"):
            r.fail(f"{where}.key", f"must name a row_value or name field of the table, got {key!r}")
        kw["key"] = key
    if role == "order":
        kw["active"] = r.ident(d.get("active", "confirmed"), f"{where}.active")
        share = r.number(d.get("cancelled_share", 0.15), f"{where}.cancelled_share", 0)
        if share >= 1:
            r.fail(f"{where}.cancelled_share", f"must be < 1, got {share}")
        kw["cancelled_share"] = share
    row_values = [f for f in fields if f.gen == "row_value"]
    if row_values and (role != "info" or len(row_values) > 1):
        r.fail(where, "row_value fields are allowed only once, in info tables")
    return TableSpec(name=name, role=role, prefix=prefix, noun=r.text(d["noun"], f"{where}.noun"),
                     fields=fields, **kw)


def _option(r: _Reader, name: str, d: Any, where: str) -> OptionSpec:
    d = r.mapping(d, where, ("price", "stock"))
    p = r.mapping(d["price"], f"{where}.price", ("min", "max"))
    lo, hi = r.number(p["min"], f"{where}.price.min", 0.01), r.number(p["max"], f"{where}.price.max", 0.01)
    if hi <= lo:
        r.fail(f"{where}.price.max", f"must be > min ({lo}), got {hi}")
    stock = d["stock"]
    if not isinstance(stock, list) or len(stock) < 2 or not all(isinstance(s, int) and s >= 0 for s in stock):
        r.fail(f"{where}.stock", f"must be a list of >= 2 non-negative integers, got {stock!r}")
    return OptionSpec(name, lo, hi, tuple(stock))


def spec_from_dict(d: Any, source: str = "<dict>") -> DomainSpec:
    """Validates a spec's YAML structure; SpecError names `source` and the offending field."""
    r = _Reader(source)
    d = r.mapping(d, "spec", ("name", "description", "tables", "tools", "phrases", "requests"), ("vocab", "policy"))
    name = r.ident(d["name"], "name")
    vocab_d = d.get("vocab", {}) or {}
    if not isinstance(vocab_d, Mapping):
        r.fail("vocab", "must be a mapping of name -> list of values")
    vocab = {k: r.str_list(v, f"vocab.{k}", 2) for k, v in vocab_d.items()}
    if not isinstance(d["tables"], Mapping):
        r.fail("tables", "must be a mapping of table name -> table")
    tables = tuple(_table(r, k, v, vocab) for k, v in d["tables"].items())
    for role in ("user", "item", "order", "info"):
        n = sum(t.role == role for t in tables)
        if (role == "info" and n < 1) or (role != "info" and n != 1):
            r.fail("tables", f"needs {'at least one' if role == 'info' else 'exactly one'} table with role "
                             f"{role!r}, has {n}")
    prefixes = [t.prefix for t in tables]
    if len(set(prefixes)) != len(prefixes):
        r.fail("tables", f"table prefixes must differ, got {prefixes}")
    by_name = {t.name: t for t in tables}
    item = next(t for t in tables if t.role == "item")
    info = [t for t in tables if t.role == "info"]
    # phrases
    p = r.mapping(d["phrases"], "phrases", ("item_filter", "at", "sort_word", "unit", "balance_word", "lookup",
                                             "info_questions", "distractors"))
    item_fields = [f.name for f in item.fields]
    enum_fields = [f.name for f in item.fields if f.gen == "choice"]
    for ph in ("item_filter", "at"):
        r.text(p[ph], f"phrases.{ph}")
        for ph_field in placeholders(p[ph]):
            if ph_field not in (enum_fields if ph == "item_filter" else item_fields):
                r.fail(f"phrases.{ph}", f"placeholder {{{ph_field}}} is not a{' choice' if ph == 'item_filter' else 'n'}"
                                        f" field of table {item.name}")
    at_fields = placeholders(p["at"])
    if len(at_fields) != 1:
        r.fail("phrases.at", f"must have exactly one placeholder (the sort field), got {at_fields}")
    lookup = r.mapping(p["lookup"], "phrases.lookup", (), tuple(item_fields))
    if not lookup:
        r.fail("phrases.lookup", "must name at least one item field")
    questions = {}
    info_fields = {f.name for t in info for f in t.fields}
    qd = p["info_questions"]
    if not isinstance(qd, Mapping) or not qd:
        r.fail("phrases.info_questions", "must be a non-empty mapping of info field -> question")
    for k, q in qd.items():
        if k not in info_fields:
            r.fail(f"phrases.info_questions.{k}", f"not a field of an info table; known {sorted(info_fields)}")
        r.text(q, f"phrases.info_questions.{k}")
        ks = placeholders(q)
        keys = {t.key for t in info}
        if len(ks) != 1 or ks[0] not in keys:
            r.fail(f"phrases.info_questions.{k}", f"must have one placeholder naming an info table's key {sorted(keys)}")
        questions[str(k)] = q
    phrases = Phrases(item_filter=p["item_filter"], at=p["at"], sort_word=r.text(p["sort_word"], "phrases.sort_word"),
                      unit=r.text(p["unit"], "phrases.unit"), balance_word=r.text(p["balance_word"], "phrases.balance_word"),
                      lookup={str(k): r.text(v, f"phrases.lookup.{k}") for k, v in lookup.items()},
                      info_questions=questions, distractors=r.str_list(p["distractors"], "phrases.distractors", 2))
    # tools
    if not isinstance(d["tools"], list):
        r.fail("tools", "must be a list of tools")
    tools, seen = [], set()
    for k, td in enumerate(d["tools"]):
        where = f"tools[{k}]"
        td = r.mapping(td, where, ("name", "kind", "description"), ("table", "filters", "sort", "field", "limit"))
        tname = r.ident(td["name"], f"{where}.name")
        if tname in seen or tname in ("call_expert", "respond"):
            r.fail(f"{where}.name", f"tool name {tname!r} is used twice or reserved")
        seen.add(tname)
        kind = td["kind"]
        if kind not in TOOL_KINDS:
            r.fail(f"{where}.kind", f"unknown tool kind {kind!r}; known {list(TOOL_KINDS)}")
        table = td.get("table", {"search": item.name, "create": item.name, "quote": item.name,
                                 "set_field": "", "add_funds": "", "list_orders": ""}.get(kind, ""))
        if kind in ("get", "find", "search") and table not in by_name:
            r.fail(f"{where}.table", f"unknown table {table!r}; known {sorted(by_name)}")
        if kind == "find" and by_name[table].role != "info":
            r.fail(f"{where}.table", f"find looks up info tables, {table!r} is a {by_name[table].role} table")
        if kind == "search" and by_name[table].role != "item":
            r.fail(f"{where}.table", f"search runs on the item table {item.name!r}, got {table!r}")
        kw: dict[str, Any] = {"table": table}
        if kind == "search":
            kw["filters"] = r.str_list(td.get("filters"), f"{where}.filters")
            for f in kw["filters"]:
                if f not in enum_fields:
                    r.fail(f"{where}.filters", f"{f!r} is not a choice field of {item.name}; choice fields {enum_fields}")
            kw["sort"] = td.get("sort", at_fields[0])
            if kw["sort"] not in item_fields:
                r.fail(f"{where}.sort", f"{kw['sort']!r} is not a field of {item.name}")
            kw["limit"] = int(r.number(td.get("limit", 10), f"{where}.limit", 1))
        if kind == "set_field":
            user = next(t for t in tables if t.role == "user")
            fld = td.get("field")
            if fld not in [f.name for f in user.fields if f.gen == "choice"]:
                r.fail(f"{where}.field", f"must name a choice field of the user table {user.name}, got {fld!r}")
            kw["field"] = fld
        tools.append(ToolSpec(name=tname, kind=kind, description=r.text(td["description"], f"{where}.description"), **kw))
    if not MIN_TOOLS <= len(tools) <= MAX_TOOLS:
        r.fail("tools", f"a domain has {MIN_TOOLS}-{MAX_TOOLS} tools, got {len(tools)}")
    # requests
    if not isinstance(d["requests"], list) or not d["requests"]:
        r.fail("requests", "must be a non-empty list of request kinds")
    requests = []
    for k, rd in enumerate(d["requests"]):
        rd = r.mapping(rd, f"requests[{k}]", ("kind",), ("weight",))
        if rd["kind"] not in REQUEST_KINDS:
            r.fail(f"requests[{k}].kind", f"unknown request kind {rd['kind']!r}; known {list(REQUEST_KINDS)}")
        requests.append(RequestSpec(rd["kind"], r.number(rd.get("weight", 1.0), f"requests[{k}].weight", 0.0)))
    spec = DomainSpec(name=name, description=r.text(d["description"], "description"),
                      policy=str(d.get("policy", "No special policy.")), tables=tables, tools=tuple(tools),
                      phrases=phrases, requests=tuple(requests), source=source)
    for k, req in enumerate(requests):
        for step in REQUEST_TOOLS[req.kind]:
            try:
                spec.tool_of(step)
            except KeyError:
                r.fail(f"requests[{k}]", f"request kind {req.kind!r} needs a tool of kind {step!r}"
                                         + (f" filtering on {placeholders(phrases.item_filter)}" if step == "search" else ""))
    return spec


def load_spec(name_or_path: str) -> DomainSpec:
    """A spec by domain name (``envs/domains/<name>.yaml``) or by path; SpecError naming the problem."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = SPEC_DIR / f"{name_or_path}.yaml"
        if not p.exists():
            known = sorted(x.stem for x in SPEC_DIR.glob("*.yaml"))
            raise SpecError(f"unknown function-calling domain {name_or_path!r}; known: {known}")
    if not p.exists():
        raise SpecError(f"domain spec file not found: {p}")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SpecError(f"domain spec {p.name}: not valid YAML ({e})") from None
    return spec_from_dict(d, p.name)


def known_domains() -> list[str]:
    return sorted(x.stem for x in SPEC_DIR.glob("*.yaml"))
