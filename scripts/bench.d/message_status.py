"""scripts/bench message-status: the message-status tick against a stream of
signed webhooks, compared in the same run with the floor and with a
one-event-at-a-time consumer.

Seeds M messages (half Twilio SMS, half SendGrid email, all `sent`) into a
FerretDB of the bench's own, and appends N entries to `status-events`: per
message its `delivered` and `read`/`open` events (5% of messages out of order),
10% of the entries duplicates of earlier ones (SendGrid's and Twilio's
retries), 1% forged (a wrong key). Twilio entries are form bodies signed with
twilio's RequestValidator; SendGrid entries carry EVENTS_PER_SG events each,
as SendGrid batches them, signed with ECDSA P-256.

  supportd  `supportd once message-status` (ReleaseSafe), its own CPU (wait4
            rusage), peak RSS, and the db_commands / redis_round_trips its
            tick.end counts;
  floor     the same final states written as raw unordered bulks of
            update-by-_id, one statement per message, in a fresh copy;
  one-by-one  per entry: XREADGROUP COUNT 1, verify, find the message by
            provider_message_id, update it, XACK — run on --subset entries
            and extrapolated.

  scripts/bench message-status [--quick] [--messages M] [--entries N] [--subset K]
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pymongo  # noqa: E402
import redis as redislib  # noqa: E402
from bson import ObjectId  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from twilio.request_validator import RequestValidator  # noqa: E402

from common import (BENCH_PG_DB, CACHE, REPO, CommandCounter, Postgres, PrivateFerretDB,  # noqa: E402
                    PrivateRedis, die, load_services, log_events, ping, run_measured, say,
                    url_with_db, warn)

PREFIX = "bench:ms:"
STREAM = PREFIX + "status-events"
DB = "bench_ms"
TOKEN = "bench-twilio-token"
ACCOUNT = "AC" + "b" * 32
HOOK = "https://hooks.bench.example/webhooks/twilio/status"
EVENTS_PER_SG = 10  # SendGrid posts events in batches (every 30 s or 768 KB per server)
RANK = {"queued": 0, "sending": 10, "sent": 20, "failed": 25, "undelivered": 25, "delivered": 30,
        "read": 40}


def gen(messages: int, entries: int, seed: int = 7, per_sg: int = EVENTS_PER_SG):
    """Messages, stream entries (fields), and each message's final state."""
    rnd = random.Random(seed)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=2)
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    forged_key = ec.generate_private_key(ec.SECP256R1())
    validator = RequestValidator(TOKEN)
    forger = RequestValidator("wrong-token")
    msgs = []
    for i in range(messages):
        twilio = i % 2 == 0
        pmid = ("SM" + uuid.UUID(int=rnd.getrandbits(128)).hex) if twilio else uuid.UUID(int=rnd.getrandbits(128)).hex[:22]
        msgs.append({"_id": ObjectId(), "conversation_id": ObjectId(), "room_id": ObjectId(),
                     "direction": "outbound", "channel": "sms" if twilio else "email",
                     "provider": "twilio" if twilio else "sendgrid", "provider_message_id": pmid,
                     "to": "+15550001111" if twilio else "lena@example.org", "from": "+15550002222",
                     "body": "Your ticket was updated.", "status": "queued",
                     "status_history": [{"status": "queued", "at": now, "source": "send"}],
                     "error": None, "attempts": 1, "next_retry_at": None, "final": False,
                     "sent_at": now, "created_at": now, "updated_at": now})
    # genuine events: how many fit beside the duplicates and the forged ones
    n_dup, n_forged = entries // 10, entries // 100
    budget = entries - n_dup - n_forged
    events = []  # (message index, our status, provider status)
    for i, m in enumerate(msgs):
        tw = m["provider"] == "twilio"
        seq = [("sent", "sent" if tw else "processed"), ("delivered", "delivered"),
               ("read", "read" if tw else "open")]
        if rnd.random() < 0.05:
            k = rnd.randrange(2)
            seq[k], seq[k + 1] = seq[k + 1], seq[k]
        events.extend((i, s, p) for s, p in seq)
    # Twilio: one event per entry; SendGrid: EVENTS_PER_SG per entry. Trim to the budget.
    stream, sg_buf = [], []
    t0 = int(time.time())

    def sg_entry(evs):
        payload = json.dumps([{"email": "lena@example.org", "timestamp": t0, "event": p,
                               "sg_event_id": uuid.UUID(int=rnd.getrandbits(128)).hex,
                               "sg_message_id": msgs[i]["provider_message_id"] + ".filter0001.1.0"}
                              for i, _, p in evs]) + "\r\n"
        ts = str(t0)
        sig = base64.b64encode(key.sign((ts + payload).encode(), ec.ECDSA(hashes.SHA256()))).decode()
        return {"provider": "sendgrid", "body": payload, "url": "", "signature": sig,
                "timestamp": ts, "received_at": str(t0 * 1000)}, evs

    applied = []
    for i, s, p in events:
        if len(stream) >= budget:
            break
        m = msgs[i]
        if m["provider"] == "twilio":
            params = {"AccountSid": ACCOUNT, "MessageSid": m["provider_message_id"],
                      "MessageStatus": p, "To": m["to"], "From": m["from"], "ApiVersion": "2010-04-01"}
            stream.append(({"provider": "twilio", "body": urlencode(params), "url": HOOK,
                            "signature": validator.compute_signature(HOOK, params), "timestamp": "",
                            "received_at": str(t0 * 1000)}, [(i, s, p)]))
            applied.append((i, s))
        else:
            sg_buf.append((i, s, p))
            applied.append((i, s))
            if len(sg_buf) == per_sg:
                stream.append(sg_entry(sg_buf))
                sg_buf = []
    if sg_buf:
        stream.append(sg_entry(sg_buf))
    # duplicates a little later in the stream, forged ones anywhere
    out = [f for f, _ in stream]
    for _ in range(n_dup):
        src = rnd.randrange(len(stream))
        out.insert(min(len(out), src + rnd.randint(1, 2000)), dict(stream[src][0]))
    for _ in range(n_forged):
        f = dict(stream[rnd.randrange(len(stream))][0])
        if f["provider"] == "twilio":
            f["signature"] = forger.compute_signature(HOOK, {"x": "y"})
        else:
            f["signature"] = base64.b64encode(forged_key.sign((f["timestamp"] + f["body"]).encode(),
                                                              ec.ECDSA(hashes.SHA256()))).decode()
        out.insert(rnd.randrange(len(out) + 1), f)
    final = {}
    for i, s in applied:
        cur = final.get(i, "queued")
        if RANK[s] > RANK[cur]:
            final[i] = s
    return msgs, out, final, public


def seed(db, msgs):
    db.drop_collection("conversation-message")
    coll = db["conversation-message"]
    for k in range(0, len(msgs), 5000):
        coll.insert_many(msgs[k:k + 5000], ordered=False)


def push_stream(r, entries):
    r.delete(STREAM, STREAM + ":rejected", STREAM + ":unmatched")
    for k in range(0, len(entries), 2000):
        p = r.pipeline(transaction=False)
        for f in entries[k:k + 2000]:
            p.xadd(STREAM, f)
        p.execute()


def run_floor(url, msgs, final) -> dict:
    counter = CommandCounter()
    c = pymongo.MongoClient(url, event_listeners=[counter])
    coll = c[DB + "_floor"]["conversation-message"]
    now = dt.datetime.now(dt.timezone.utc)
    ops = []
    for i, s in final.items():
        m = msgs[i]
        st = {"status": s, "updated_at": now, "delivered_at": now}
        if s == "read":
            st["read_at"] = now
        ops.append(pymongo.UpdateMany({"_id": m["_id"], "updated_at": m["updated_at"]},
                                      {"$set": st, "$push": {"status_history": {"$each": [
                                          {"status": "delivered", "at": now, "source": "webhook"},
                                          {"status": s, "at": now, "source": "webhook"}]}}}))
    counter.reset()
    t0 = time.monotonic()
    for k in range(0, len(ops), 500):  # the bulk size supportd uses
        coll.bulk_write(ops[k:k + 500], ordered=False)
    wall = time.monotonic() - t0
    n = counter.n
    c.close()
    return {"wall_s": wall, "db_commands": n, "messages": len(ops)}


def run_one_by_one(url, r, subset, public) -> dict:
    """One entry at a time: read, verify, find, update, ack."""
    from sendgrid.helpers.eventwebhook import EventWebhook
    from urllib.parse import parse_qsl
    counter = CommandCounter()
    c = pymongo.MongoClient(url, event_listeners=[counter])
    coll = c[DB + "_one"]["conversation-message"]
    validator, sg = RequestValidator(TOKEN), EventWebhook(public)
    group = "one-by-one"
    try:
        r.xgroup_create(STREAM, group, id="0")
    except redislib.ResponseError:
        pass
    trips = entries = 0
    counter.reset()
    t0 = time.monotonic()
    while entries < subset:
        got = r.xreadgroup(group, "c1", {STREAM: ">"}, count=1)
        trips += 1
        if not got:
            break
        eid, f = got[0][1][0]
        f = {k.decode(): v.decode() for k, v in f.items()}
        entries += 1
        if f["provider"] == "twilio":
            params = dict(parse_qsl(f["body"], keep_blank_values=True))
            ok = validator.validate(f["url"], params, f["signature"])
            evs = [(params["MessageSid"], params["MessageStatus"])] if ok else []
        else:
            ok = sg.verify_signature(f["body"], f["signature"], f["timestamp"])
            evs = [(e["sg_message_id"].split(".")[0], e["event"]) for e in json.loads(f["body"])] if ok else []
        for pmid, status in evs:
            ours = {"open": "read"}.get(status, status)
            m = coll.find_one({"provider_message_id": pmid})
            if m and RANK.get(ours, -1) > RANK.get(m["status"], -1):
                coll.update_one({"_id": m["_id"]}, {"$set": {"status": ours},
                                                    "$push": {"status_history": {"status": ours}}})
        r.xack(STREAM, group, eid)
        trips += 1
    wall = time.monotonic() - t0
    n = counter.n
    c.close()
    return {"wall_s": wall, "entries": entries, "db_commands": n, "redis_round_trips": trips}


def main():
    ap = argparse.ArgumentParser(prog="scripts/bench message-status", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, help="messages (default 50000; --quick 5000)")
    ap.add_argument("--entries", type=int, help="stream entries (default 2×messages)")
    ap.add_argument("--subset", type=int, help="entries the one-by-one consumer does (default 1000; --quick 300)")
    ap.add_argument("--sg-events", type=int, default=EVENTS_PER_SG,
                    help=f"SendGrid events per entry (default {EVENTS_PER_SG}; 1 = one POST per event, "
                         "the worst case for signature checks)")
    ap.add_argument("--gin", choices=("on", "off"), default="on",
                    help="the index-served test database (GIN twins of FerretDB's indexes; default on)")
    ap.add_argument("--shape", choices=("auto", "mongodb"), default="auto",
                    help="mongodb: make supportd use MongoDB's query shape ($in per batch) on "
                         "FerretDB too (QM_SUPPORT_TEST_FLAVOR), to compare")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bin", type=Path, default=CACHE / "bench-out" / "bin" / "supportd")
    ap.add_argument("--shared-services", action="store_true")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", type=Path, default=CACHE / "bench")
    args = ap.parse_args()
    n_msgs = args.messages or (5000 if args.quick else 50000)
    n_entries = args.entries or 2 * n_msgs
    subset = args.subset or (300 if args.quick else 1000)
    args.bin = args.bin.resolve()
    if not args.bin.exists():
        die(f"{args.bin} missing")
    services = load_services()
    pg = Postgres(services["STATE_PG_PORT"])
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    workdir = args.out / f"message-status-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    ferret = own_redis = None
    if args.shared_services:
        mongo_url = url_with_db(services["MONGO_DB_URL"], "")
    else:
        own_redis = PrivateRedis(workdir)
        own_redis.start()
        services.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(own_redis.port))
        ferret = PrivateFerretDB(pg, workdir)
        ferret.start()
        mongo_url = ferret.url
    if not ping(mongo_url, 10):
        die("FerretDB does not answer")
    r = redislib.Redis(host=services["REDIS_HOST"], port=int(services["REDIS_PORT"]))
    res = {"messages": n_msgs, "entries_requested": n_entries, "subset": subset,
           "cpus": os.cpu_count(), "sg_events": args.sg_events}
    try:
        say(f"==> generating {n_entries:,} signed entries for {n_msgs:,} messages ...")
        t0 = time.monotonic()
        msgs, entries, final, public = gen(n_msgs, n_entries, per_sg=args.sg_events)
        res["entries"] = len(entries)
        say(f"    {len(entries):,} entries in {time.monotonic() - t0:.0f} s")
        client = pymongo.MongoClient(mongo_url)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("QM_SUPPORT_", "MONGO_", "REDIS_", "TWILIO_", "SENDGRID_", "SMTP_"))}
        env.update(MONGO_DB_URL=url_with_db(mongo_url, DB), REDIS_HOST=services["REDIS_HOST"],
                   REDIS_PORT=services["REDIS_PORT"], QM_SUPPORT_REDIS_PREFIX=PREFIX,
                   QM_SUPPORT_RULES_DIR=str(REPO / "rules"), TWILIO_AUTH_TOKEN=TOKEN,
                   TWILIO_ACCOUNT_SID=ACCOUNT, SENDGRID_WEBHOOK_PUBLIC_KEY=public,
                   TWILIO_API_BASE="http://127.0.0.1:1", LOG_LEVEL="warn")
        if args.shape == "mongodb":
            env["QM_SUPPORT_TEST_FLAVOR"] = "mongodb"
        res["shape"] = args.shape
        for name in (DB, DB + "_floor", DB + "_one"):
            say(f"==> seeding {name} ...")
            seed(client[name], msgs)
        # indexes (and an idle tick's fixed cost) before anything is measured
        m = run_measured([str(args.bin), "once", "message-status"], env, workdir, workdir / "idle.stderr", 600)
        if m["rc"] != 0:
            die(f"idle tick failed: {(workdir / 'idle.stderr').read_text()[-2000:]}")
        res["idle"] = m
        for name in (DB + "_floor", DB + "_one"):
            client[name]["conversation-message"].create_index("provider_message_id")
        if ferret:  # the same database for all three: indexed, or FerretDB as it sets itself up
            pg.gin(BENCH_PG_DB, args.gin == "on", schemas=[DB, DB + "_floor", DB + "_one"])
        res["gin"] = args.gin if ferret else "shared services"
        for name in (DB, DB + "_floor", DB + "_one"):
            pg.vacuum(pg_db(ferret), name)
        push_stream(r, entries)

        say("==> supportd once message-status ...")
        env["LOG_LEVEL"] = "info"
        m = run_measured([str(args.bin), "once", "message-status"], env, workdir,
                         workdir / "supportd.stderr", args.timeout)
        ends = [e for e in log_events(workdir / "supportd.stderr") if e.get("event") == "tick.end"]
        if m["rc"] != 0 or not ends:
            die(f"supportd failed: {(workdir / 'supportd.stderr').read_text()[-2000:]}")
        c = ends[-1]["counts"]
        m["counts"] = c
        res["supportd"] = m
        got = {d["provider_message_id"]: d["status"] for d in
               client[DB]["conversation-message"].find({}, {"provider_message_id": 1, "status": 1})}
        wrong = sum(1 for i, s in final.items() if got.get(msgs[i]["provider_message_id"]) != s)
        res["wrong_final_states"] = wrong
        say(f"    {m['wall_s']:.1f} s wall, {m['user_s'] + m['sys_s']:.2f} s CPU, "
            f"{m['maxrss_kb'] / 1024:.0f} MB RSS; counts {json.dumps(c)}; wrong final states: {wrong}")

        say("==> floor: raw bulk writes of the final states ...")
        res["floor"] = run_floor(mongo_url, msgs, final)
        say(f"    {res['floor']['wall_s']:.1f} s, {res['floor']['db_commands']} commands")

        say(f"==> one by one over {subset:,} entries ...")
        push_stream(r, entries)  # a fresh copy of the stream for its own group
        res["one"] = run_one_by_one(mongo_url, r, subset, public)
        o = res["one"]
        say(f"    {o['wall_s']:.1f} s for {o['entries']} entries, {o['db_commands']} commands, "
            f"{o['redis_round_trips']} Redis round trips")
    finally:
        if ferret:
            ferret.stop()
        if own_redis:
            own_redis.stop()
    md = report(res)
    say("\n" + md)
    (args.out / f"message-status-{stamp[:8]}.md").write_text(md + "\n")
    (workdir / "results.json").write_text(json.dumps(res, indent=2, default=str))


def pg_db(ferret):
    return BENCH_PG_DB if ferret else "ferretdb"


def report(res) -> str:
    s, f, o = res["supportd"], res["floor"], res["one"]
    n = res["entries"]
    cpu = s["user_s"] + s["sys_s"] - (res["idle"]["user_s"] + res["idle"]["sys_s"])
    per_k = lambda v: v / n * 1000  # noqa: E731
    one_wall_all = o["wall_s"] / max(o["entries"], 1) * n
    one_cmd_k = o["db_commands"] / max(o["entries"], 1) * 1000
    one_trip_k = o["redis_round_trips"] / max(o["entries"], 1) * 1000
    c = s["counts"]
    lines = [
        f"{n:,} entries for {res['messages']:,} messages (10% duplicates, 5% of messages out of order, "
        f"1% forged; SendGrid {res['sg_events']} events per entry), {res['cpus']} CPUs, FerretDB "
        f"{'index-served (GIN)' if res.get('gin') == 'on' else 'with its own indexes only' if res.get('gin') == 'off' else '(shared)'}"
        f"{', MongoDB query shape forced' if res.get('shape') == 'mongodb' else ''}, same run:",
        "",
        "| | wall | entries/s of supportd CPU | db commands / 1,000 entries | Redis round trips / 1,000 | peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
        f"| supportd tick | {s['wall_s']:.1f} s | {n / cpu:,.0f} | {per_k(c['db_commands']):.1f} | "
        f"{per_k(c['redis_round_trips']):.1f} | {s['maxrss_kb'] / 1024:.0f} MB |",
        f"| floor (raw bulk of the final states) | {f['wall_s']:.1f} s | — | {per_k(f['db_commands']):.1f} | — | — |",
        f"| one at a time (extrapolated from {o['entries']:,}) | {one_wall_all:.0f} s | — | {one_cmd_k:.0f} | {one_trip_k:.0f} | — |",
        "",
        f"Ratios: supportd / floor = **{s['wall_s'] / f['wall_s']:.2f}×** wall (target ≤ 1.5×); "
        f"one-at-a-time / supportd = **{one_wall_all / s['wall_s']:.1f}×** wall; db commands per 1,000 "
        f"entries **1/{one_cmd_k / max(per_k(c['db_commands']), 1e-9):.0f}** of one-at-a-time (target ≤ 1/50); "
        f"**{n / cpu:,.0f}** entries per second of supportd CPU (target ≥ 50,000; CPU net of an idle tick). "
        f"Counts: applied {c.get('applied')}, duplicates {c.get('duplicates')}, ignored {c.get('ignored')}, "
        f"rejected {c.get('rejected')}; final states wrong: {res['wrong_final_states']}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
