"""Finance domain: customers, bank accounts (integer cents), cards, transactions."""

from __future__ import annotations

import dataclasses

import numpy as np

from orchestra_jax.envs.domains.base import (
    DB, Action, Domain, DomainError, FunctionSpec, Intent, Param, get, money_text, next_id, pick,
    record_dict,
)

KINDS = ("checking", "savings")
BLOCK_REASONS = ("lost", "stolen", "fraud")
MERCHANTS = ("GroceryMart", "CityFuel", "StreamFlix", "BookNook", "CafeAroma", "TechStore", "AirGo",
             "PharmaPlus", "GymOne", "HomeDepot")
DATES = tuple(f"2026-02-{d:02d}" for d in range(1, 29))
FIRST_NAMES = ("Aiden", "Bella", "Carlos", "Diana", "Ethan", "Fiona", "George", "Helen", "Ivan", "Julia",
               "Kevin", "Laura", "Mason", "Nora", "Owen", "Priya")
LAST_NAMES = ("Brown", "Clark", "Davis", "Evans", "Garcia", "Hill", "Jones", "King", "Lopez", "Miller",
              "Nguyen", "Patel")


@dataclasses.dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str
    city: str


@dataclasses.dataclass(frozen=True)
class Account:
    account_id: str
    customer_id: str
    kind: str
    balance_cents: int
    status: str  # active | frozen


@dataclasses.dataclass(frozen=True)
class Card:
    card_id: str
    account_id: str
    last4: str
    status: str  # active | blocked
    block_reason: str  # none | lost | stolen | fraud
    daily_limit_cents: int


@dataclasses.dataclass(frozen=True)
class Transaction:
    txn_id: str
    account_id: str
    date: str
    merchant: str
    amount_cents: int  # negative: money out
    status: str  # posted | disputed


# ---- functions -------------------------------------------------------------------------------
def get_customer(db, customer_id):
    return record_dict(get(db, "customers", customer_id)), ()


def list_accounts(db, customer_id):
    get(db, "customers", customer_id)
    mine = sorted((a for a in db["accounts"].values() if a.customer_id == customer_id), key=lambda a: a.account_id)
    return [record_dict(a) for a in mine], ()


def get_account(db, account_id):
    return record_dict(get(db, "accounts", account_id)), ()


def list_transactions(db, account_id):
    get(db, "accounts", account_id)
    mine = sorted((t for t in db["transactions"].values() if t.account_id == account_id),
                  key=lambda t: (t.date, t.txn_id))
    return [record_dict(t) for t in mine], ()


def list_cards(db, customer_id):
    get(db, "customers", customer_id)
    accounts = {a.account_id for a in db["accounts"].values() if a.customer_id == customer_id}
    mine = sorted((c for c in db["cards"].values() if c.account_id in accounts), key=lambda c: c.card_id)
    return [record_dict(c) for c in mine], ()


def get_card(db, card_id):
    return record_dict(get(db, "cards", card_id)), ()


def transfer(db, from_account_id, to_account_id, amount):
    src, dst = get(db, "accounts", from_account_id), get(db, "accounts", to_account_id)
    if from_account_id == to_account_id:
        raise DomainError("source and destination accounts are the same")
    for a in (src, dst):
        if a.status != "active":
            raise DomainError(f"account {a.account_id} is {a.status}")
    if src.balance_cents < amount:
        raise DomainError(f"insufficient funds: balance {money_text(src.balance_cents)}")
    out_id = next_id(db, "transactions", "TX")
    in_id = f"TX{int(out_id[2:]) + 1:05d}"
    writes = (
        ("accounts", src.account_id, dataclasses.replace(src, balance_cents=src.balance_cents - amount)),
        ("accounts", dst.account_id, dataclasses.replace(dst, balance_cents=dst.balance_cents + amount)),
        ("transactions", out_id, Transaction(out_id, src.account_id, "2026-03-01", f"transfer to {dst.account_id}",
                                             -amount, "posted")),
        ("transactions", in_id, Transaction(in_id, dst.account_id, "2026-03-01",
                                            f"transfer from {src.account_id}", amount, "posted")),
    )
    return {"transaction_id": out_id, "new_balance": money_text(src.balance_cents - amount)}, writes


def block_card(db, card_id, reason):
    c = get(db, "cards", card_id)
    if c.status == "blocked":
        raise DomainError(f"card {card_id} is already blocked")
    return {"card_id": card_id, "status": "blocked"}, (
        ("cards", card_id, dataclasses.replace(c, status="blocked", block_reason=reason)),)


def set_card_limit(db, card_id, daily_limit):
    c = get(db, "cards", card_id)
    if c.status != "active":
        raise DomainError(f"card {card_id} is {c.status}")
    if c.daily_limit_cents == daily_limit:
        raise DomainError(f"card {card_id} already has that limit")
    return {"card_id": card_id, "daily_limit": money_text(daily_limit)}, (
        ("cards", card_id, dataclasses.replace(c, daily_limit_cents=daily_limit)),)


def dispute_transaction(db, txn_id):
    t = get(db, "transactions", txn_id)
    if t.status != "posted":
        raise DomainError(f"transaction {txn_id} is {t.status}")
    if t.amount_cents >= 0:
        raise DomainError(f"transaction {txn_id} is a credit; only charges can be disputed")
    return {"txn_id": txn_id, "status": "disputed"}, (
        ("transactions", txn_id, dataclasses.replace(t, status="disputed")),)


def freeze_account(db, account_id):
    a = get(db, "accounts", account_id)
    if a.status != "active":
        raise DomainError(f"account {account_id} is {a.status}")
    return {"account_id": account_id, "status": "frozen"}, (
        ("accounts", account_id, dataclasses.replace(a, status="frozen")),)


_CUST = Param("customer_id", "string", "Customer id, e.g. CU00012.", ref="customers")
_ACC = Param("account_id", "string", "Account id, e.g. AC00101.", ref="accounts")
_CARD = Param("card_id", "string", "Card id, e.g. CD00020.", ref="cards")


class Finance(Domain):
    name = "finance"
    description = "You are a retail bank assistant. Amounts are in dollars with two decimals."
    functions = (
        FunctionSpec("get_customer", "Customer profile.", (_CUST,), get_customer),
        FunctionSpec("list_accounts", "All accounts of a customer with balances.", (_CUST,), list_accounts),
        FunctionSpec("get_account", "One account.", (_ACC,), get_account),
        FunctionSpec("list_transactions", "Transactions of an account, oldest first.", (_ACC,), list_transactions),
        FunctionSpec("list_cards", "All cards of a customer.", (_CUST,), list_cards),
        FunctionSpec("get_card", "One card.", (_CARD,), get_card),
        FunctionSpec("transfer", "Move money between two active accounts.",
                     (Param("from_account_id", "string", "Source account id.", ref="accounts"),
                      Param("to_account_id", "string", "Destination account id.", ref="accounts"),
                      Param("amount", "number", "Amount in dollars (two decimals).", minimum=0.01,
                            maximum=1e7, money=True)), transfer, write=True),
        FunctionSpec("block_card", "Block a card.", (_CARD, Param("reason", "string", "Why.", enum=BLOCK_REASONS)),
                     block_card, write=True),
        FunctionSpec("set_card_limit", "Set the daily spending limit of an active card.",
                     (_CARD, Param("daily_limit", "number", "Limit in dollars.", minimum=50, maximum=10000,
                                   money=True)), set_card_limit, write=True),
        FunctionSpec("dispute_transaction", "Dispute a posted charge.",
                     (Param("txn_id", "string", "Transaction id, e.g. TX00321.", ref="transactions"),),
                     dispute_transaction, write=True),
        FunctionSpec("freeze_account", "Freeze an active account.", (_ACC,), freeze_account, write=True),
    )

    def generate_db(self, rng: np.random.Generator, size: int) -> DB:
        customers, accounts, cards, txns = {}, {}, {}, {}
        for i in range(size):
            cid = f"CU{i + 1:05d}"
            customers[cid] = Customer(cid, f"{pick(rng, FIRST_NAMES)} {pick(rng, LAST_NAMES)}",
                                      pick(rng, ("Boston", "Denver", "Austin", "Seattle")))
            kinds = ("checking", "savings") if rng.random() < 0.6 else ("checking",)
            for kind in kinds:
                aid = f"AC{len(accounts) + 1:05d}"
                status = "frozen" if rng.random() < 0.05 else "active"
                accounts[aid] = Account(aid, cid, kind, int(rng.integers(0, 800_000)), status)
                if kind == "checking":
                    for _ in range(int(rng.integers(1, 3))):
                        kid = f"CD{len(cards) + 1:05d}"
                        blocked = rng.random() < 0.1
                        cards[kid] = Card(kid, aid, f"{int(rng.integers(10000)):04d}",
                                          "blocked" if blocked else "active", "lost" if blocked else "none",
                                          int(rng.choice([500, 1000, 2000, 5000])) * 100)
                for _ in range(int(rng.integers(1, 5))):
                    tid = f"TX{len(txns) + 1:05d}"
                    txns[tid] = Transaction(tid, aid, pick(rng, DATES), pick(rng, MERCHANTS),
                                            -int(rng.integers(100, 40_000)),
                                            "disputed" if rng.random() < 0.05 else "posted")
        return {"customers": customers, "accounts": accounts, "cards": cards, "transactions": txns}

    def pick_user(self, db: DB, rng: np.random.Generator) -> str:
        return pick(rng, sorted(db["customers"]))

    def greeting(self, db: DB, user: str) -> str:
        return f"Hi, {db['customers'][user].name} here, my customer id is {user}."

    @property
    def intents(self):
        return (self._transfer, self._block, self._limit, self._dispute, self._freeze)

    def _accounts(self, db, user):
        return {a.kind: a for a in db["accounts"].values() if a.customer_id == user}

    def _transfer(self, db, rng, user, used):
        acc = self._accounts(db, user)
        if len(acc) != 2 or any(a.account_id in used for a in acc.values()):
            return None
        src, dst = (acc["checking"], acc["savings"]) if rng.random() < 0.5 else (acc["savings"], acc["checking"])
        if src.balance_cents < 200 or src.status != "active" or dst.status != "active":
            return None
        amount = int(rng.integers(1, src.balance_cents // 100)) * 100 if rng.random() < 0.7 else \
            int(rng.integers(1, src.balance_cents))
        used.update((src.account_id, dst.account_id))
        text = f"Transfer ${money_text(amount)} from my {src.kind} account to my {dst.kind} account."
        facts = ()
        if rng.random() < 0.5:
            text += f" What is my {src.kind} balance afterwards?"
            facts = (money_text(src.balance_cents - amount),)
        return Intent(text, (Action("list_accounts", {"customer_id": user}),
                             Action("transfer", {"from_account_id": src.account_id,
                                                 "to_account_id": dst.account_id, "amount": amount / 100})), facts)

    def _my_cards(self, db, user, used):
        acc = {a.account_id for a in db["accounts"].values() if a.customer_id == user}
        return [c for c in db["cards"].values() if c.account_id in acc and c.status == "active"
                and c.card_id not in used]

    def _block(self, db, rng, user, used):
        cards = self._my_cards(db, user, used)
        if not cards:
            return None
        c = pick(rng, cards)
        if sum(x.last4 == c.last4 for x in self._my_cards(db, user, set())) != 1:
            return None
        reason = pick(rng, BLOCK_REASONS)
        used.add(c.card_id)
        why = {"lost": "I lost it", "stolen": "it was stolen", "fraud": "I see fraudulent charges on it"}[reason]
        return Intent(f"Block my card ending in {c.last4}, {why}.",
                      (Action("list_cards", {"customer_id": user}),
                       Action("block_card", {"card_id": c.card_id, "reason": reason})))

    def _limit(self, db, rng, user, used):
        cards = self._my_cards(db, user, used)
        if not cards:
            return None
        c = pick(rng, cards)
        if sum(x.last4 == c.last4 for x in self._my_cards(db, user, set())) != 1:
            return None
        limit = int(rng.choice([300, 750, 1500, 2500, 4000])) * 100
        if limit == c.daily_limit_cents:
            return None
        used.add(c.card_id)
        text = f"Set the daily limit of my card ending in {c.last4} to ${money_text(limit)}."
        facts = ()
        if rng.random() < 0.5:
            text += " What was the old limit?"
            facts = (money_text(c.daily_limit_cents),)
        return Intent(text, (Action("list_cards", {"customer_id": user}),
                             Action("set_card_limit", {"card_id": c.card_id, "daily_limit": limit / 100})), facts)

    def _dispute(self, db, rng, user, used):
        acc = self._accounts(db, user)
        a = acc.get("checking")
        if a is None:
            return None
        txns = [t for t in db["transactions"].values()
                if t.account_id == a.account_id and t.status == "posted" and t.amount_cents < 0
                and t.txn_id not in used]
        if not txns:
            return None
        t = pick(rng, txns)
        if sum((x.merchant, x.date) == (t.merchant, t.date) for x in txns) != 1:
            return None
        used.add(t.txn_id)
        text = f"I do not recognise the {t.merchant} charge of {t.date} on my checking account; please dispute it."
        facts = ()
        if rng.random() < 0.5:
            text += " Remind me how much it was."
            facts = (money_text(-t.amount_cents),)
        return Intent(text, (Action("list_accounts", {"customer_id": user}),
                             Action("list_transactions", {"account_id": a.account_id}),
                             Action("dispute_transaction", {"txn_id": t.txn_id})), facts)

    def _freeze(self, db, rng, user, used):
        acc = self._accounts(db, user)
        a = acc.get("savings")
        if a is None or a.status != "active" or a.account_id in used:
            return None
        used.add(a.account_id)
        text = "Please freeze my savings account for now."
        facts = ()
        if rng.random() < 0.5:
            text += " Tell me its current balance."
            facts = (money_text(a.balance_cents),)
        return Intent(text, (Action("list_accounts", {"customer_id": user}),
                             Action("freeze_account", {"account_id": a.account_id})), facts)

    def distractor(self, db, rng, user, used):
        disputed = {db["transactions"][k].merchant for k in used if k in db["transactions"]}
        m = pick(rng, [x for x in MERCHANTS if x not in disputed])
        if rng.random() < 0.5:
            return f"The {m} payments are all fine, leave them alone."
        return "I was also thinking about a mortgage, but we can talk about that another day."
