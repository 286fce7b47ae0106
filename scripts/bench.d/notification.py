"""scripts/bench notification: the notification job's tick and outbox delivery
at volume, on a FerretDB 1.24 and a redis-server of the bench's own, with
the SendGrid fake (tests/fakes/provider_fake.py) on loopback.

Two measurements, each in the same run:

  delivery  --entries pending email entries (default 5000; --quick 1000),
            delivered by `supportd once notification` ticks until none is
            left: mails per second (entries / summed tick wall time),
            database commands per 1,000 entries (mongoc APM), Redis round
            trips, against --baseline-bin (e.g. the previous one-at-a-time
            deliverer built from main) when given.
  decide    --changed of --total conversations (default 2000 of 10000;
            --quick 500 of 2000) changed since the last tick (an assignment
            and a customer message each): CPU per conversation (net of an
            idle tick), database commands per 1,000 conversations, peak RSS;
            delivery of the resulting mails is included.

Not measured here (see the README): the 100,000-of-500,000 size, the share
of the CPU spent in Lua, a one-conversation-at-a-time notifier.
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
    wall = cmds = rtt = 0.0
    ticks = 0
    while db["conversation-notification"].count_documents({"status": "pending"}) and ticks < 200:
        ticks += 1
        m = tick(binary, env, job, now + dt.timedelta(seconds=ticks), workdir,
                 f"{label}-deliver-{ticks}")
        wall += m["duration_s"]
        cmds += m["counts"].get("db_commands", 0)
        rtt += m["counts"].get("redis_round_trips", 0)
    sent = fake.sent()
    return {"label": f"{label} (once {job})", "entries": n, "sent_at_fake": sent, "ticks": ticks, "wall_s": wall,
            "mails_per_s": sent / wall if wall else 0, "db_per_1000": cmds * 1000 / n,
            "redis_rt_per_1000": rtt * 1000 / n}


def decide(binary, env, db, r, fake, total, changed, workdir) -> dict:
    reset(db, r)
    fake.reset()
    t0 = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(days=1)
    rooms = []
    for k in range(max(1, total // 50)):
        rooms.append({"_id": ObjectId(), "name": f"room {k}", "timezone": "Europe/Berlin",
                      "business_hours": {d: [{"from": "09:00", "to": "12:00"}, {"from": "13:00", "to": "17:00"}]
                                         for d in ("mon", "tue", "wed", "thu", "fri")},
                      "holidays": ["2026-12-25"], "email_from": "desk@bench.example",
                      "members": [{"user_id": f"a{k}", "name": "Anna", "email": f"anna{k}@bench.example", "role": "agent"},
                                  {"user_id": f"m{k}", "name": "Max", "email": f"max{k}@bench.example", "role": "manager"}]})
    db["conversation-room"].insert_many(rooms)
    convs = [{"_id": ObjectId(), "room_id": rooms[i % len(rooms)]["_id"], "subject": f"t{i}",
              "channel": "email", "status": "open", "priority": "normal", "assignee_id": None,
              "contact": {"name": "Lena", "email": f"lena{i}@bench.example"}, "created_at": t0,
              "updated_at": t0, "last_customer_message_at": t0, "escalation_level": 0}
             for i in range(total)]
    for i in range(0, total, 1000):
        db["conversation-conversation"].insert_many(convs[i:i + 1000], ordered=False)
    now = t0 + dt.timedelta(hours=1)
    install = tick(binary, env, "notification", now, workdir, "decide-install")
    idle = tick(binary, env, "notification", now + dt.timedelta(minutes=1), workdir, "decide-idle")
    at = now + dt.timedelta(minutes=2)
    ids = [c["_id"] for c in convs[:changed]]
    for i in range(0, changed, 1000):
        part = ids[i:i + 1000]
        db["conversation-conversation"].update_many(
            {"_id": {"$in": part}}, {"$set": {"updated_at": at, "last_customer_message_at": at}})
    m = tick(binary, env, "notification", at + dt.timedelta(minutes=1), workdir, "decide-changed")
    cpu = m["user_s"] + m["sys_s"]
    idle_cpu = idle["user_s"] + idle["sys_s"]
    c = m["counts"]
    return {"total": total, "changed": changed, "install_wall_s": install["wall_s"],
            "wall_s": m["wall_s"], "cpu_s": cpu, "idle_cpu_s": idle_cpu,
            "cpu_us_per_conv": (cpu - idle_cpu) * 1e6 / changed,
            "db_commands": c.get("db_commands"), "db_per_1000": c.get("db_commands", 0) * 1000 / changed,
            "notifications": c.get("notifications"), "outbox_sent": c.get("outbox_sent"),
            "maxrss_mb": m["maxrss_kb"] / 1024}


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
    ap.add_argument("--gin", choices=("on", "off"), default="on",
                    help="the index-served test database (scripts/services.d/gin-indexes.sql) or "
                         "FerretDB with its own indexes only")
    ap.add_argument("--out", type=Path, default=CACHE / "bench")
    args = ap.parse_args()
    n = args.entries or (1000 if args.quick else 5000)
    total = args.total or (2000 if args.quick else 10000)
    changed = args.changed or (500 if args.quick else 2000)
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
            # `once outbox` (200 entries a tick) is what both versions have
            results["delivery"].append(delivery(args.baseline_bin.resolve(), env, db, r, fake, n,
                                                workdir, "baseline", "outbox"))
        if not args.skip_decide:
            results["decide"] = decide(args.bin.resolve(), env, db, r, fake, total, changed, workdir)
    finally:
        fake.stop()
        ferret.stop()
        own_redis.stop()
    lines = ["| deliverer | entries | ticks | wall | mails/s | db commands / 1,000 | Redis round trips / 1,000 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for d in results["delivery"]:
        lines.append(f"| {d['label']} | {d['entries']:,} ({d['sent_at_fake']:,} at the fake) | {d['ticks']} | "
                     f"{d['wall_s']:.1f} s | {d['mails_per_s']:.0f} | {d['db_per_1000']:.0f} | "
                     f"{d['redis_rt_per_1000']:.0f} |")
    if "decide" in results:
        d = results["decide"]
        lines += ["", "| changed / conversations | tick wall | CPU / conversation | db commands / 1,000 | mails | peak RSS |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| {d['changed']:,} / {d['total']:,} | {d['wall_s']:.1f} s | {d['cpu_us_per_conv']:.0f} µs | "
                  f"{d['db_per_1000']:.0f} | {d['outbox_sent']} | {d['maxrss_mb']:.0f} MB |"]
    text = "\n".join(lines)
    say(text)
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / f"notification-{stamp}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
