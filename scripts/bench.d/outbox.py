"""scripts/bench outbox: draining the notification outbox.

Seeds --pending e-mail entries (status pending, due) beside --history entries
already sent (the outbox keeps every entry it ever delivered, so the
collection grows with the platform's age), into a fresh database `bench_outbox`,
and drains them with `supportd once outbox` (release build; up to 200 entries
a tick, through SMTP to the services' Mailpit) until none is pending, on the
same data in one run:

  before  FerretDB with its own btree indexes only (`--gin off`: every find or
          update by _id scans the table), on the first --before-ticks ticks,
          extrapolated to all entries (clearly labelled);
  after   the index-served test database (GIN twins of FerretDB's indexes,
          scripts/services.d/gin-indexes.sql), the whole drain.

For each: wall time (sum of the ticks' process wall times), entries/s,
database commands and Redis round trips per entry (tick.end counts), the
processes' CPU per entry. Per entry supportd claims it in Redis (SET NX),
re-reads it by _id, sends it, records the send in Redis and updates the entry
by {_id, status: pending}; the tick's due query is {status: pending,
next_attempt_at <= now}, sorted, limit 200.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import pymongo
from bson import ObjectId
from pymongo import DeleteMany

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, REPO, BENCH_PG_DB, Postgres, PrivateFerretDB, PrivateRedis,  # noqa: E402
                    die, load_services, log_events, run_measured, say, url_with_db)

DB = "bench_outbox"
PREFIX = "bench:"
OUTBOX = "conversation-notification"
TICK_LIMIT = 5000  # JOB_OUTBOX_LIMIT, src/jobs/job.h


def fmt_s(s):
    if s is None:
        return "—"
    return f"{s * 1000:.0f} ms" if s < 10 else (f"{s:.1f} s" if s < 600 else f"{s / 60:.1f} min")


def fmt_n(v, nd=0):
    return "—" if v is None else f"{v:,.{nd}f}"


def entry(i: int, now: dt.datetime, sent: bool) -> dict:
    d = {"_id": ObjectId(), "key": f"bench.{'sent' if sent else 'pending'}:{i}:{ObjectId()}",
         "type": "ticket.unsnoozed", "conversation_id": ObjectId(), "via": "email",
         "recipient": {"user_id": ObjectId(), "email": f"agent{i % 500}@bench.example",
                       "name": f"Agent {i % 500}"},
         "subject": f"Back from snooze: order {100000 + i}",
         "text": f"Ticket {100000 + i} is back in your queue.\n",
         "html": f"<p>Ticket {100000 + i} is back in your queue.</p>",
         "attempts": 0, "created_at": now - dt.timedelta(minutes=5), "updated_at": now - dt.timedelta(minutes=5),
         "next_attempt_at": now - dt.timedelta(minutes=5) + dt.timedelta(milliseconds=i)}
    if sent:
        d.update(status="sent", attempts=1, sent_at=now - dt.timedelta(days=1 + i % 300),
                 provider="smtp", provider_message_id=f"<{i}@bench.example>")
    else:
        d["status"] = "pending"
    return d


def seed(db, pending: int, history: int, now: dt.datetime) -> tuple[list[dict], float]:
    t0 = time.monotonic()
    db.client.drop_database(db.name)
    coll = db[OUTBOX]
    for k in range(0, history, 5000):
        coll.insert_many([entry(i, now, True) for i in range(k, min(history, k + 5000))], ordered=False)
        if (k // 5000) % 10 == 9:
            say(f"  seeded {k + 5000:,}/{history:,} sent entries ({time.monotonic() - t0:.0f} s)")
    originals = [entry(i, now, False) for i in range(pending)]
    coll.insert_many(originals, ordered=False)
    return originals, time.monotonic() - t0


def restore(db, originals: list[dict], r):
    """The pending entries back as seeded (by _id, multi:true statements in
    bulks of 500: see BENCH_NOTES in snooze.py), claims and sent marks gone."""
    coll = db[OUTBOX]
    ids = [o["_id"] for o in originals]
    for k in range(0, len(ids), 500):
        coll.bulk_write([DeleteMany({"_id": i}) for i in ids[k:k + 500]], ordered=False)
    coll.insert_many(originals, ordered=False)
    r.flushdb()


def drain(binary: Path, env: dict, workdir: Path, name: str, now: dt.datetime, max_ticks: int,
          timeout_s: float) -> dict:
    """`supportd once outbox` until nothing is due (or max_ticks)."""
    out = {"ticks": 0, "wall_s": 0.0, "tick_s": 0.0, "cpu_s": 0.0, "sent": 0, "due": 0,
           "db_commands": 0, "redis_round_trips": 0, "other": {}, "peak_rss_mb": 0.0}
    for k in range(max_ticks):
        err = workdir / f"{name}-{k:03d}.stderr"
        m = run_measured([str(binary), "once", "outbox", "--now", now.strftime("%Y-%m-%dT%H:%M:%SZ")],
                         env, workdir, err, timeout_s)
        ends = [e for e in log_events(err) if e.get("event") == "tick.end"]
        if m["rc"] != 0 or not ends:
            die(f"{name}: supportd once outbox exited {m['rc']}; log {err}:\n"
                + err.read_text(errors="replace")[-1500:])
        c = ends[-1].get("counts", {})
        out["ticks"] += 1
        out["wall_s"] += m["wall_s"]
        out["tick_s"] += ends[-1]["duration_ms"] / 1000
        out["cpu_s"] += m["user_s"] + m["sys_s"]
        out["peak_rss_mb"] = max(out["peak_rss_mb"], m["maxrss_kb"] / 1024)
        out["due"] += c.get("outbox_due", 0)
        out["sent"] += c.get("outbox_sent", 0)
        out["db_commands"] += c.get("db_commands", 0)
        out["redis_round_trips"] += c.get("redis_round_trips", 0)
        for key in ("outbox_retried", "outbox_failed", "outbox_skipped", "outbox_recovered"):
            out["other"][key] = out["other"].get(key, 0) + c.get(key, 0)
        if c.get("outbox_due", 0) == 0:
            break
    return out


def per_entry(d: dict) -> dict:
    n = d["sent"] or None
    return {"ms": d["wall_s"] / n * 1000 if n else None,
            "cmds": d["db_commands"] / n if n else None,
            "rtt": d["redis_round_trips"] / n if n else None,
            "cpu_us": d["cpu_s"] / n * 1e6 if n else None}


def main():
    ap = argparse.ArgumentParser(prog="scripts/bench outbox", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pending", type=int, default=5000, help="entries to deliver (default 5000)")
    ap.add_argument("--history", type=int, default=200000,
                    help="entries already sent, in the same collection (default 200000)")
    ap.add_argument("--before-ticks", type=int, default=3,
                    help="ticks of the 'before' drain, extrapolated to all entries (default 3; 0: skip it)")
    ap.add_argument("--bin", type=Path, default=CACHE / "bench-out" / "bin" / "supportd")
    ap.add_argument("--label", help="what the binary is, for the report (default: the git commit)")
    ap.add_argument("--tick-timeout", type=float, default=1800)
    ap.add_argument("--out", type=Path, default=CACHE / "bench")
    args = ap.parse_args()
    args.bin = args.bin.resolve()
    if not args.bin.exists():
        die(f"{args.bin} missing (scripts/bench builds it unless --bin is given)")
    services = load_services()
    if not services.get("SMTP_URL"):
        die("SMTP_URL unknown: scripts/services up (Mailpit)")
    pg = Postgres(services["STATE_PG_PORT"])
    started = dt.datetime.now(dt.timezone.utc)
    workdir = args.out / f"outbox-{started.strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True, exist_ok=True)
    own_redis = PrivateRedis(workdir)
    own_redis.start()
    ferret = PrivateFerretDB(pg, workdir)
    try:
        ferret.start()
    except BaseException:
        own_redis.stop()
        raise
    import redis as redislib
    r = redislib.Redis(host="127.0.0.1", port=own_redis.port)
    own = ("QM_SUPPORT_", "MONGO_", "REDIS_", "TWILIO_", "SENDGRID_", "SMTP_", "MAILPIT_")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(own) and k not in ("LOG_LEVEL", "LOG_FORMAT", "LD_PRELOAD", "ASAN_OPTIONS")}
    env.update(MONGO_DB_URL=url_with_db(ferret.url, DB), REDIS_HOST="127.0.0.1", REDIS_PORT=str(own_redis.port),
               QM_SUPPORT_REDIS_PREFIX=PREFIX, QM_SUPPORT_RULES_DIR=str(REPO / "rules"),
               QM_SUPPORT_EMAIL_PROVIDER="smtp", QM_SUPPORT_EMAIL_FROM="support@bench.example",
               SMTP_URL=services["SMTP_URL"], LOG_FORMAT="json", LOG_LEVEL="info")
    label = args.label
    if not label:
        import subprocess
        label = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True).stdout.strip()
        if subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"],
                          capture_output=True, text=True).stdout.strip():
            label += " + uncommitted src changes"
    res = {"date": started.strftime("%Y-%m-%d"), "argv": "".join(" " + a for a in sys.argv[1:]),
           "pending": args.pending, "history": args.history, "label": label, "cpus": os.cpu_count()}
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    client = pymongo.MongoClient(ferret.url, tz_aware=True)
    db = client[DB]
    try:
        # before: FerretDB's own indexes only
        pg.gin(BENCH_PG_DB, False, schemas=[DB])
        say(f"==> seeding {args.history:,} sent + {args.pending:,} pending entries (not measured) ...")
        originals, res["seed_s"] = seed(db, args.pending, args.history, now)
        say(f"  {fmt_s(res['seed_s'])}")
        n_ticks = -(-args.pending // TICK_LIMIT)
        if args.before_ticks:
            pg.vacuum(BENCH_PG_DB, DB)
            say(f"==> before (FerretDB's own indexes only): {args.before_ticks} ticks of {TICK_LIMIT} ...")
            b = drain(args.bin, env, workdir, "before", now, args.before_ticks, args.tick_timeout)
            b["per"] = per_entry(b)
            b["extrapolated_s"] = b["wall_s"] / b["sent"] * args.pending if b["sent"] else None
            res["before"] = b
            say(f"  {b['sent']} sent in {fmt_s(b['wall_s'])}: {b['per']['ms']:.1f} ms/entry; "
                f"extrapolated to {args.pending:,}: {fmt_s(b['extrapolated_s'])}")
        # after: the index-served database
        pg.gin(BENCH_PG_DB, True, schemas=[DB])
        restore(db, originals, r)
        pg.vacuum(BENCH_PG_DB, DB)
        say(f"==> after (index-served): the whole drain, {n_ticks} ticks of {TICK_LIMIT} ...")
        a = drain(args.bin, env, workdir, "after", now, n_ticks + 5, args.tick_timeout)
        a["per"] = per_entry(a)
        res["after"] = a
        left = db[OUTBOX].count_documents({"status": "pending"})
        say(f"  {a['sent']:,} sent in {a['ticks']} ticks, {fmt_s(a['wall_s'])}: {a['per']['ms']:.2f} ms/entry; "
            f"{left} left pending")
        if a["sent"] != args.pending or left:
            die(f"after: {a['sent']} sent, {left} left pending (expected {args.pending} and 0)")
    finally:
        client.close()
        try:
            c = pymongo.MongoClient(ferret.url, serverSelectionTimeoutMS=5000)
            c.drop_database(DB)
            c.close()
        except Exception:
            pass
        ferret.stop()
        own_redis.stop()
    b, a = res.get("before"), res["after"]
    L = [f"### Outbox drain benchmark ({res['date']}, `scripts/bench outbox{res['argv']}`)", "",
         f"{args.pending:,} pending e-mail entries among {args.history:,} already sent in "
         f"`{OUTBOX}`; `supportd once outbox` ({TICK_LIMIT} a tick) until none is due, SMTP to Mailpit; "
         f"the bench's own FerretDB 1.24 and Redis; {res['cpus']} CPUs; supportd {res['label']}.", "",
         "| | before: FerretDB's own indexes | after: index-served (GIN twins) |",
         "|---|---:|---:|",
         f"| drain of {args.pending:,} | {fmt_s(b and b['extrapolated_s'])} (extrapolated from "
         f"{b and b['sent']}) | {fmt_s(a['wall_s'])} ({a['ticks']} ticks) |",
         f"| per entry | {fmt_n(b and b['per']['ms'], 1)} ms | {fmt_n(a['per']['ms'], 2)} ms |",
         f"| entries/s | {fmt_n(b and b['per']['ms'] and 1000 / b['per']['ms'])} | {fmt_n(1000 / a['per']['ms'])} |",
         f"| database commands per entry | {fmt_n(b and b['per']['cmds'], 2)} | {fmt_n(a['per']['cmds'], 2)} |",
         f"| Redis round trips per entry | {fmt_n(b and b['per']['rtt'], 2)} | {fmt_n(a['per']['rtt'], 2)} |",
         f"| client CPU per entry | {fmt_n(b and b['per']['cpu_us'])} µs | {fmt_n(a['per']['cpu_us'])} µs |",
         f"| peak RSS of a tick | {fmt_n(b and b['peak_rss_mb'])} MB | {fmt_n(a['peak_rss_mb'])} MB |", ""]
    if b and b.get("extrapolated_s"):
        x = b["extrapolated_s"] / a["wall_s"]
        L.append(f"- **{x:.1f}× faster** index-served (target ≥ 10×: {'met' if x >= 10 else '**missed**'}).")
    L.append("")
    md = "\n".join(L)
    say("\n" + "=" * 78 + "\n" + md)
    out_md = args.out / f"outbox-{res['date']}.md"
    out_md.write_text(md + "\n")
    (workdir / "report.md").write_text(md + "\n")
    (workdir / "results.json").write_text(json.dumps(res, indent=2, default=str))
    say(f"wrote {out_md} and {workdir / 'results.json'}")


if __name__ == "__main__":
    main()
