"""Railway domain: trains, customers with a wallet, seat bookings."""

from __future__ import annotations

import dataclasses

import numpy as np

from orchestra_jax.envs.domains.base import (
    DB, Action, Domain, DomainError, FunctionSpec, Intent, Param, get, money_text, next_id, pick,
    record_dict,
)

STATIONS = ("Berlin", "Munich", "Hamburg", "Cologne", "Frankfurt", "Stuttgart")
DATES = ("2026-03-10", "2026-03-11", "2026-03-12")
CABINS = ("economy", "first")
FIRST_NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hannah", "Jonas", "Lena",
               "Max", "Mia", "Noah", "Paul", "Sophie", "Tom")
LAST_NAMES = ("Becker", "Fischer", "Hoffmann", "Koch", "Meyer", "Richter", "Schmidt", "Schulz",
              "Wagner", "Weber", "Wolf", "Zimmermann")


@dataclasses.dataclass(frozen=True)
class Train:
    train_id: str
    origin: str
    destination: str
    date: str
    departure: str
    arrival: str
    price_economy_cents: int
    price_first_cents: int
    seats_economy: int
    seats_first: int


@dataclasses.dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str
    email: str
    wallet_cents: int


@dataclasses.dataclass(frozen=True)
class Booking:
    booking_id: str
    customer_id: str
    train_id: str
    cabin: str
    seats: int
    total_cents: int
    status: str


def _price(train: Train, cabin: str) -> int:
    return train.price_economy_cents if cabin == "economy" else train.price_first_cents


def _seats(train: Train, cabin: str) -> int:
    return train.seats_economy if cabin == "economy" else train.seats_first


def _with_seats(train: Train, cabin: str, seats: int) -> Train:
    field = "seats_economy" if cabin == "economy" else "seats_first"
    return dataclasses.replace(train, **{field: seats})


def _booking_view(db: DB, b: Booking) -> dict:
    t = db["trains"][b.train_id]
    return {**record_dict(b), "origin": t.origin, "destination": t.destination, "date": t.date,
            "departure": t.departure}


# ---- functions -------------------------------------------------------------------------------
def get_customer(db, customer_id):
    return record_dict(get(db, "customers", customer_id)), ()


def search_trains(db, origin, destination, date):
    hits = [t for t in db["trains"].values()
            if t.origin == origin and t.destination == destination and t.date == date]
    return [record_dict(t) for t in sorted(hits, key=lambda t: (t.departure, t.train_id))], ()


def get_train(db, train_id):
    return record_dict(get(db, "trains", train_id)), ()


def get_booking(db, booking_id):
    return _booking_view(db, get(db, "bookings", booking_id)), ()


def list_customer_bookings(db, customer_id):
    get(db, "customers", customer_id)
    mine = [b for b in db["bookings"].values() if b.customer_id == customer_id]
    return [_booking_view(db, b) for b in sorted(mine, key=lambda b: b.booking_id)], ()


def book_ticket(db, customer_id, train_id, cabin, seats):
    c, t = get(db, "customers", customer_id), get(db, "trains", train_id)
    if _seats(t, cabin) < seats:
        raise DomainError(f"train {train_id} has only {_seats(t, cabin)} {cabin} seats left")
    total = seats * _price(t, cabin)
    if c.wallet_cents < total:
        raise DomainError(f"wallet balance {money_text(c.wallet_cents)} is below the price {money_text(total)}")
    bid = next_id(db, "bookings", "BK")
    booking = Booking(bid, customer_id, train_id, cabin, seats, total, "confirmed")
    writes = (("bookings", bid, booking),
              ("trains", train_id, _with_seats(t, cabin, _seats(t, cabin) - seats)),
              ("customers", customer_id, dataclasses.replace(c, wallet_cents=c.wallet_cents - total)))
    return {"booking_id": bid, "total": money_text(total)}, writes


def _confirmed(db, booking_id) -> Booking:
    b = get(db, "bookings", booking_id)
    if b.status != "confirmed":
        raise DomainError(f"booking {booking_id} is {b.status}")
    return b


def cancel_booking(db, booking_id):
    b = _confirmed(db, booking_id)
    t, c = db["trains"][b.train_id], db["customers"][b.customer_id]
    writes = (("bookings", booking_id, dataclasses.replace(b, status="cancelled")),
              ("trains", t.train_id, _with_seats(t, b.cabin, _seats(t, b.cabin) + b.seats)),
              ("customers", c.customer_id, dataclasses.replace(c, wallet_cents=c.wallet_cents + b.total_cents)))
    return {"booking_id": booking_id, "refund": money_text(b.total_cents)}, writes


def _rebook(db, b: Booking, cabin: str, seats: int):
    """Writes that move booking b to (cabin, seats), charging or refunding the difference."""
    t, c = db["trains"][b.train_id], db["customers"][b.customer_id]
    freed = _with_seats(t, b.cabin, _seats(t, b.cabin) + b.seats)
    if _seats(freed, cabin) < seats:
        raise DomainError(f"train {t.train_id} has only {_seats(freed, cabin)} {cabin} seats available")
    new_total = seats * _price(t, cabin)
    diff = new_total - b.total_cents
    if diff > c.wallet_cents:
        raise DomainError(f"wallet balance {money_text(c.wallet_cents)} is below the difference {money_text(diff)}")
    writes = (("bookings", b.booking_id, dataclasses.replace(b, cabin=cabin, seats=seats, total_cents=new_total)),
              ("trains", t.train_id, _with_seats(freed, cabin, _seats(freed, cabin) - seats)),
              ("customers", c.customer_id, dataclasses.replace(c, wallet_cents=c.wallet_cents - diff)))
    return {"booking_id": b.booking_id, "new_total": money_text(new_total), "charged": money_text(diff)}, writes


def change_cabin(db, booking_id, cabin):
    b = _confirmed(db, booking_id)
    if b.cabin == cabin:
        raise DomainError(f"booking {booking_id} is already in {cabin}")
    return _rebook(db, b, cabin, b.seats)


def change_seat_count(db, booking_id, seats):
    b = _confirmed(db, booking_id)
    if b.seats == seats:
        raise DomainError(f"booking {booking_id} already has {seats} seats")
    return _rebook(db, b, b.cabin, seats)


_CUST = Param("customer_id", "string", "Customer id, e.g. CU00012.", ref="customers")
_BOOK = Param("booking_id", "string", "Booking id, e.g. BK00042.", ref="bookings")
_CABIN = Param("cabin", "string", "Cabin class.", enum=CABINS)
_SEATS = Param("seats", "integer", "Number of seats.", minimum=1, maximum=6)


class Railway(Domain):
    name = "railway"
    description = "You are a railway booking agent. Customers pay from their wallet."
    functions = (
        FunctionSpec("get_customer", "Customer profile and wallet balance.", (_CUST,), get_customer),
        FunctionSpec("search_trains", "Trains on a route and date, sorted by departure time.",
                     (Param("origin", "string", "Departure station.", enum=STATIONS),
                      Param("destination", "string", "Arrival station.", enum=STATIONS),
                      Param("date", "string", "Travel date YYYY-MM-DD.", enum=DATES)), search_trains),
        FunctionSpec("get_train", "Details of one train.",
                     (Param("train_id", "string", "Train id, e.g. TR00007.", ref="trains"),), get_train),
        FunctionSpec("get_booking", "Details of one booking.", (_BOOK,), get_booking),
        FunctionSpec("list_customer_bookings", "All bookings of a customer.", (_CUST,), list_customer_bookings),
        FunctionSpec("book_ticket", "Book seats on a train, paid from the customer's wallet.",
                     (_CUST, Param("train_id", "string", "Train id.", ref="trains"), _CABIN, _SEATS),
                     book_ticket, write=True),
        FunctionSpec("cancel_booking", "Cancel a confirmed booking; the price is refunded to the wallet.",
                     (_BOOK,), cancel_booking, write=True),
        FunctionSpec("change_cabin", "Move a confirmed booking to another cabin; the difference is charged "
                     "or refunded.", (_BOOK, _CABIN), change_cabin, write=True),
        FunctionSpec("change_seat_count", "Change the number of seats of a confirmed booking.",
                     (_BOOK, _SEATS), change_seat_count, write=True),
    )

    # ---- database -----------------------------------------------------------------------------
    def generate_db(self, rng: np.random.Generator, size: int) -> DB:
        trains, taken = {}, set()
        while len(trains) < size:
            o, d = rng.choice(len(STATIONS), size=2, replace=False)
            date = pick(rng, DATES)
            dep = int(rng.integers(5 * 4, 22 * 4)) * 15  # minutes, quarter-hour grid
            key = (o, d, date, dep)
            if key in taken:
                continue
            taken.add(key)
            tid = f"TR{len(trains) + 1:05d}"
            arr = dep + int(rng.integers(90, 360))
            eco = int(rng.integers(20, 120)) * 50
            trains[tid] = Train(tid, STATIONS[o], STATIONS[d], date, _hhmm(dep), _hhmm(arr), eco,
                                eco * 2 + int(rng.integers(0, 40)) * 50,
                                int(rng.choice([0, 1, 2, 5, 12, 30, 60])), int(rng.choice([0, 1, 3, 8, 16])))
        customers = {}
        for i in range(size):
            cid = f"CU{i + 1:05d}"
            first, last = pick(rng, FIRST_NAMES), pick(rng, LAST_NAMES)
            customers[cid] = Customer(cid, f"{first} {last}", f"{first.lower()}.{last.lower()}{i}@mail.de",
                                      int(rng.integers(20, 2000)) * 100)
        bookings = {}
        tids = list(trains)
        for i in range(size):
            bid = f"BK{i + 1:05d}"
            t = trains[pick(rng, tids)]
            cabin = pick(rng, CABINS)
            seats = int(rng.integers(1, 4))
            status = "cancelled" if rng.random() < 0.15 else "confirmed"
            bookings[bid] = Booking(bid, f"CU{int(rng.integers(size)) + 1:05d}", t.train_id, cabin, seats,
                                    seats * _price(t, cabin), status)
        return {"trains": trains, "customers": customers, "bookings": bookings}

    def pick_user(self, db: DB, rng: np.random.Generator) -> str:
        return pick(rng, sorted(db["customers"]))

    def greeting(self, db: DB, user: str) -> str:
        return f"Hi, I am {db['customers'][user].name}, customer id {user}."

    # ---- intents --------------------------------------------------------------------------------
    @property
    def intents(self):
        return (self._book_earliest, self._cancel, self._change_cabin, self._change_seats)

    def _book_earliest(self, db, rng, user, used):
        o, d = (STATIONS[i] for i in rng.choice(len(STATIONS), size=2, replace=False))
        date, cabin, seats = pick(rng, DATES), pick(rng, CABINS), int(rng.integers(1, 4))
        trains, _ = search_trains(db, o, d, date)
        ok = [t for t in trains if t[f"seats_{cabin}"] >= seats]
        if not ok or ok[0]["train_id"] in used:
            return None
        t = ok[0]
        total = seats * round(t[f"price_{cabin}"] * 100)
        if db["customers"][user].wallet_cents < total:
            return None
        used.add(t["train_id"])
        ask = int(rng.integers(3))
        facts, tail = [(), (t["departure"],), (t["departure"], money_text(total))][ask], [
            "", " Tell me its departure time.", " Tell me its departure time and the total price."][ask]
        text = (f"Book {seats} {cabin} seat{'s' if seats > 1 else ''} on the earliest train from {o} to {d} "
                f"on {date} that still has enough {cabin} seats.{tail}")
        return Intent(text, (Action("search_trains", {"origin": o, "destination": d, "date": date}),
                             Action("book_ticket", {"customer_id": user, "train_id": t["train_id"],
                                                    "cabin": cabin, "seats": seats})), facts)

    def _my_confirmed(self, db, user, used):
        return [b for b in db["bookings"].values()
                if b.customer_id == user and b.status == "confirmed" and b.booking_id not in used]

    def _cancel(self, db, rng, user, used):
        mine = self._my_confirmed(db, user, used)
        if not mine:
            return None
        b = pick(rng, mine)
        t = db["trains"][b.train_id]
        same = [x for x in self._my_confirmed(db, user, set()) if
                (db["trains"][x.train_id].origin, db["trains"][x.train_id].destination,
                 db["trains"][x.train_id].date) == (t.origin, t.destination, t.date)]
        if len(same) != 1:
            return None
        used.add(b.booking_id)
        text = f"Cancel my booking from {t.origin} to {t.destination} on {t.date}."
        facts = ()
        if rng.random() < 0.5:
            text += " How much will be refunded?"
            facts = (money_text(b.total_cents),)
        return Intent(text, (Action("list_customer_bookings", {"customer_id": user}),
                             Action("cancel_booking", {"booking_id": b.booking_id})), facts)

    def _change_cabin(self, db, rng, user, used):
        mine = self._my_confirmed(db, user, used)
        if not mine:
            return None
        b = pick(rng, mine)
        cabin = "first" if b.cabin == "economy" else "economy"
        try:
            out, _ = change_cabin(db, b.booking_id, cabin)
        except DomainError:
            return None
        used.add(b.booking_id)
        text = f"Please move booking {b.booking_id} to {cabin} class."
        facts = ()
        if rng.random() < 0.5:
            text += " What is the new total price?"
            facts = (out["new_total"],)
        return Intent(text, (Action("get_booking", {"booking_id": b.booking_id}),
                             Action("change_cabin", {"booking_id": b.booking_id, "cabin": cabin})), facts)

    def _change_seats(self, db, rng, user, used):
        mine = self._my_confirmed(db, user, used)
        if not mine:
            return None
        b = pick(rng, mine)
        seats = int(pick(rng, [s for s in range(1, 6) if s != b.seats]))
        try:
            change_seat_count(db, b.booking_id, seats)
        except DomainError:
            return None
        used.add(b.booking_id)
        t = db["trains"][b.train_id]
        text = (f"For my trip from {t.origin} to {t.destination} on {t.date} (booking {b.booking_id}), "
                f"I need {seats} seat{'s' if seats > 1 else ''} instead of {b.seats}.")
        return Intent(text, (Action("get_booking", {"booking_id": b.booking_id}),
                             Action("change_seat_count", {"booking_id": b.booking_id, "seats": seats})))

    def distractor(self, db, rng, user, used):
        b = [x for x in db["bookings"].values() if x.customer_id == user and x.booking_id not in used]
        if b and rng.random() < 0.5:
            return f"Do not touch booking {pick(rng, b).booking_id}, that one is fine."
        o, d = (STATIONS[i] for i in rng.choice(len(STATIONS), size=2, replace=False))
        return f"I might also travel from {o} to {d} later this year, but that is not for today."


def _hhmm(minutes: int) -> str:
    minutes %= 24 * 60
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
