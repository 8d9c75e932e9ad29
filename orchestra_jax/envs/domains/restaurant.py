"""Restaurant domain: restaurants with per-slot capacity, customers, table reservations."""

from __future__ import annotations

import dataclasses

import numpy as np

from orchestra_jax.envs.domains.base import (
    DB, Action, Domain, DomainError, FunctionSpec, Intent, Param, get, next_id, pick, record_dict,
)

CITIES = ("Paris", "Lyon", "Nice", "Lille")
CUISINES = ("french", "italian", "japanese", "indian", "mexican", "thai")
DATES = ("2026-05-01", "2026-05-02", "2026-05-03")
TIMES = ("18:00", "19:00", "20:00", "21:00")
REQUESTS = ("none", "window seat", "birthday cake", "vegetarian menu", "high chair", "quiet table")
_ADJ = ("Golden", "Blue", "Little", "Old", "Green", "Silver", "Happy", "Royal", "Hidden", "Red", "Wild",
        "Sunny", "Velvet", "Lucky", "Secret", "Grand")
_NOUN = ("Fork", "Olive", "Lantern", "Garden", "Spoon", "Harbor", "Table", "Bistro", "Pepper", "Oven",
         "Lotus", "Vine", "Kettle", "Anchor", "Mill", "Basil")
FIRST_NAMES = ("Alice", "Bruno", "Chloe", "Damien", "Elise", "Hugo", "Ines", "Jules", "Lea", "Louis",
               "Manon", "Nina", "Oscar", "Pierre", "Rose", "Victor")
LAST_NAMES = ("Bernard", "Dubois", "Durand", "Lefebvre", "Leroy", "Martin", "Moreau", "Petit", "Roux",
              "Simon", "Thomas", "Laurent")


@dataclasses.dataclass(frozen=True)
class Restaurant:
    restaurant_id: str
    name: str
    city: str
    cuisine: str
    price_level: int
    rating: float
    capacity: int  # seats per time slot


@dataclasses.dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str
    phone: str
    loyalty_points: int


@dataclasses.dataclass(frozen=True)
class Reservation:
    reservation_id: str
    customer_id: str
    restaurant_id: str
    date: str
    time: str
    party_size: int
    status: str
    special_request: str


def _free_seats(db: DB, restaurant_id: str, date: str, time: str, ignore: str | None = None) -> int:
    taken = sum(r.party_size for r in db["reservations"].values()
                if r.restaurant_id == restaurant_id and r.date == date and r.time == time
                and r.status == "confirmed" and r.reservation_id != ignore)
    return db["restaurants"][restaurant_id].capacity - taken


def _reservation_view(db: DB, r: Reservation) -> dict:
    return {**record_dict(r), "restaurant_name": db["restaurants"][r.restaurant_id].name}


# ---- functions -------------------------------------------------------------------------------
def search_restaurants(db, city, cuisine):
    hits = [r for r in db["restaurants"].values() if r.city == city and r.cuisine == cuisine]
    return [record_dict(r) for r in sorted(hits, key=lambda r: (-r.rating, r.restaurant_id))], ()


def get_restaurant(db, restaurant_id):
    return record_dict(get(db, "restaurants", restaurant_id)), ()


def check_availability(db, restaurant_id, date, time):
    get(db, "restaurants", restaurant_id)
    return {"restaurant_id": restaurant_id, "date": date, "time": time,
            "free_seats": _free_seats(db, restaurant_id, date, time)}, ()


def get_customer(db, customer_id):
    return record_dict(get(db, "customers", customer_id)), ()


def get_reservation(db, reservation_id):
    return _reservation_view(db, get(db, "reservations", reservation_id)), ()


def list_customer_reservations(db, customer_id):
    get(db, "customers", customer_id)
    mine = sorted((r for r in db["reservations"].values() if r.customer_id == customer_id),
                  key=lambda r: r.reservation_id)
    return [_reservation_view(db, r) for r in mine], ()


def make_reservation(db, customer_id, restaurant_id, date, time, party_size):
    c = get(db, "customers", customer_id)
    free = _free_seats(db, restaurant_id, date, time)
    if free < party_size:
        raise DomainError(f"restaurant {restaurant_id} has only {free} free seats on {date} at {time}")
    rid = next_id(db, "reservations", "RV")
    r = Reservation(rid, customer_id, restaurant_id, date, time, party_size, "confirmed", "none")
    return {"reservation_id": rid}, (
        ("reservations", rid, r),
        ("customers", customer_id, dataclasses.replace(c, loyalty_points=c.loyalty_points + 10 * party_size)))


def _confirmed(db, reservation_id) -> Reservation:
    r = get(db, "reservations", reservation_id)
    if r.status != "confirmed":
        raise DomainError(f"reservation {reservation_id} is {r.status}")
    return r


def cancel_reservation(db, reservation_id):
    r = _confirmed(db, reservation_id)
    c = db["customers"][r.customer_id]
    points = max(0, c.loyalty_points - 10 * r.party_size)
    return {"reservation_id": reservation_id, "status": "cancelled"}, (
        ("reservations", reservation_id, dataclasses.replace(r, status="cancelled")),
        ("customers", c.customer_id, dataclasses.replace(c, loyalty_points=points)))


def change_reservation_time(db, reservation_id, date, time):
    r = _confirmed(db, reservation_id)
    if (r.date, r.time) == (date, time):
        raise DomainError(f"reservation {reservation_id} is already on {date} at {time}")
    free = _free_seats(db, r.restaurant_id, date, time, ignore=reservation_id)
    if free < r.party_size:
        raise DomainError(f"only {free} free seats on {date} at {time}")
    return {"reservation_id": reservation_id, "date": date, "time": time}, (
        ("reservations", reservation_id, dataclasses.replace(r, date=date, time=time)),)


def change_party_size(db, reservation_id, party_size):
    r = _confirmed(db, reservation_id)
    if r.party_size == party_size:
        raise DomainError(f"reservation {reservation_id} is already for {party_size}")
    free = _free_seats(db, r.restaurant_id, r.date, r.time, ignore=reservation_id)
    if free < party_size:
        raise DomainError(f"only {free} free seats on {r.date} at {r.time}")
    c = db["customers"][r.customer_id]
    points = max(0, c.loyalty_points + 10 * (party_size - r.party_size))
    return {"reservation_id": reservation_id, "party_size": party_size}, (
        ("reservations", reservation_id, dataclasses.replace(r, party_size=party_size)),
        ("customers", c.customer_id, dataclasses.replace(c, loyalty_points=points)))


def set_special_request(db, reservation_id, request):
    r = _confirmed(db, reservation_id)
    if r.special_request == request:
        raise DomainError(f"reservation {reservation_id} already has request {request!r}")
    return {"reservation_id": reservation_id, "special_request": request}, (
        ("reservations", reservation_id, dataclasses.replace(r, special_request=request)),)


_CUST = Param("customer_id", "string", "Customer id, e.g. CU00012.", ref="customers")
_REST = Param("restaurant_id", "string", "Restaurant id, e.g. RS00031.", ref="restaurants")
_RES = Param("reservation_id", "string", "Reservation id, e.g. RV00007.", ref="reservations")
_DATE = Param("date", "string", "Date YYYY-MM-DD.", enum=DATES)
_TIME = Param("time", "string", "Time slot.", enum=TIMES)
_PARTY = Param("party_size", "integer", "Number of guests.", minimum=1, maximum=12)


class RestaurantDomain(Domain):
    name = "restaurant"
    description = "You are a restaurant reservation agent."
    functions = (
        FunctionSpec("search_restaurants", "Restaurants of a cuisine in a city, best rated first.",
                     (Param("city", "string", "City.", enum=CITIES),
                      Param("cuisine", "string", "Cuisine.", enum=CUISINES)), search_restaurants),
        FunctionSpec("get_restaurant", "Details of one restaurant.", (_REST,), get_restaurant),
        FunctionSpec("check_availability", "Free seats of a restaurant at a date and time slot.",
                     (_REST, _DATE, _TIME), check_availability),
        FunctionSpec("get_customer", "Customer profile.", (_CUST,), get_customer),
        FunctionSpec("get_reservation", "Details of one reservation.", (_RES,), get_reservation),
        FunctionSpec("list_customer_reservations", "All reservations of a customer.", (_CUST,),
                     list_customer_reservations),
        FunctionSpec("make_reservation", "Reserve a table (earns 10 loyalty points per guest).",
                     (_CUST, _REST, _DATE, _TIME, _PARTY), make_reservation, write=True),
        FunctionSpec("cancel_reservation", "Cancel a confirmed reservation.", (_RES,), cancel_reservation,
                     write=True),
        FunctionSpec("change_reservation_time", "Move a confirmed reservation to another date and time.",
                     (_RES, _DATE, _TIME), change_reservation_time, write=True),
        FunctionSpec("change_party_size", "Change the number of guests of a confirmed reservation.",
                     (_RES, _PARTY), change_party_size, write=True),
        FunctionSpec("set_special_request", "Set the special request of a confirmed reservation.",
                     (_RES, Param("request", "string", "Special request.", enum=REQUESTS)),
                     set_special_request, write=True),
    )

    def generate_db(self, rng: np.random.Generator, size: int) -> DB:
        restaurants, names = {}, set()
        while len(restaurants) < size:
            name = f"The {pick(rng, _ADJ)} {pick(rng, _NOUN)}"
            city = pick(rng, CITIES)
            if (name, city) in names:
                continue
            names.add((name, city))
            rid = f"RS{len(restaurants) + 1:05d}"
            restaurants[rid] = Restaurant(rid, name, city, pick(rng, CUISINES), int(rng.integers(1, 5)),
                                          round(float(rng.uniform(3.0, 5.0)), 2), int(rng.integers(4, 30)))
        customers = {}
        for i in range(size):
            cid = f"CU{i + 1:05d}"
            customers[cid] = Customer(cid, f"{pick(rng, FIRST_NAMES)} {pick(rng, LAST_NAMES)}",
                                      f"+33 6 {int(rng.integers(10**7, 10**8))}", int(rng.integers(0, 500)))
        db = {"restaurants": restaurants, "customers": customers, "reservations": {}}
        rids = list(restaurants)
        while len(db["reservations"]) < size:
            args = dict(customer_id=f"CU{int(rng.integers(size)) + 1:05d}", restaurant_id=pick(rng, rids),
                        date=pick(rng, DATES), time=pick(rng, TIMES), party_size=int(rng.integers(1, 7)))
            if _free_seats(db, args["restaurant_id"], args["date"], args["time"]) < args["party_size"]:
                continue
            vid = next_id(db, "reservations", "RV")
            status = "cancelled" if rng.random() < 0.15 else "confirmed"
            db["reservations"][vid] = Reservation(vid, args["customer_id"], args["restaurant_id"], args["date"],
                                                  args["time"], args["party_size"], status,
                                                  pick(rng, REQUESTS) if rng.random() < 0.3 else "none")
        return db

    def pick_user(self, db: DB, rng: np.random.Generator) -> str:
        return pick(rng, sorted(db["customers"]))

    def greeting(self, db: DB, user: str) -> str:
        return f"Hello, this is {db['customers'][user].name} (customer id {user})."

    @property
    def intents(self):
        return (self._book_best, self._cancel, self._move, self._party, self._request)

    def _book_best(self, db, rng, user, used):
        city, cuisine = pick(rng, CITIES), pick(rng, CUISINES)
        date, time, party = pick(rng, DATES), pick(rng, TIMES), int(rng.integers(1, 7))
        found, _ = search_restaurants(db, city, cuisine)
        reads = [Action("search_restaurants", {"city": city, "cuisine": cuisine})]
        chosen = None
        for r in found:
            reads.append(Action("check_availability", {"restaurant_id": r["restaurant_id"], "date": date,
                                                       "time": time}))
            if _free_seats(db, r["restaurant_id"], date, time) >= party:
                chosen = r
                break
        # unambiguous only if no other restaurant shares the chosen one's rating
        if chosen is None or chosen["restaurant_id"] in used or sum(
                r["rating"] == chosen["rating"] for r in found) != 1:
            return None
        used.add(chosen["restaurant_id"])
        text = (f"Book a table for {party} at the best-rated {cuisine} restaurant in {city} that has room "
                f"on {date} at {time}.")
        facts = ()
        if rng.random() < 0.6:
            text += " Tell me the name of the restaurant."
            facts = (chosen["name"],)
        return Intent(text, (*reads, Action("make_reservation", {
            "customer_id": user, "restaurant_id": chosen["restaurant_id"], "date": date, "time": time,
            "party_size": party})), facts)

    def _mine(self, db, user, used):
        return [r for r in db["reservations"].values()
                if r.customer_id == user and r.status == "confirmed" and r.reservation_id not in used]

    def _cancel(self, db, rng, user, used):
        mine = self._mine(db, user, used)
        if not mine:
            return None
        r = pick(rng, mine)
        name = db["restaurants"][r.restaurant_id].name
        # the user names the restaurant, and names repeat across cities: unique by (name, date)
        same = [x for x in self._mine(db, user, set())
                if db["restaurants"][x.restaurant_id].name == name and x.date == r.date]
        if len(same) != 1:
            return None
        used.add(r.reservation_id)
        text = f"Please cancel my reservation at {name} on {r.date}."
        facts = ()
        if rng.random() < 0.5:
            text += " What time was it booked for?"
            facts = (r.time,)
        return Intent(text, (Action("list_customer_reservations", {"customer_id": user}),
                             Action("cancel_reservation", {"reservation_id": r.reservation_id})), facts)

    def _move(self, db, rng, user, used):
        mine = self._mine(db, user, used)
        if not mine:
            return None
        r = pick(rng, mine)
        date, time = pick(rng, DATES), pick(rng, TIMES)
        try:
            change_reservation_time(db, r.reservation_id, date, time)
        except DomainError:
            return None
        used.add(r.reservation_id)
        text = f"Move reservation {r.reservation_id} to {date} at {time}."
        return Intent(text, (Action("check_availability", {"restaurant_id": r.restaurant_id, "date": date,
                                                           "time": time}),
                             Action("change_reservation_time", {"reservation_id": r.reservation_id,
                                                                "date": date, "time": time})))

    def _party(self, db, rng, user, used):
        mine = self._mine(db, user, used)
        if not mine:
            return None
        r = pick(rng, mine)
        party = int(pick(rng, [p for p in range(1, 9) if p != r.party_size]))
        try:
            change_party_size(db, r.reservation_id, party)
        except DomainError:
            return None
        used.add(r.reservation_id)
        name = db["restaurants"][r.restaurant_id].name
        text = f"We will be {party} people instead of {r.party_size} for reservation {r.reservation_id} at {name}."
        return Intent(text, (Action("get_reservation", {"reservation_id": r.reservation_id}),
                             Action("change_party_size", {"reservation_id": r.reservation_id,
                                                          "party_size": party})))

    def _request(self, db, rng, user, used):
        mine = self._mine(db, user, used)
        if not mine:
            return None
        r = pick(rng, mine)
        request = pick(rng, [q for q in REQUESTS if q not in ("none", r.special_request)])
        used.add(r.reservation_id)
        text = f"Add the special request '{request}' to reservation {r.reservation_id}."
        return Intent(text, (Action("set_special_request", {"reservation_id": r.reservation_id,
                                                            "request": request}),))

    def distractor(self, db, rng, user, used):
        mine = [r for r in db["reservations"].values() if r.customer_id == user and r.reservation_id not in used]
        if mine and rng.random() < 0.5:
            return f"My reservation {pick(rng, mine).reservation_id} should stay exactly as it is."
        return f"A friend recommended {pick(rng, CUISINES)} food in {pick(rng, CITIES)}, but that can wait."
