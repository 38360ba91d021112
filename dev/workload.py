#!/usr/bin/env python3
"""floe dev stack: deterministic sample workload generator (stdlib only).

Reads the ids currently in public.customers / public.orders (one per line, from
--customer-ids / --order-ids files), then writes to stdout the SQL of N mixed
changes (inserts, updates, deletes on both tables) in several transactions, and
writes a summary as key=value lines to --summary. The same seed and the same
starting rows give the same SQL, byte for byte.

Used by dev/workload.sh; not meant to be run by hand.
"""

import argparse
import datetime as dt
import random
import sys

FIRST = ["Ada", "Grace", "Linus", "Zoë", "Søren", "O'Brien", "Müller", "李雷", "Ana-María",
         "Jean \"JJ\"", "Émile", "Nadia"]
LAST = ["Lovelace", "Hopper", "Torvalds", "Kierkegaard", "D'Arcy", "Østergaard", "Ng", "Ruiz",
        "van der Berg", "Smith"]
DOMAINS = ["example.com", "example.org", "mail.test", "floe.dev"]
STATUSES = ["pending", "paid", "shipped", "delivered", "cancelled", "refunded"]
NOTES = ["gift wrap", "leave at the door", "it's fragile", "call first\nthen ring twice",
         "emoji 📦 ok", "tab\there", "back-slash \\ kept", "50% off", ""]

BASE_TS = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def q(s):
    """SQL literal (standard_conforming_strings=on), or NULL."""
    if s is None:
        return "NULL"
    return "'" + s.replace("'", "''") + "'"


def money(rng, lo, hi):
    cents = rng.randint(lo * 100, hi * 100)
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


class Ids:
    """The live ids of a table, with O(1) random pick and delete (deterministic order)."""

    def __init__(self, ids):
        self.items = list(ids)
        self.pos = {v: i for i, v in enumerate(self.items)}
        self.next = (max(self.items) if self.items else 0) + 1

    def __len__(self):
        return len(self.items)

    def new(self):
        v = self.next
        self.next += 1
        self.pos[v] = len(self.items)
        self.items.append(v)
        return v

    def pick(self, rng):
        return self.items[rng.randrange(len(self.items))]

    def remove(self, v):
        i = self.pos.pop(v)
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i


class Workload:
    def __init__(self, rng, customers, orders):
        self.rng = rng
        self.customers = customers
        self.orders = orders
        self.counts = {t: {"inserts": 0, "updates": 0, "deletes": 0} for t in ("customers", "orders")}

    def name(self):
        r = self.rng
        return f"{r.choice(FIRST)} {r.choice(LAST)}"

    def email(self, cid):
        r = self.rng
        if r.random() < 0.1:
            return None
        return f"user{cid}.{r.randint(1, 999)}@{r.choice(DOMAINS)}"

    def tstz(self):
        r = self.rng
        t = BASE_TS + dt.timedelta(seconds=r.randint(0, 3 * 365 * 86400), microseconds=r.randint(0, 999999))
        off = r.choice([0, 2, -5, 9, 5.5])
        tz = dt.timezone(dt.timedelta(hours=off))
        return t.astimezone(tz).isoformat()

    def ts(self):
        r = self.rng
        t = BASE_TS + dt.timedelta(seconds=r.randint(0, 3 * 365 * 86400), microseconds=r.randint(0, 999999))
        return t.replace(tzinfo=None).isoformat(sep=" ")

    def note(self):
        r = self.rng
        return None if r.random() < 0.3 else r.choice(NOTES)

    # -- customers
    def insert_customer(self):
        r = self.rng
        cid = self.customers.new()
        self.counts["customers"]["inserts"] += 1
        balance = "9999999999.99" if r.random() < 0.02 else money(r, -1000, 100000)
        return (f"INSERT INTO public.customers (id, name, email, balance, created_at, active) VALUES "
                f"({cid}, {q(self.name())}, {q(self.email(cid))}, {balance}, {q(self.tstz())}, "
                f"{'true' if r.random() < 0.8 else 'false'});")

    def update_customer(self):
        r = self.rng
        cid = self.customers.pick(r)
        self.counts["customers"]["updates"] += 1
        sets = []
        if r.random() < 0.5:
            sets.append(f"balance = {money(r, -1000, 100000)}")
        if r.random() < 0.3:
            sets.append(f"email = {q(self.email(cid))}")
        if r.random() < 0.3:
            sets.append(f"active = {'true' if r.random() < 0.5 else 'false'}")
        if r.random() < 0.15 or not sets:
            sets.append(f"name = {q(self.name())}")
        return f"UPDATE public.customers SET {', '.join(sets)} WHERE id = {cid};"

    def delete_customer(self):
        cid = self.customers.pick(self.rng)
        self.customers.remove(cid)
        self.counts["customers"]["deletes"] += 1
        return f"DELETE FROM public.customers WHERE id = {cid};"

    # -- orders
    def insert_order(self):
        r = self.rng
        oid = self.orders.new()
        self.counts["orders"]["inserts"] += 1
        cust = str(self.customers.pick(r)) if len(self.customers) and r.random() < 0.95 else "NULL"
        return (f"INSERT INTO public.orders (id, customer_id, amount, status, note, placed_at) VALUES "
                f"({oid}, {cust}, {money(r, 0, 5000)}, {q(r.choice(STATUSES[:2]))}, {q(self.note())}, "
                f"{q(self.ts())});")

    def update_order(self):
        r = self.rng
        oid = self.orders.pick(r)
        self.counts["orders"]["updates"] += 1
        sets = [f"status = {q(r.choice(STATUSES))}"]
        if r.random() < 0.3:
            sets.append(f"amount = {money(r, -100, 5000)}")
        if r.random() < 0.3:
            sets.append(f"note = {q(self.note())}")
        return f"UPDATE public.orders SET {', '.join(sets)} WHERE id = {oid};"

    def delete_order(self):
        oid = self.orders.pick(self.rng)
        self.orders.remove(oid)
        self.counts["orders"]["deletes"] += 1
        return f"DELETE FROM public.orders WHERE id = {oid};"

    def change(self):
        r = self.rng
        if r.random() < 0.4:
            ids, ins, upd, dele = self.customers, self.insert_customer, self.update_customer, self.delete_customer
        else:
            ids, ins, upd, dele = self.orders, self.insert_order, self.update_order, self.delete_order
        x = r.random()
        if x < 0.5 or len(ids) == 0:
            return ins()
        if x < 0.85:
            return upd()
        return dele()


def read_ids(path):
    with open(path, encoding="utf-8") as f:
        return sorted(int(line) for line in f if line.strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--txn-size", type=int, required=True, help="mean changes per transaction")
    ap.add_argument("--customer-ids", required=True)
    ap.add_argument("--order-ids", required=True)
    ap.add_argument("--summary", required=True)
    a = ap.parse_args()
    if a.changes < 0 or a.txn_size < 1:
        sys.exit("workload: --changes must be >= 0 and --txn-size >= 1")

    rng = random.Random(a.seed)
    w = Workload(rng, Ids(read_ids(a.customer_ids)), Ids(read_ids(a.order_ids)))
    out = sys.stdout
    done = txns = 0
    while done < a.changes:
        size = min(rng.randint(1, 2 * a.txn_size - 1), a.changes - done)
        out.write("BEGIN;\n")
        for _ in range(size):
            out.write(w.change())
            out.write("\n")
        out.write("COMMIT;\n")
        done += size
        txns += 1
    # Explicit ids were used: move the serial sequences past them.
    for t in ("customers", "orders"):
        out.write(f"SELECT setval(pg_get_serial_sequence('public.{t}', 'id'), "
                  f"GREATEST((SELECT max(id) FROM public.{t}), 1));\n")

    with open(a.summary, "w", encoding="utf-8") as f:
        f.write(f"transactions={txns}\n")
        for t, ids in (("customers", w.customers), ("orders", w.orders)):
            c = w.counts[t]
            for k in ("inserts", "updates", "deletes"):
                f.write(f"{t}.{k}={c[k]}\n")
            f.write(f"{t}.rows={len(ids)}\n")


if __name__ == "__main__":
    main()
