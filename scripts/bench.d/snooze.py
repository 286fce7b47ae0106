"""scripts/bench snooze: the snooze job's tick on a large data set.

Seeds --total conversations, --due of them snoozed and due, into a fresh
database `bench` (dropped first) and measures, in one run and on the same
data (restored exactly between the phases):

  supportd   `supportd once snooze --now NOW` (release build): the tick's wall
             time (tick.end duration_ms), tickets/s, the process's CPU time
             per ticket and peak RSS (wait4 rusage of the child), the database
             commands (mongoc APM command-started count) and Redis round trips
             the tick sent (tick.end counts);
  floor      the minimal raw bulk write of the same updates from Python
             (pymongo): one find of the due tickets, then the same conditional
             updates ({_id, status: snoozed, updated_at: <read>} -> $set status,
             priority, unsnoozed_at, updated_at, $unset snooze) as unordered
             bulk writes of 500;
  one-by-one per due ticket: find_one, find_one room, update_one, ZADD (and
             insert_one per recipient with --notify), on a subset
             (--subset) and extrapolated to --due: clearly labelled;
  probes     one of each query shape the tick sends, timed alone (where the
             server time goes);
and the supportd tick once more on a smaller collection (--small-total) with
the same due count: supportd's commands and CPU per ticket should not change.

Notifications: by default every room's members have no email, so notify.lua
names no recipients: no outbox entries, no delivery; the numbers are the
snooze work itself (collect, decide incl. the Lua rules, conditional write,
queue, marker). --notify adds a second supportd run on the same data with
e-mail addresses on the rooms: one outbox entry per ticket, and the tick then
delivers up to 1000 of them (OUTBOX_LIMIT) through SMTP to Mailpit.

Runs against a FerretDB and a redis-server of the bench's own (common.py;
--shared-services for those of scripts/services). After seeding it times each
query shape alone and estimates the three runs; over --budget minutes (default
15) it stops there.

--gin on (default): the index-served test database, as scripts/services sets
it up (GIN twins of FerretDB's indexes, scripts/services.d/gin-indexes.sql):
2,000 due among 200,000 takes about 3 minutes. --gin off: FerretDB's own
btree indexes only, where every update or find by _id scans the table (see
BENCH_NOTES below) — the "before"; --quick (2,000 among 20,000) then takes
about 5 minutes, 20,000 among 200,000 over an hour.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import time
from pathlib import Path

import pymongo
import redis as redislib
from bson import ObjectId
from pymongo import InsertOne, UpdateMany, UpdateOne

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, REPO, BENCH_PG_DB, CommandCounter, Postgres,  # noqa: E402
                    PrivateFerretDB, PrivateRedis, Watchdog, die, load_services, log_events, ping,
                    run_measured, say, url_with_db, warn)

BENCH_NOTES = """
FerretDB 1.24 (PostgreSQL backend), as met by this benchmark:
- Only equality on top-level scalar fields is pushed down to SQL by find
  (dot notation needs --test-enable-nested-pushdown); ranges, $in and sorts are
  evaluated in Go after decoding every row the pushed-down part returns.
- An `update` command holds one PostgreSQL connection per matched multi:false
  statement until the whole command ends (handler/msg_update.go defers each
  statement's iterator Close to the end of the command; the limit-1 iterator is
  never drained). A bulk of more update_one statements than the pool has
  connections (pool_max_conns, default 50) therefore blocks forever, and the
  whole FerretDB with it (even ping waits for a connection). multi:true
  statements drain their iterator and release the connection at once.
"""

DB = "bench"
PREFIX = "bench:"
CONV, ROOM, OUTBOX = "conversation-conversation", "conversation-room", "conversation-notification"
PRIORITIES = ["low", "normal", "high", "urgent"]
RANK = {"urgent": 0, "high": 1, "normal": 2, "low": 3}
BAND = 1e13
ONE_BULK = 25  # update_one statements per bulk in the probe: below the bench FerretDB's pool (40)
BATCH = 500  # supportd's snooze batch (src/jobs/snooze/job.c), also the floor's bulk size


def ms_floor(t: dt.datetime) -> dt.datetime:
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def to_ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    if s >= 180:
        return f"{s / 60:.1f} min"
    return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def fmt_n(v, nd=0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{nd}f}"


# ------------------------------------------------------------------ seeding --

class World:
    """The seeded data set: conversations, rooms, and the exact original
    state of every snoozed-and-due ticket (to restore between phases)."""

    def __init__(self, db, total: int, due: int, later: int, n_rooms: int, now: dt.datetime,
                 seed: int = 42):
        self.db, self.total, self.due, self.later = db, total, due, later
        self.n_rooms, self.now = n_rooms, now
        self.rnd = random.Random(seed)
        self.rooms: list[dict] = []
        self.originals: dict[ObjectId, dict] = {}  # due tickets: the fields a wake-up changes
        self.due_ids: list[ObjectId] = []

    def _member(self, r: int, k: int, role: str) -> dict:
        return {"user_id": ObjectId(), "name": f"{role.title()} {k} of room {r}", "role": role}

    def _room(self, r: int) -> dict:
        members = [self._member(r, k, "agent") for k in range(3)] + [self._member(r, 0, "manager")]
        return {"_id": ObjectId(), "name": f"Room {r}", "timezone": "Europe/Berlin",
                "business_hours": None, "members": members,
                "email_from": f"room{r}@bench.example", "sla_policy": "default"}

    def set_room_emails(self, on: bool):
        """--notify: members get addresses (recipients exist), else none."""
        for r, room in enumerate(self.rooms):
            members = []
            for k, m in enumerate(room["members"]):
                m = {x: y for x, y in m.items() if x != "email"}
                if on:
                    m["email"] = f"{m['role']}{k}-room{r}@bench.example"
                members.append(m)
            self.db[ROOM].update_many({"_id": room["_id"]}, {"$set": {"members": members}})

    def _conversation(self, i: int, kind: str) -> dict:
        rnd, now = self.rnd, self.now
        room = self.rooms[rnd.randrange(self.n_rooms)]
        agents = [m for m in room["members"] if m["role"] == "agent"]
        created = ms_floor(now - dt.timedelta(seconds=rnd.randint(3600, 60 * 86400)))
        doc = {"_id": ObjectId(), "room_id": room["_id"],
               "subject": f"Order {100000 + i}: question about delivery and invoice {rnd.randint(1, 9999)}",
               "channel": rnd.choice(["email", "email", "chat", "sms"]),
               "priority": rnd.choice(PRIORITIES),
               "assignee_id": rnd.choice(agents)["user_id"] if rnd.random() < 0.7 else None,
               "contact": {"name": f"Customer {i}", "email": f"customer{i}@example.org",
                           "phone": f"+49151{i:08d}"},
               "tags": rnd.sample(["billing", "delivery", "refund", "api", "vip", "bug"], 2),
               "created_at": created, "first_response_at": None, "resolved_at": None,
               "last_agent_message_at": None, "escalation_level": 0}
        if kind in ("due", "later"):
            if kind == "due":
                until = now - dt.timedelta(seconds=rnd.randint(60, 10 * 86400))
            else:
                until = now + dt.timedelta(seconds=rnd.randint(3600, 20 * 86400))
            at = ms_floor(min(until, now) - dt.timedelta(seconds=rnd.randint(3600, 3 * 86400)))
            doc.update(status="snoozed", updated_at=at,
                       last_customer_message_at=ms_floor(at - dt.timedelta(minutes=rnd.randint(5, 600))),
                       snooze={"until": ms_floor(until),
                               "original_priority": rnd.choice(PRIORITIES),
                               "original_status": rnd.choice(["open", "open", "pending"]),
                               "by": rnd.choice(agents)["user_id"], "at": at})
        else:
            doc.update(status=rnd.choice(["open", "pending", "resolved", "resolved", "closed", "closed"]),
                       updated_at=ms_floor(now - dt.timedelta(seconds=rnd.randint(3600, 30 * 86400))),
                       last_customer_message_at=created)
        return doc

    def seed(self):
        t0 = time.monotonic()
        self.db.client.drop_database(self.db.name)
        self.rooms = [self._room(r) for r in range(self.n_rooms)]
        self.db[ROOM].insert_many(self.rooms)
        kinds = ["due"] * self.due + ["later"] * self.later + ["other"] * (self.total - self.due - self.later)
        self.rnd.shuffle(kinds)  # due tickets spread over the _id range
        coll = self.db[CONV]
        batch, step, done = [], max(1, self.total // 10), 0
        for i, kind in enumerate(kinds):
            doc = self._conversation(i, kind)
            if kind == "due":
                self.originals[doc["_id"]] = {k: doc[k] for k in ("status", "priority", "updated_at", "snooze")}
                self.due_ids.append(doc["_id"])
            batch.append(doc)
            if len(batch) == 2000 or i == len(kinds) - 1:
                coll.insert_many(batch, ordered=False)
                done += len(batch)
                batch = []
                if done % step < 2000 or done == self.total:
                    say(f"  seeded {done:,}/{self.total:,} conversations ({time.monotonic() - t0:.0f} s)")
        return time.monotonic() - t0

    def restore(self, ids=None):
        """Puts the due tickets back exactly as seeded (multi:true statements
        by _id: see BENCH_NOTES), empties the outbox and the bench's queues."""
        ids = list(self.originals) if ids is None else list(ids)
        coll = self.db[CONV]
        for k in range(0, len(ids), BATCH):
            ops = [UpdateMany({"_id": i}, {"$set": self.originals[i],
                                           "$unset": {"unsnoozed_at": "", "supportd_unsnooze": "",
                                                      "supportd_unsnooze_pending": ""}})
                   for i in ids[k:k + BATCH]]
            coll.bulk_write(ops, ordered=False)
        self.db[OUTBOX].delete_many({})
        n = coll.count_documents({"status": "snoozed"})
        if n != self.due + self.later:
            die(f"restore: {n} snoozed tickets, expected {self.due + self.later}")


def clear_redis(r, keep_checkpoint=True):
    for key in r.scan_iter(match=PREFIX + "*", count=1000):
        if keep_checkpoint and key.endswith(b"snooze:changed_since"):
            continue
        r.delete(key)


def queued(r) -> int:
    return sum(r.zcard(k) for k in r.scan_iter(match=PREFIX + "queue:*", count=1000))


# ----------------------------------------------------------------- supportd --

class Supportd:
    def __init__(self, binary: Path, env: dict, workdir: Path, timeout_s: float, mongo_url: str):
        self.binary, self.env, self.workdir = binary, env, workdir
        self.timeout_s, self.mongo_url = timeout_s, mongo_url
        self.runs = 0

    def once(self, now: dt.datetime, name: str, db: str = DB, watch=None) -> dict:
        self.runs += 1
        err = self.workdir / f"{self.runs:02d}-{name}.stderr"
        env = dict(self.env, MONGO_DB_URL=url_with_db(self.mongo_url, db))
        abort = watch.wedged if watch else None
        m = run_measured([str(self.binary), "once", "snooze", "--now", iso(now)], env, self.workdir,
                         err, self.timeout_s, abort)
        ends = [e for e in log_events(err) if e.get("event") == "tick.end"]
        m["log"] = str(err)
        m["end"] = ends[-1] if ends else None
        if m["end"] is None or m["rc"] != 0:
            tail = err.read_text(errors="replace")[-1500:]
            m["error"] = (f"supportd exited {m['rc']}" + (f" (killed: {m['killed']})" if m["killed"] else "")
                          + f"; log {err}:\n{tail}")
        return m


def supportd_env(services: dict, notify: bool) -> dict:
    own = ("QM_SUPPORT_", "MONGO_", "REDIS_", "TWILIO_", "SENDGRID_", "SMTP_", "MAILPIT_")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(own) and k not in ("LOG_LEVEL", "LOG_FORMAT", "LD_PRELOAD", "ASAN_OPTIONS")}
    env.update(REDIS_HOST=services["REDIS_HOST"], REDIS_PORT=services["REDIS_PORT"],
               QM_SUPPORT_REDIS_PREFIX=PREFIX, QM_SUPPORT_RULES_DIR=str(REPO / "rules"),
               QM_SUPPORT_EMAIL_PROVIDER="smtp", QM_SUPPORT_EMAIL_FROM="support@bench.example",
               SMTP_URL=services.get("SMTP_URL", "smtp://127.0.0.1:1"), LOG_FORMAT="json",
               LOG_LEVEL="info")
    return env


def summarize_supportd(m: dict, due: int, idle: dict | None) -> dict:
    s = {"ok": m.get("error") is None, "error": m.get("error"), "process_wall_s": m["wall_s"],
         "cpu_s": m["user_s"] + m["sys_s"], "user_s": m["user_s"], "sys_s": m["sys_s"],
         "maxrss_mb": m["maxrss_kb"] / 1024, "log": m["log"]}
    end = m.get("end")
    if end:
        c = end.get("counts", {})
        s.update(tick_s=end["duration_ms"] / 1000, counts=c, woken=c.get("woken", 0),
                 db_commands=c.get("db_commands"), redis_round_trips=c.get("redis_round_trips"),
                 batches=c.get("batches"))
        woken = s["woken"] or 0
        s["tickets_per_s"] = woken / s["tick_s"] if s["tick_s"] > 0 else None
        s["cpu_us_per_ticket"] = s["cpu_s"] / woken * 1e6 if woken else None
        if idle and woken:
            s["cpu_us_per_ticket_net"] = (s["cpu_s"] - idle["cpu_s"]) / woken * 1e6
            s["db_commands_net"] = s["db_commands"] - (idle.get("db_commands") or 0)
    return s


# ---------------------------------------------------------- floor, one-by-one --

def wake_values(doc: dict) -> tuple[str, str]:
    """What snooze_decide restores (src/jobs/snooze/model.h)."""
    sn = doc.get("snooze") or {}
    status = sn.get("original_status") if sn.get("original_status") in ("open", "pending") else "open"
    prio = sn.get("original_priority") if sn.get("original_priority") in PRIORITIES else doc.get("priority", "normal")
    return status, prio


def due_filter(now):
    return {"status": "snoozed", "snooze.until": {"$lte": now}}


def run_floor(url: str, now: dt.datetime, expect: int) -> dict:
    counter = CommandCounter()
    client = pymongo.MongoClient(url, tz_aware=True, event_listeners=[counter])
    coll = client[DB][CONV]
    client.admin.command("ping")
    counter.reset()
    cpu0, t0 = time.process_time(), time.monotonic()
    docs = list(coll.find(due_filter(now), {"status": 1, "priority": 1, "updated_at": 1, "snooze": 1},
                          batch_size=10000))
    t_read = time.monotonic() - t0
    wall_now = dt.datetime.now(dt.timezone.utc)
    matched = 0
    t1 = time.monotonic()
    for k in range(0, len(docs), BATCH):
        ops = []
        for d in docs[k:k + BATCH]:
            status, prio = wake_values(d)
            # multi:true with an _id filter = update_one (see BENCH_NOTES: update_one
            # statements wedge FerretDB 1.24 in bulks larger than its pool)
            ops.append(UpdateMany({"_id": d["_id"], "status": "snoozed", "updated_at": d["updated_at"]},
                                  {"$set": {"status": status, "priority": prio, "unsnoozed_at": wall_now,
                                            "updated_at": wall_now},
                                   "$unset": {"snooze": ""}}))
        matched += coll.bulk_write(ops, ordered=False).matched_count
    t_write = time.monotonic() - t1
    total = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    n_cmds, by_name = counter.n, dict(counter.by_name)
    client.close()
    if matched != expect:
        die(f"floor: {matched} tickets updated, expected {expect}")
    return {"total_s": total, "read_s": t_read, "write_s": t_write, "cpu_s": cpu, "matched": matched,
            "db_commands": n_cmds, "by_command": by_name, "redis_round_trips": 0}


def run_one_by_one(url: str, r, now: dt.datetime, due: int, subset: int, notify: bool) -> dict:
    counter = CommandCounter()
    client = pymongo.MongoClient(url, tz_aware=True, event_listeners=[counter])
    db = client[DB]
    convs, rooms, outbox = db[CONV], db[ROOM], db[OUTBOX]
    client.admin.command("ping")
    counter.reset()
    t0 = time.monotonic()
    ids = [d["_id"] for d in convs.find(due_filter(now), {"_id": 1}, batch_size=10000)]
    t_list = time.monotonic() - t0
    cmds_list = counter.n
    ids = ids[:subset]
    rtt = 0
    cpu0, t1 = time.process_time(), time.monotonic()
    for oid in ids:
        doc = convs.find_one({"_id": oid})
        room = rooms.find_one({"_id": doc["room_id"]})
        status, prio = wake_values(doc)
        wall_now = dt.datetime.now(dt.timezone.utc)
        res = convs.update_one({"_id": oid, "status": "snoozed", "updated_at": doc["updated_at"]},
                               {"$set": {"status": status, "priority": prio, "unsnoozed_at": wall_now,
                                         "updated_at": wall_now}, "$unset": {"snooze": ""}})
        if res.matched_count != 1:
            die(f"one-by-one: ticket {oid} not updated")
        waiting = doc.get("last_customer_message_at") or doc.get("created_at")
        r.zadd(f"{PREFIX}queue:{doc['room_id']}", {str(oid): RANK.get(prio, 2) * BAND + to_ms(waiting)})
        rtt += 1
        if notify and room:
            to = [m for m in room["members"] if m.get("email") and m["user_id"] == doc.get("assignee_id")] or \
                 [m for m in room["members"] if m.get("email") and m["role"] == "agent"]
            for m in to:
                outbox.insert_one({"key": f"ticket.unsnoozed:{oid}:{m['user_id']}", "type": "ticket.unsnoozed",
                                   "conversation_id": oid, "recipient": {"email": m["email"]},
                                   "via": "email", "status": "pending", "subject": "Back from snooze",
                                   "created_at": wall_now})
    t_loop = time.monotonic() - t1
    cpu = time.process_time() - cpu0
    n_cmds = counter.n
    client.close()
    n = len(ids)
    per = t_loop / n
    per_cmds = (n_cmds - cmds_list) / n
    return {"subset": n, "list_s": t_list, "loop_s": t_loop, "per_ticket_ms": per * 1000,
            "cpu_ms_per_ticket": cpu / n * 1000,
            "extrapolated_s": t_list + per * due, "db_commands_per_ticket": per_cmds,
            "db_commands_extrapolated": cmds_list + per_cmds * due,
            "redis_round_trips_extrapolated": rtt / n * due, "ids": ids}


# ------------------------------------------------------------------- probes --

def run_probes(url: str, now: dt.datetime, sample_id: ObjectId) -> list[tuple[str, str, float, int]]:
    """Each query shape the tick sends, timed alone on the seeded state (the
    cheap ones: the median of 5)."""
    client = pymongo.MongoClient(url, tz_aware=True)
    db = client[DB]
    convs = db[CONV]
    out = []

    def timed(key, name, fn, repeat=1):
        times = []
        for _ in range(repeat):
            t = time.monotonic()
            n = fn()
            times.append(time.monotonic() - t)
        out.append((key, name, sorted(times)[len(times) // 2], n))

    batch = list(convs.find(due_filter(now), {"_id": 1, "room_id": 1}).limit(BATCH))
    ids = [d["_id"] for d in batch]
    room_ids = list({d["room_id"] for d in batch})
    timed("due", "due batch: find {status: snoozed, snooze.until <= now} sort until, limit 500",
          lambda: len(list(convs.find(due_filter(now)).sort("snooze.until", 1).limit(BATCH))))
    timed("markers", "markers: find {supportd_unsnooze_pending: true} limit 500 (top-level flag)",
          lambda: len(list(convs.find({"supportd_unsnooze_pending": True}, {"supportd_unsnooze": 1}).limit(BATCH))))
    timed("markers_nested", "the same with a nested flag {supportd_unsnooze.pending: true} (not pushed down)",
          lambda: len(list(convs.find({"supportd_unsnooze.pending": True}, {"supportd_unsnooze": 1}).limit(BATCH))))
    timed("changed", "changed: find {status: snoozed, updated_at >= checkpoint} sort _id, limit 500",
          lambda: len(list(convs.find({"status": "snoozed", "updated_at": {"$gte": now}}).sort("_id", 1).limit(BATCH))))
    timed("rooms", f"rooms: find {{_id: {{$in: <the batch's {len(room_ids)} room ids>}}}} ({ROOM})",
          lambda: len(list(db[ROOM].find({"_id": {"$in": room_ids}}))))
    timed("clear", "clear markers: update_many {_id: {$in: <500 ids>}, supportd_unsnooze_pending: true}",
          lambda: convs.update_many({"_id": {"$in": ids}, "supportd_unsnooze_pending": True},
                                    {"$unset": {"supportd_unsnooze": "", "supportd_unsnooze_pending": ""}}).matched_count)
    timed("update", "one conditional update {_id, status, updated_at} (no match: nothing changes)",
          lambda: convs.update_many({"_id": sample_id, "status": "snoozed",
                                     "updated_at": dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)},
                                    {"$set": {"x": 1}}).matched_count, repeat=5)
    timed("find_one", "find_one {_id}", lambda: 1 if convs.find_one({"_id": sample_id}) else 0, repeat=5)
    # The wake-up write's two possible shapes, on 500 tickets that are not due
    # (a field of the bench's own is set, so nothing the runs look at changes).
    others = [d["_id"] for d in convs.find({"status": "closed"}, {"_id": 1}).limit(2 * BATCH)]
    if len(others) == 2 * BATCH:
        timed("bulk_many", f"write: one unordered bulk of {BATCH} update_many {{_id}} (supportd's shape)",
              lambda: convs.bulk_write([UpdateMany({"_id": i}, {"$set": {"bench_probe": 1}})
                                        for i in others[:BATCH]], ordered=False).matched_count)
        # update_one bulks must stay below FerretDB's pool (POOL_MAX_CONNS here), see BENCH_NOTES
        timed("bulk_one", f"write: {BATCH // ONE_BULK} unordered bulks of {ONE_BULK} update_one {{_id}}",
              lambda: sum(convs.bulk_write([UpdateOne({"_id": i}, {"$set": {"bench_probe": 1}})
                                            for i in others[BATCH + k:BATCH + k + ONE_BULK]],
                                           ordered=False).matched_count
                          for k in range(0, BATCH, ONE_BULK)))
    client.close()
    return out


def estimates(probes, due: int, subset: int) -> dict:
    """Rough run times from the single-query timings: every update statement
    and every find by _id costs about one probe on FerretDB 1.x (a scan)."""
    t = {k: v for k, _, v, _ in probes}
    batches = -(-due // BATCH)
    per_batch = t["due"] + 2 * t["markers"] + t["rooms"] + t["clear"]
    return {"supportd_s": batches * per_batch + t["markers"] + t["changed"] + due * t["update"],
            "floor_s": t["due"] + due * t["update"],
            "one_subset_s": t["due"] + min(subset, due) * (2 * t["find_one"] + t["update"]),
            "one_s": t["due"] + due * (2 * t["find_one"] + t["update"])}


# -------------------------------------------------------------------- report --

def ratio(a, b):
    return a / b if a and b else None


def report(res: dict) -> str:
    """A markdown snippet with every number measured in this run."""
    a = res["args"]
    big, small = res["sizes"][0], (res["sizes"][1] if len(res["sizes"]) > 1 else None)
    L = []
    L.append(f"### Snooze tick benchmark ({res['date']}, `scripts/bench snooze{res['argv']}`)")
    L.append("")
    L.append(f"{big['due']:,} due tickets among {big['total']:,} conversations "
             f"({big['later']:,} more snoozed, not due; {a['rooms']} rooms); FerretDB 1.24 on PostgreSQL "
             + ("**index-served** (GIN twins of its indexes, `--gin on`) " if res.get("gin") == "on"
                else "with **its own btree indexes only** (`--gin off`) ")
             + f"and Redis ({res['ferretdb']}), {res['cpus']} CPUs; supportd {res['binary_label']}. "
             "Delivery excluded: the rooms' members have no e-mail address, so notify.lua names no "
             "recipients (no outbox entries). Seeding took "
             + ", ".join(f"{fmt_s(s['seed_s'])} ({s['total']:,})" for s in res["sizes"]) + " (not measured below).")
    L.append("")
    s, f, o = big.get("supportd", {}), big.get("floor", {}), big.get("one_by_one", {})
    if "supportd" in big:
        L.append("| | supportd tick | floor (raw bulk write) | one at a time |")
        L.append("|---|---:|---:|---:|")
        ok = s.get("ok")
        L.append(f"| wall time | {fmt_s(s.get('tick_s')) if ok else 'FAILED'} | {fmt_s(f.get('total_s'))} "
                 f"(read {fmt_s(f.get('read_s'))}, write {fmt_s(f.get('write_s'))}) | "
                 f"{fmt_s(o.get('extrapolated_s'))} (extrapolated from {fmt_n(o.get('subset'))}) |")
        L.append(f"| tickets/s | {fmt_n(s.get('tickets_per_s'))} | "
                 f"{fmt_n(ratio(big['due'], f.get('total_s')))} | {fmt_n(ratio(big['due'], o.get('extrapolated_s')))} |")
        L.append(f"| database commands | {fmt_n(s.get('db_commands'))} | {fmt_n(f.get('db_commands'))} | "
                 f"{fmt_n(o.get('db_commands_extrapolated'))} |")
        L.append(f"| Redis round trips | {fmt_n(s.get('redis_round_trips'))} | 0 | "
                 f"{fmt_n(o.get('redis_round_trips_extrapolated'))} |")
        L.append(f"| client CPU per ticket | {fmt_n(s.get('cpu_us_per_ticket'))} µs "
                 f"({fmt_n(s.get('cpu_us_per_ticket_net'))} µs net of an idle tick) | "
                 f"{fmt_n(f['cpu_s'] / big['due'] * 1e6) if f else '—'} µs (Python) | "
                 f"{fmt_n(o.get('cpu_ms_per_ticket') and o['cpu_ms_per_ticket'] * 1000)} µs (Python) |")
        L.append(f"| peak RSS | {fmt_n(s.get('maxrss_mb'), 1)} MB | | |")
        L.append("")
        if ok:
            rf = ratio(s.get("tick_s"), f.get("total_s"))
            ro = ratio(o.get("extrapolated_s"), s.get("tick_s"))
            mark = lambda okay: "met" if okay else "**missed**"
            L.append(f"- **vs floor: {fmt_n(rf, 2)}×** the floor's time (target ≤ 1.5×: {mark(rf is not None and rf <= 1.5)}); "
                     f"**vs one at a time: {fmt_n(ro, 1)}× faster** (target ≥ 3×: {mark(ro is not None and ro >= 3)}).")
            if s.get("check"):
                L.append(f"- **Check failed after the tick**: {s['check']} (expected {big['due']:,} woken and "
                         f"queued, {big['later']:,} still snoozed); see {s.get('log')}.")
            L.append(f"- Commands: {fmt_n(s.get('db_commands'))} for {big['due']:,} tickets in "
                     f"{fmt_n(s.get('batches'))} batches of {BATCH} = {fmt_n(ratio(s.get('db_commands'), s.get('batches')), 1)} "
                     f"per batch (due ÷ batch size = {big['due'] / BATCH:,.1f}).")
        else:
            L.append(f"- **supportd's tick failed**: {(s.get('error') or '').splitlines()[0] if s else 'not run'}")
        L.append(f"- Process: {fmt_s(s.get('process_wall_s'))} wall, {fmt_n(s.get('cpu_s'), 2)} s CPU "
                 f"(user {fmt_n(s.get('user_s'), 2)}, sys {fmt_n(s.get('sys_s'), 2)}).")
    if small:
        ss, sf = small.get("supportd", {}), small.get("floor", {})
        L.append("")
        L.append(f"Same {small['due']:,} due tickets, collection size varied "
                 "(supportd's own side should not change; the server's may):")
        L.append("")
        L.append(f"| conversations | tick wall | floor wall | db commands | Redis round trips | CPU/ticket (net) | peak RSS |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|")
        for z in (small, big):
            zs, zf = z.get("supportd", {}), z.get("floor", {})
            L.append(f"| {z['total']:,} | {fmt_s(zs.get('tick_s')) if zs.get('ok') else 'FAILED'} | "
                     f"{fmt_s(zf.get('total_s'))} | {fmt_n(zs.get('db_commands'))} | "
                     f"{fmt_n(zs.get('redis_round_trips'))} | {fmt_n(zs.get('cpu_us_per_ticket_net'))} µs | "
                     f"{fmt_n(zs.get('maxrss_mb'), 1)} MB |")
    if big.get("notify"):
        n = big["notify"]
        c = n.get("counts", {})
        L.append("")
        L.append(f"With notifications (rooms with e-mail addresses; one outbox entry per recipient: the assignee, else the room's 3 agents; the tick "
                 f"also delivers up to 1000 of them through SMTP to Mailpit): "
                 + (f"tick {fmt_s(n.get('tick_s'))}, {fmt_n(n.get('db_commands'))} database commands, "
                    f"{fmt_n(n.get('redis_round_trips'))} Redis round trips, {fmt_n(c.get('notifications'))} "
                    f"enqueued, {fmt_n(c.get('outbox_sent'))} sent, CPU {fmt_n(n.get('cpu_us_per_ticket'))} µs/ticket, "
                    f"peak RSS {fmt_n(n.get('maxrss_mb'), 1)} MB."
                    if n.get("ok") else f"FAILED ({(n.get('error') or '').splitlines()[0]})."))
    if big.get("estimates") and not s:
        e = big["estimates"]
        why = big.get("over_budget") or "--probes-only"
        L.append(f"- Not run ({why}). Estimated from the probes: supportd tick ~{fmt_s(e['supportd_s'])}, "
                 f"floor ~{fmt_s(e['floor_s'])}, one at a time ~{fmt_s(e['one_s'])} for {big['due']:,} tickets.")
    if big.get("probes"):
        L.append("")
        L.append(f"Where the server time goes: each query shape of the tick timed alone on "
                 f"{big['total']:,} conversations:")
        L.append("")
        L.append("| query | time | docs |")
        L.append("|---|---:|---:|")
        for _, name, t, n in big["probes"]:
            L.append(f"| {name} | {fmt_s(t)} | {n} |")
        t_upd = {k: v for k, _, v, _ in big["probes"]}["update"]
        L.append("")
        if res.get("gin") == "on":
            L.append("Index-served: FerretDB pushes top-level equality down as `_jsonb->'f' @> …`, which the "
                     "GIN twins serve (`_id`, `status`, `updated_at`, `supportd_unsnooze_pending`); ranges, "
                     "`$in`, sorts and nested fields are still evaluated in Go after decoding what the "
                     "pushed-down equality returns.")
            L.append("")
            return "\n".join(L)
        L.append(f"FerretDB 1.24 runs a find or update by `_id` as a sequential scan in PostgreSQL (its "
                 f"pushed-down filter `_jsonb->'_id' @> …` cannot use the `_id` btree index), "
                 f"{fmt_s(t_upd)} per statement here: every approach that writes one statement per "
                 f"ticket pays that per ticket, and it grows with the collection. Filters on nested "
                 f"fields, ranges, `$in` and sorts are evaluated in Go after decoding what the "
                 f"pushed-down part (top-level equality only) returns.")
    L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------------- main --

def measure_size(args, services, mongo_url, sup: Supportd, r, pg, ferret, total, due, later,
                 with_baselines: bool, with_notify: bool) -> dict:
    say(f"\n==> {due:,} due among {total:,} conversations ({later:,} snoozed, not due)")
    client = pymongo.MongoClient(mongo_url, tz_aware=True)
    db = client[DB]
    now = ms_floor(dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
    world = World(db, total, due, later, args.rooms, now)
    out = {"total": total, "due": due, "later": later}
    say("  seeding (not measured) ...")
    out["seed_s"] = world.seed()
    clear_redis(r, keep_checkpoint=False)

    # A tick on an empty database writes the changed-sweep checkpoint (a previous
    # tick ran: steady state); then an idle tick on the seeded one (nothing due
    # long ago) creates the indexes and gives the fixed cost of a tick.
    t0 = time.monotonic()
    m = sup.once(now, "checkpoint", db=DB + "_empty")
    if m.get("error"):
        die(m["error"])
    m = sup.once(now - dt.timedelta(days=365), "idle")
    if m.get("error"):
        die(m["error"])
    idle = summarize_supportd(m, 0, None)
    out["idle"] = idle
    say(f"  idle tick (indexes, checkpoint): {fmt_s(m['wall_s'])}, {idle.get('db_commands')} commands, "
        f"{idle['cpu_s']:.2f} s CPU ({time.monotonic() - t0:.0f} s)")
    pg.vacuum(BENCH_PG_DB if ferret else "ferretdb", DB)

    if with_baselines and not args.no_probes:
        say("  probes: each query shape alone ...")
        out["probes"] = run_probes(mongo_url, now, world.due_ids[0])
        for _, name, t, n in out["probes"]:
            say(f"    {fmt_s(t):>9}  {n:>5} docs  {name}")
        out["estimates"] = estimates(out["probes"], due, args.subset)
        e = out["estimates"]
        say(f"  estimated from the probes: supportd tick ~{fmt_s(e['supportd_s'])}, floor ~{fmt_s(e['floor_s'])}, "
            f"one at a time ~{fmt_s(e['one_subset_s'])} for the subset of {min(args.subset, due):,} "
            f"(~{fmt_s(e['one_s'])} for all {due:,})")
        total_est = e["supportd_s"] + e["floor_s"] + e["one_subset_s"]
        if args.budget and total_est > args.budget * 60 and not args.probes_only:
            out["over_budget"] = (f"estimated {fmt_s(total_est)} for the three runs at this size, over "
                                  f"--budget {args.budget:g} min")
            say(f"  {out['over_budget']}: stopping after the probes (--budget 0 runs anyway; "
                "--quick or a smaller --due fits)")
        if args.probes_only or out.get("over_budget"):
            client.close()
            out["_mongo_url"] = mongo_url
            return out

    say("  supportd once snooze ...")
    clear_redis(r)
    watch = Watchdog(mongo_url)
    if watch:
        watch.__enter__()
    try:
        m = sup.once(now, "tick", watch=watch)
    finally:
        if watch:
            watch.__exit__(None, None, None)
    s = summarize_supportd(m, due, idle)
    out["supportd"] = s
    if s["ok"]:
        say(f"    tick {fmt_s(s['tick_s'])}, woken {s['woken']:,}, {s['db_commands']} commands, "
            f"{s['redis_round_trips']} Redis round trips, CPU {s['cpu_s']:.2f} s, RSS {s['maxrss_mb']:.1f} MB")
        snoozed = db[CONV].count_documents({"status": "snoozed"})
        q = queued(r)
        if s["woken"] != due or snoozed != later or q != due:
            warn(f"    CHECK: woken {s['woken']}, still snoozed {snoozed} (expected {later}), queued {q} (expected {due})")
            s["check"] = f"woken {s['woken']}, snoozed {snoozed}, queued {q}"
    else:
        warn(f"    supportd tick FAILED: {s['error']}")
        wedged = m.get("killed") == "ferretdb-wedged" or not ping(mongo_url, 5)
        if wedged and not ferret:
            die("the shared FerretDB stopped answering during the tick (wedged; see BENCH_NOTES in "
                "scripts/bench.d/snooze.py): restart it (scripts/services down; scripts/services up)")
        if wedged:
            s["error"] = ("FerretDB stopped answering during the tick (wedged: its PostgreSQL pool was "
                          f"exhausted, {pg.connections(BENCH_PG_DB)} connections held); killed supportd and "
                          "restarted the bench's FerretDB. " + s["error"])
            warn("    FerretDB wedged: restarting the bench's FerretDB")
            ferret.restart()
            mongo_url = ferret.url
            sup.mongo_url = mongo_url
            client = pymongo.MongoClient(mongo_url, tz_aware=True)
            db = client[DB]
            world.db = db
    clear_redis(r)
    world.restore()
    pg.vacuum(BENCH_PG_DB if ferret else "ferretdb", DB)

    if with_baselines:
        say("  floor: one find + unordered bulk writes of 500 (Python) ...")
        f = run_floor(mongo_url, now, due)
        out["floor"] = f
        say(f"    {fmt_s(f['total_s'])} (read {fmt_s(f['read_s'])}, write {fmt_s(f['write_s'])}), "
            f"{f['db_commands']} commands {f['by_command']}")
        world.restore()
        pg.vacuum(BENCH_PG_DB if ferret else "ferretdb", DB)

        say(f"  one at a time on {min(args.subset, due):,} tickets (extrapolated to {due:,}) ...")
        o = run_one_by_one(mongo_url, r, now, due, min(args.subset, due), notify=False)
        ids = o.pop("ids")
        out["one_by_one"] = o
        say(f"    {o['per_ticket_ms']:.2f} ms/ticket, {o['db_commands_per_ticket']:.1f} commands/ticket; "
            f"extrapolated {fmt_s(o['extrapolated_s'])}")
        clear_redis(r)
        world.restore(ids)

    if with_notify:
        say("  supportd once snooze, with notifications (rooms get e-mail addresses) ...")
        world.set_room_emails(True)
        pg.vacuum(BENCH_PG_DB if ferret else "ferretdb", DB)
        clear_redis(r)
        watch = Watchdog(mongo_url)
        if watch:
            watch.__enter__()
        try:
            m = sup.once(now, "tick-notify", watch=watch)
        finally:
            if watch:
                watch.__exit__(None, None, None)
        n = summarize_supportd(m, due, idle)
        out["notify"] = n
        if n["ok"]:
            c = n["counts"]
            say(f"    tick {fmt_s(n['tick_s'])}, {n['db_commands']} commands, {n['redis_round_trips']} Redis "
                f"round trips, {c.get('notifications')} enqueued, {c.get('outbox_sent')} sent")
        else:
            warn(f"    FAILED: {n['error']}")
            if not ping(mongo_url, 5):
                if not ferret:
                    die("the shared FerretDB stopped answering (wedged): restart it (scripts/services)")
                ferret.restart()
                sup.mongo_url = mongo_url = ferret.url
        world.set_room_emails(False)
        clear_redis(r)
    client.close()
    out["_mongo_url"] = mongo_url
    return out


def main():
    ap = argparse.ArgumentParser(prog="scripts/bench snooze", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total", type=int, help="conversations (default 200000; --quick 20000)")
    ap.add_argument("--due", type=int, help="of them snoozed and due (default 20000; --quick 2000)")
    ap.add_argument("--later", type=int, help="snoozed, not due yet (default total/10)")
    ap.add_argument("--small-total", type=int,
                    help="second, smaller collection with the same due count (default 2×due; 0: skip)")
    ap.add_argument("--rooms", type=int, default=200)
    ap.add_argument("--subset", type=int, help="tickets the one-at-a-time run does (default 1000; --quick 300)")
    ap.add_argument("--quick", action="store_true", help="20000/2000: a fast run")
    ap.add_argument("--notify", action="store_true",
                    help="also run the tick with notifications (outbox + delivery of up to 1000 via Mailpit)")
    ap.add_argument("--no-probes", action="store_true", help="skip timing each query shape alone")
    ap.add_argument("--probes-only", action="store_true",
                    help="seed, time each query shape alone, print estimates, stop (no full runs)")
    ap.add_argument("--bin", type=Path, default=CACHE / "bench-out" / "bin" / "supportd")
    ap.add_argument("--label", help="what the binary is, for the report (default: the git commit)")
    ap.add_argument("--gin", choices=("on", "off"), default="on",
                    help="on (default): the index-served test database, GIN twins of FerretDB's "
                         "indexes (scripts/services.d/gin-indexes.sql); off: FerretDB's own btree "
                         "indexes only, as it sets itself up (the 'before')")
    ap.add_argument("--shared-services", action="store_true",
                    help="use the FerretDB and Redis of scripts/services instead of the bench's own")
    ap.add_argument("--budget", type=float, default=15,
                    help="minutes: when the probes estimate the runs at the main size to take longer, "
                         "stop after the probes (default 15; 0: no limit)")
    ap.add_argument("--tick-timeout", type=float, default=3600, help="seconds (default 3600)")
    ap.add_argument("--keep", action="store_true", help="keep the `bench` database afterwards")
    ap.add_argument("--out", type=Path, default=CACHE / "bench")
    args = ap.parse_args()
    total = args.total or (20000 if args.quick else 200000)
    due = args.due or (2000 if args.quick else 20000)
    later = args.later if args.later is not None else total // 10
    small = args.small_total if args.small_total is not None else 2 * due
    args.subset = args.subset or (300 if args.quick else 1000)
    if due + later > total:
        die(f"--due + --later ({due + later}) exceeds --total ({total})")
    if small and (small >= total or due + small // 10 > small):
        small = 0
    args.bin = args.bin.resolve()  # scripts/bench runs from the repository root
    if not args.bin.exists():
        die(f"{args.bin} missing (scripts/bench builds it unless --bin is given)")

    services = load_services()
    pg = Postgres(services["STATE_PG_PORT"])
    started = dt.datetime.now(dt.timezone.utc)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    workdir = args.out / f"snooze-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    ferret = own_redis = None
    if args.shared_services and args.gin == "off":
        die("--gin off needs the bench's own FerretDB (it drops the GIN indexes of its database)")
    if args.shared_services:
        mongo_url = url_with_db(services["MONGO_DB_URL"], "")
        if not ping(mongo_url, 5):
            die("the shared FerretDB does not answer (scripts/services status)")
    else:
        own_redis = PrivateRedis(workdir)
        own_redis.start()
        services.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(own_redis.port))
        ferret = PrivateFerretDB(pg, workdir)
        try:
            ferret.start()
        except BaseException:
            own_redis.stop()
            raise
        mongo_url = ferret.url
        pg.gin(BENCH_PG_DB, args.gin == "on", schemas=[DB, DB + "_empty"])
        say(f"bench FerretDB: pid {ferret.proc.pid}, port {ferret.port}, PostgreSQL database {BENCH_PG_DB}; "
            f"bench redis-server: pid {own_redis.proc.pid}, port {own_redis.port}")
    r = redislib.Redis(host=services["REDIS_HOST"], port=int(services["REDIS_PORT"]))
    sup = Supportd(args.bin, supportd_env(services, args.notify), workdir, args.tick_timeout, mongo_url)
    label = args.label
    if not label:
        try:
            import subprocess
            commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"],
                                   capture_output=True, text=True).stdout.strip()
            label = f"{commit}{' + uncommitted src changes' if dirty else ''}"
        except OSError:
            label = "?"
    res = {"date": started.strftime("%Y-%m-%d"), "argv": "".join(" " + a for a in sys.argv[1:]),
           "args": vars(args) | {"bin": str(args.bin), "out": str(args.out)}, "cpus": os.cpu_count(),
           "ferretdb": "the bench's own FerretDB and Redis" if ferret else "the shared FerretDB and Redis",
           "gin": args.gin,
           "binary_label": f"`{args.bin.relative_to(REPO) if args.bin.is_relative_to(REPO) else args.bin}` ({label})",
           "sizes": []}
    t_all = time.monotonic()
    try:
        big = measure_size(args, services, mongo_url, sup, r, pg, ferret, total, due, later,
                           with_baselines=True, with_notify=args.notify)
        mongo_url = big.pop("_mongo_url")
        res["sizes"].append(big)
        if small and not args.probes_only and not big.get("over_budget"):
            sm = measure_size(args, services, mongo_url, sup, r, pg, ferret, small, due, small // 10,
                              with_baselines=True, with_notify=False)
            sm.pop("_mongo_url")
            sm.pop("probes", None)
            res["sizes"].append(sm)
    finally:
        try:
            clear_redis(r, keep_checkpoint=False)
            c = pymongo.MongoClient(sup.mongo_url, serverSelectionTimeoutMS=5000)
            c.drop_database(DB + "_empty")
            if not args.keep:
                c.drop_database(DB)
            c.close()
        except Exception as e:
            warn(f"cleanup: {e}")
        if ferret:
            ferret.stop()
        if own_redis:
            own_redis.stop()
    res["elapsed_s"] = time.monotonic() - t_all
    md = report(res)
    say("\n" + "=" * 78)
    say(md)
    say(f"(whole run: {res['elapsed_s'] / 60:.1f} min; logs in {workdir})")
    out_md = args.out / f"snooze-{res['date']}.md"
    out_md.write_text(md + "\n")
    (workdir / "report.md").write_text(md + "\n")
    (workdir / "results.json").write_text(json.dumps(res, indent=2, default=str))
    say(f"wrote {out_md} and {workdir / 'results.json'}")
    big_s = res["sizes"][0].get("supportd")
    sys.exit(1 if big_s is not None and not big_s.get("ok") else 0)


if __name__ == "__main__":
    main()
