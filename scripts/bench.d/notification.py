"""scripts/bench notification: the notification job's tick and outbox delivery
at volume, on a FerretDB 1.24 and a redis-server of the bench's own, with
the SendGrid fake (tests/fakes/provider_fake.py) on loopback.

Two measurements, each in the same run:

  delivery  --entries pending email entries (default 5000; --quick 1000),
            delivered by `supportd once notification` and `once outbox`
            ticks until none is left: mails per second (entries / summed
            tick wall time), database commands per 1,000 entries (mongoc
            APM), Redis round trips, against --baseline-bin (e.g. an older
            deliverer) when given.
  decide    --changed of --total conversations (default 100,000 of 500,000;
            --quick 500 of 2,000) changed since the last tick (customer
            messages, assignments, resolutions, new tickets; seeded directly
            with supportd's notify-state records as a previous tick leaves
            them): the tick's wall time, supportd CPU per conversation (net
            of an idle tick: the same query with nothing changed), the share
            of it spent in rules (tick.end `rules_cpu_us`) and in
            templates.lua (`render_cpu_us`), database commands per 1,000
            conversations, peak RSS; the tick also delivers the first 5,000
            of its mails. Compared with a one-conversation-at-a-time notifier
            (--one-at-a-time N conversations, extrapolated) in the same run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import pymongo
import redis as redislib
from bson import ObjectId

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH_PG_DB, CACHE, REPO, Postgres, PrivateFerretDB, PrivateRedis,  # noqa: E402
                    die, load_services, log_events, ping, run_measured, say, url_with_db)

DB = "bench_notification"
PREFIX = "benchn:"


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Fake:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests/fakes/provider_fake.py")],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.base = f"http://127.0.0.1:{int(self.proc.stdout.readline().split()[1])}"

    def call(self, path, body=None):
        import urllib.request
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"null")

    def reset(self):
        self.call("/_fake/reset", {"sendgrid_key": "SG.bench-key"})

    def sent(self) -> int:
        return len(self.call("/_fake/sent")["sendgrid"])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def env_for(services, mongo_url, fake) -> dict:
    import os
    own = ("QM_SUPPORT_", "MONGO_", "REDIS_", "TWILIO_", "SENDGRID_", "SMTP_", "MAILPIT_")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(own) and k not in ("LOG_LEVEL", "LOG_FORMAT", "LD_PRELOAD")}
    env.update(MONGO_DB_URL=url_with_db(mongo_url, DB), REDIS_HOST=services["REDIS_HOST"],
               REDIS_PORT=services["REDIS_PORT"], QM_SUPPORT_REDIS_PREFIX=PREFIX,
               QM_SUPPORT_RULES_DIR=str(REPO / "rules"), QM_SUPPORT_EMAIL_FROM="bench@acme.example",
               SENDGRID_API_KEY="SG.bench-key", SENDGRID_API_BASE=fake.base, LOG_FORMAT="json",
               LOG_LEVEL="warn")
    return env


def tick(binary, env, job, now, workdir, name) -> dict:
    err = workdir / f"{name}.stderr"
    env = dict(env, LOG_LEVEL="info")
    m = run_measured([str(binary), "once", job, "--now", iso(now)], env, workdir, err, 3600)
    ends = [e for e in log_events(err) if e.get("event") == "tick.end"]
    if m["rc"] != 0 or not ends:
        die(f"{binary} once {job} failed (log {err})")
    m["counts"] = ends[-1].get("counts", {})
    m["duration_s"] = ends[-1].get("duration_ms", 0) / 1000
    return m


def reset(db, r):
    for c in db.list_collection_names():
        db.drop_collection(c)
    for k in r.scan_iter(match=PREFIX + "*", count=1000):
        r.delete(k)


def delivery(binary, env, db, r, fake, n, workdir, label, job) -> dict:
    reset(db, r)
    fake.reset()
    now = dt.datetime.now(dt.timezone.utc)
    # the job's indexes and its fresh-install tick first, on an empty database
    tick(binary, env, job, now, workdir, f"{label}-install")
    docs = [{"_id": ObjectId(), "key": f"bench:{i}", "type": "ticket.created", "via": "email",
             "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now,
             "updated_at": now, "recipient": {"role": "agent", "email": f"agent{i}@bench.example"},
             "subject": f"Bench {i}", "text": "hello", "html": "<p>hello</p>"} for i in range(n)]
    for i in range(0, n, 1000):
        db["conversation-notification"].insert_many(docs[i:i + 1000], ordered=False)
    wall = cmds = rtt = cpu = rss = 0.0
    ticks = 0
    while db["conversation-notification"].count_documents({"status": "pending"}) and ticks < 200:
        ticks += 1
        m = tick(binary, env, job, now + dt.timedelta(seconds=ticks), workdir,
                 f"{label}-deliver-{ticks}")
        wall += m["duration_s"]
        cpu += m["user_s"] + m["sys_s"]
        cmds += m["counts"].get("db_commands", 0)
        rtt += m["counts"].get("redis_round_trips", 0)
        rss = max(rss, m["maxrss_kb"] / 1024)
    sent = fake.sent()
    return {"label": f"{label} (once {job})", "entries": n, "sent_at_fake": sent, "ticks": ticks, "wall_s": wall,
            "mails_per_s": sent / wall if wall else 0, "db_per_1000": cmds * 1000 / n,
            "cpu_us_per_mail": cpu * 1e6 / max(sent, 1),
            "redis_rt_per_1000": rtt * 1000 / n, "peak_rss_mb": rss}


KINDS = ("customer_message", "customer_message", "customer_message", "customer_message",
         "assigned", "assigned", "assigned", "resolved", "resolved", "created")


def checkpoint(db, at):
    """The notification job's checkpoint (the newest updated_at a tick read) at `at`."""
    db["conversation-notify-state"].update_one(
        {"_id": "checkpoint"}, {"$set": {"changed_since": at, "at": at},
                                "$unset": {"first_install_at": ""}}, upsert=True)


def seed(db, r, total, changed, t_prev, at):
    """`total` conversations as a previous tick (at t_prev) left them — each
    with supportd's notify-state record — of which `changed` have changed
    since (their final state is inserted directly: FerretDB cannot run a
    range or $in update over 500,000 documents in bench time). The changes,
    by i % 10: 0-3 customer messages (1-3 new inbound messages), 4-6 an
    assignment, 7-8 resolved, 9 a new ticket (no record). Returns seconds."""
    t0 = time.monotonic()
    n_rooms = max(1, total // 50)
    rooms = [{"_id": ObjectId(), "name": f"room {k}", "timezone": "Europe/Berlin",
              "business_hours": {d: [{"from": "09:00", "to": "12:00"}, {"from": "13:00", "to": "17:00"}]
                                 for d in ("mon", "tue", "wed", "thu", "fri")},
              "holidays": ["2026-12-25"], "email_from": "desk@bench.example",
              "members": [{"user_id": f"a{k}", "name": "Anna", "email": f"anna{k}@bench.example", "role": "agent"},
                          {"user_id": f"b{k}", "name": "Ben", "email": f"ben{k}@bench.example", "role": "agent"},
                          {"user_id": f"m{k}", "name": "Max", "email": f"max{k}@bench.example", "role": "manager"}]}
             for k in range(n_rooms)]
    for i in range(0, n_rooms, 2000):
        db["conversation-room"].insert_many(rooms[i:i + 2000], ordered=False)
    created = t_prev - dt.timedelta(hours=2)
    step = max(1, total // changed)  # the changed ones spread through the collection
    chunk_c, chunk_s, chunk_m = [], [], []

    def flush(final=False):
        for coll, chunk in (("conversation-conversation", chunk_c), ("conversation-notify-state", chunk_s),
                            ("conversation-message", chunk_m)):
            if chunk and (final or len(chunk) >= 2000):
                db[coll].insert_many(chunk, ordered=False)
                chunk.clear()

    n_changed = 0
    for i in range(total):
        k = i % n_rooms
        oid = ObjectId()
        conv = {"_id": oid, "room_id": rooms[k]["_id"], "subject": f"order {i} arrived broken",
                "channel": "email", "status": "open", "priority": "normal", "assignee_id": f"a{k}",
                "contact": {"name": "Lena", "email": f"lena{i}@bench.example"},
                "created_at": created, "updated_at": t_prev - dt.timedelta(minutes=5),
                "first_response_at": created, "last_agent_message_at": created,
                "last_customer_message_at": created, "escalation_level": 0}
        state = {"_id": oid, "status": "open", "assignee": f"a{k}", "customer_at": created,
                 "seen_updated_at": conv["updated_at"], "at": t_prev}
        kind = None
        if i % step == 0 and n_changed < changed:
            kind = KINDS[n_changed % 10]
            n_changed += 1
            conv["updated_at"] = at
            if kind == "customer_message":
                conv["last_customer_message_at"] = at
                for m in range(1 + n_changed % 3):
                    chunk_m.append({"_id": ObjectId(), "conversation_id": oid, "room_id": rooms[k]["_id"],
                                    "direction": "inbound", "channel": "email", "body": "still broken",
                                    "created_at": at - dt.timedelta(seconds=m), "updated_at": at})
            elif kind == "assigned":
                conv["assignee_id"] = f"b{k}"
                conv["assigned_at"] = at
            elif kind == "resolved":
                conv["status"] = "resolved"
                conv["resolved_at"] = at
            elif kind == "created":
                conv["created_at"] = conv["last_customer_message_at"] = at
                conv["first_response_at"] = conv["last_agent_message_at"] = None
                conv["assignee_id"] = None
        chunk_c.append(conv)
        if kind != "created":
            chunk_s.append(state)
        flush()
    flush(final=True)
    checkpoint(db, t_prev)
    return time.monotonic() - t0


def one_at_a_time(url, limit, since, at) -> dict:
    """A notifier that handles one conversation at a time — the shape of a
    naive job: the change query, then per conversation its state record, its
    room, its new messages, an outbox insert, the state upsert and the SLA
    write, each a round trip (bodies are fixed text: no rules). Writes go to
    collections of its own (`…-one`) and a field of its own on the
    conversation, so supportd's run is not disturbed. The first `limit`
    changed conversations; the change query's own cost is in the result
    (`scan_s`) so it can be extrapolated."""
    from common import CommandCounter
    counter = CommandCounter()
    c = pymongo.MongoClient(url, event_listeners=[counter])
    db = c[DB]
    convs, states, rooms = db["conversation-conversation"], db["conversation-notify-state"], db["conversation-room"]
    msgs, outbox, own_states = db["conversation-message"], db["conversation-notification-one"], db["conversation-notify-state-one"]
    t0 = time.monotonic()
    cur = convs.find({"updated_at": {"$gte": since}}, batch_size=500)
    first = next(cur)
    scan_first = time.monotonic() - t0
    counter.reset()
    t1 = time.monotonic()
    n = 0
    for conv in [first] + [d for _, d in zip(range(limit - 1), cur)]:
        state = states.find_one({"_id": conv["_id"]})
        room = rooms.find_one({"_id": conv["room_id"]})
        new = list(msgs.find({"conversation_id": conv["_id"], "direction": "inbound"}))
        to = room["members"][0]["email"]
        kind = "created" if state is None else "activity"
        try:
            outbox.insert_one({"key": f"{kind}:{conv['_id']}:{ms_of(at)}", "type": f"ticket.{kind}",
                               "status": "pending", "recipient": {"email": to}, "subject": conv["subject"],
                               "text": f"{len(new)} new message(s)", "created_at": at, "next_attempt_at": at})
        except pymongo.errors.DuplicateKeyError:
            pass
        own_states.update_one({"_id": conv["_id"]}, {"$set": {"status": conv["status"], "seen_updated_at": conv["updated_at"], "at": at}}, upsert=True)
        convs.update_one({"_id": conv["_id"], "updated_at": conv["updated_at"]}, {"$set": {"bench_sla": {"next_due": at}}})
        n += 1
    per = (time.monotonic() - t1) / n
    cur.close()
    c.close()
    return {"conversations": n, "per_conv_ms": per * 1000, "db_per_1000": counter.n * 1000 / n,
            "first_result_s": scan_first}


def ms_of(t):
    return int(t.timestamp() * 1000)


def decide(binary, env, db, r, fake, total, changed, workdir, one_limit, cpu_per_mail) -> dict:
    reset(db, r)
    fake.reset()
    at = dt.datetime(2026, 11, 24, 10, 30, tzinfo=dt.timezone.utc)  # a Tuesday, in business hours
    t_prev = at - dt.timedelta(minutes=1)
    # indexes (and their GIN twins) first, on the empty database, as a running install has them
    tick(binary, env, "notification", t_prev - dt.timedelta(hours=1), workdir, "decide-install")
    seed_s = seed(db, r, total, changed, t_prev, at)
    say(f"seeded {total:,} conversations ({changed:,} changed) in {seed_s:.0f} s")
    # 90 s after the changes: the next tick's skew margin (60 s) no longer reaches them
    m = tick(binary, env, "notification", at + dt.timedelta(seconds=90), workdir, "decide-changed")
    say(f"supportd tick: {m['wall_s']:.0f} s")
    types = {}
    for e in db["conversation-notification"].find({}, {"type": 1}):
        types[e["type"]] = types.get(e["type"], 0) + 1
    # the same tick with nothing changed since and nothing left to deliver: process
    # start, rules, the change query (a scan of the collection on FerretDB). The
    # checkpoint is the newest updated_at read, so the changes stay in the next
    # tick's margin (read again, found unchanged): move it as a newer change would.
    db.drop_collection("conversation-notification")
    checkpoint(db, at + dt.timedelta(minutes=2))
    idle = tick(binary, env, "notification", at + dt.timedelta(seconds=150), workdir, "decide-idle")
    if idle["counts"].get("changed") or idle["counts"].get("due"):
        die(f"the idle tick was not idle: {idle['counts']}")
    one = one_at_a_time(env["MONGO_DB_URL"], one_limit, at - dt.timedelta(seconds=1), at)
    cpu, idle_cpu = m["user_s"] + m["sys_s"], idle["user_s"] + idle["sys_s"]
    c = m["counts"]
    net = max(cpu - idle_cpu, 1e-9)
    # the tick also delivered the first of its mails: their CPU, as the delivery part measured it
    delivery_cpu = (c.get("outbox_sent", 0) * cpu_per_mail / 1e6) if cpu_per_mail else 0.0
    one_total_s = idle["wall_s"] + one["per_conv_ms"] / 1000 * changed
    return {"total": total, "changed": changed, "seed_s": seed_s,
            "wall_s": m["wall_s"], "cpu_s": cpu, "idle_cpu_s": idle_cpu, "idle_wall_s": idle["wall_s"],
            "cpu_us_per_conv": net * 1e6 / changed,
            "cpu_us_per_conv_no_delivery": max(net - delivery_cpu, 0) * 1e6 / changed,
            "delivery_cpu_s": delivery_cpu,
            "rules_share_no_delivery": c.get("rules_cpu_us", 0) / 1e6 / max(net - delivery_cpu, 1e-9),
            "render_share_no_delivery": c.get("render_cpu_us", 0) / 1e6 / max(net - delivery_cpu, 1e-9),
            "rules_cpu_s": c.get("rules_cpu_us", 0) / 1e6, "render_cpu_s": c.get("render_cpu_us", 0) / 1e6,
            "rules_share": c.get("rules_cpu_us", 0) / 1e6 / net, "render_share": c.get("render_cpu_us", 0) / 1e6 / net,
            "rule_calls": c.get("rule_calls"),
            "db_commands": c.get("db_commands"), "db_per_1000": c.get("db_commands", 0) * 1000 / changed,
            "redis_round_trips": c.get("redis_round_trips"),
            "counted_changed": c.get("changed"), "counted_due": c.get("due"),
            "notifications": c.get("notifications"), "by_type": types,
            "outbox_sent": c.get("outbox_sent"), "maxrss_mb": m["maxrss_kb"] / 1024,
            "one": one, "one_total_s": one_total_s}


def main():
    ap = argparse.ArgumentParser(prog="scripts/bench notification", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--entries", type=int)
    ap.add_argument("--total", type=int)
    ap.add_argument("--changed", type=int)
    ap.add_argument("--bin", type=Path, default=CACHE / "bench-out" / "bin" / "supportd")
    ap.add_argument("--baseline-bin", type=Path, help="a second binary to deliver the same entries")
    ap.add_argument("--skip-decide", action="store_true")
    ap.add_argument("--skip-delivery", action="store_true")
    ap.add_argument("--one-at-a-time", type=int, default=1000,
                    help="changed conversations the one-at-a-time notifier handles (then extrapolated)")
    ap.add_argument("--gin", choices=("on", "off"), default="on",
                    help="the index-served test database (scripts/services.d/gin-indexes.sql) or "
                         "FerretDB with its own indexes only")
    ap.add_argument("--out", type=Path, default=CACHE / "bench")
    args = ap.parse_args()
    n = args.entries or (1000 if args.quick else 5000)
    total = args.total or (2000 if args.quick else 500000)
    changed = args.changed or (500 if args.quick else 100000)
    services = load_services()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    workdir = (args.out / f"notification-{stamp}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    own_redis = PrivateRedis(workdir)
    own_redis.start()
    services.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(own_redis.port))
    pg = Postgres(services["STATE_PG_PORT"])
    ferret = PrivateFerretDB(pg, workdir)
    fake = Fake()
    results = {}
    try:
        ferret.start()
        # the trigger gives the indexes supportd creates (after each reset) their GIN twins
        pg.gin(BENCH_PG_DB, args.gin == "on", schemas=[DB])
        db = pymongo.MongoClient(ferret.url)[DB]
        r = redislib.Redis(host="127.0.0.1", port=own_redis.port)
        env = env_for(services, ferret.url, fake)
        results["delivery"] = [] if args.skip_delivery else [
            delivery(args.bin.resolve(), env, db, r, fake, n, workdir, "supportd", "notification"),
            delivery(args.bin.resolve(), env, db, r, fake, n, workdir, "supportd", "outbox")]
        if args.baseline_bin and not args.skip_delivery:
            results["delivery"].append(delivery(args.baseline_bin.resolve(), env, db, r, fake, n,
                                                workdir, "baseline", "notification"))
        if not args.skip_decide:
            per_mail = next((d["cpu_us_per_mail"] for d in results["delivery"] if "outbox" in d["label"]
                             and d["label"].startswith("supportd")), 0)
            results["decide"] = decide(args.bin.resolve(), env, db, r, fake, total, changed, workdir,
                                       args.one_at_a_time, per_mail)
    finally:
        fake.stop()
        ferret.stop()
        own_redis.stop()
    lines = ["| deliverer | entries | ticks | wall | mails/s | db commands / 1,000 | Redis round trips / 1,000 | peak RSS of a tick |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for d in results["delivery"]:
        lines.append(f"| {d['label']} | {d['entries']:,} ({d['sent_at_fake']:,} at the fake) | {d['ticks']} | "
                     f"{d['wall_s']:.1f} s | {d['mails_per_s']:.0f} | {d['db_per_1000']:.0f} | "
                     f"{d['redis_rt_per_1000']:.0f} | {d['peak_rss_mb']:.0f} MB |")
    if "decide" in results:
        d = results["decide"]
        o = d["one"]
        lines += ["", "| notifier | changed / conversations | tick wall | CPU / conversation | rules (decide) share | templates share | db commands / 1,000 | mails enqueued | peak RSS |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|",
                  f"| supportd | {d['changed']:,} / {d['total']:,} | {d['wall_s']:.0f} s | {d['cpu_us_per_conv']:.0f} µs | "
                  f"{d['rules_share'] * 100:.1f} % | {d['render_share'] * 100:.1f} % | {d['db_per_1000']:.0f} | "
                  f"{d['notifications']:,} ({d['outbox_sent']:,} delivered in the tick) | {d['maxrss_mb']:.0f} MB |",
                  f"| one at a time (extrapolated from {o['conversations']:,}) | {d['changed']:,} / {d['total']:,} | "
                  f"{d['one_total_s']:.0f} s | — | — | — | {o['db_per_1000']:.0f} | — | — |",
                  "",
                  f"supportd tick: {d['wall_s']:.0f} s for {d['changed']:,} changed of {d['total']:,} "
                  f"(idle tick, the same query with nothing changed: {d['idle_wall_s']:.0f} s); one at a time: "
                  f"{o['per_conv_ms']:.1f} ms a conversation + the query = {d['one_total_s']:.0f} s "
                  f"(**{d['one_total_s'] / d['wall_s']:.1f}×** supportd's wall). CPU: {d['cpu_s']:.1f} s "
                  f"(idle {d['idle_cpu_s']:.1f} s); in rules other than templates {d['rules_cpu_s']:.1f} s, "
                  f"in templates.lua {d['render_cpu_s']:.1f} s ({d['rule_calls']:,} calls). "
                  f"Without the tick's deliveries ({d['outbox_sent']:,} mails, {d['delivery_cpu_s']:.1f} s "
                  f"at the delivery part's CPU per mail): {d['cpu_us_per_conv_no_delivery']:.0f} µs a "
                  f"conversation, rules {d['rules_share_no_delivery'] * 100:.1f} %, templates "
                  f"{d['render_share_no_delivery'] * 100:.1f} %. "
                  f"By type: {', '.join(f'{k} {v:,}' for k, v in sorted(d['by_type'].items()))}."]
    text = "\n".join(lines)
    say(text)
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / f"notification-{stamp}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
