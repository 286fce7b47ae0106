"""The chaos run's invariant checker: reads MongoDB, Redis, the provider fake's request log
and the instances' logs and samples; every violation is reported with its ids.

The invariants (issue #25), numbered as there:
  1 outbox     each entry reached its provider exactly once; none pending or claimed; none
               marked sent that the provider never received (re-sends of messages likewise)
  2 snooze     every expired snooze awake, priority and status restored, queued, its agent(s)
               notified once
  3 webhooks   every event a door accepted applied exactly once (one status_history entry per
               event id), also across Redis losing its data (the door's journal copy), no
               forged one ever, the consumer group has nothing pending, no journal copy left,
               only forged/malformed entries in status-events:rejected
  4 notify     each notification event and recipient at most once; every due SLA warning and
               breach sent
  5 alerts     at most one open alert per channel and check; each incident mailed on open and
               on resolve, once
  6 leases     no lease held by a dead process; every job's health fresh
  7 resources  RSS, threads, fds sampled every second: no growth after warm-up; peak RSS
               <= 64 MiB
  8 processes  no unexpected exit, a clean exit on SIGTERM, no sanitizer report; a broken
               rule edit keeps the last good set (no process stops, the reload is refused)
"""
from __future__ import annotations

import json
import re
import statistics
import time
from datetime import timezone

import redis

OUTBOX = "conversation-notification"
CONVS = "conversation-conversation"
MSGS = "conversation-message"
ALERTS = "conversation-alert"
INBOX = "conversation-status-inbox"
JOBS = ["snooze", "message-status", "notification", "communication-check"]
JOB_INTERVAL_S = {"snooze": 2, "message-status": 2, "notification": 2, "communication-check": 3}
RSS_LIMIT_KB = 64 * 1024
WARMUP_S = 20
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "AddressSanitizer:DEADLYSIGNAL")
NAMES = {1: "outbox exactly once", 2: "snooze woken once", 3: "webhooks applied once",
         4: "notifications once, SLA sent", 5: "alerts: one open, mailed once",
         6: "leases and job health", 7: "RSS / threads / fds", 8: "processes and rules"}


def entry_event_ids(fields: dict) -> set[str]:
    """The event ids a status-events entry carries (as message-status derives them)."""
    out = set()
    body = fields.get("body", "")
    if fields.get("provider") == "twilio":
        from urllib.parse import parse_qs
        q = parse_qs(body)
        sid, st = q.get("MessageSid", [""])[0], q.get("MessageStatus", [""])[0]
        if sid and st:
            out.add(f"twilio:{sid}:{st}")
    else:
        try:
            for e in json.loads(body):
                if isinstance(e, dict) and e.get("sg_event_id"):
                    out.add(f"sendgrid:{e['sg_event_id']}")
        except ValueError:
            pass
    return out


def note_door(run, target, code, expect, body):
    with run.lock:
        run.__dict__.setdefault("door_anomalies", []).append(
            {"target": target, "code": code, "expected": expect, "body": body[:200],
             "at": round(time.time() - run.start_time, 1)})


def snapshot_before_stop(run) -> dict:
    snap = {"at": time.time(), "leases": {}, "health": {}, "live_pids": set()}
    for inst in run.instances:
        if inst.alive:
            snap["live_pids"].add(inst.proc.pid)
    try:
        for job in JOBS:
            v = run.redis.get(f"{run.prefix}lease:{job}")
            if v:
                snap["leases"][job] = v
            snap["health"][job] = run.redis.hgetall(f"{run.prefix}job:{job}")
    except redis.RedisError as e:
        snap["error"] = repr(e)
    return snap


def read_log(path: str) -> tuple[list[dict], str]:
    text = open(path, "rb").read().decode("utf-8", "replace")
    evs = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                evs.append(json.loads(line))
            except ValueError:
                pass
    return evs, text


def ts_of(e: dict) -> float:
    from datetime import datetime
    try:
        return datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return 0.0


def ms(d) -> int:
    return int(d.replace(tzinfo=timezone.utc).timestamp() * 1000) if d.tzinfo is None \
        else int(d.timestamp() * 1000)


# -------------------------------------------------------------- provider ----

def provider_view(run) -> dict:
    sent = run.fake.call("GET", "/_fake/sent")
    reqs = run.fake.call("GET", "/_fake/requests")
    # the evidence, kept with the logs
    with open(run.logdir / "provider_requests.json", "w") as fh:
        json.dump(reqs, fh, indent=0)
    with open(run.logdir / "provider_sent.json", "w") as fh:
        json.dump(sent, fh, indent=0)
    v = {"twilio_sids": {x["sid"] for x in sent["twilio"]},
         "sg_ids": {x["message_id"] for x in sent["sendgrid"]},
         "sg_by_key": {}, "tw_by_to_body": {}, "uncertain_sg_keys": set(),
         "uncertain_tw": set(), "requests": len(reqs)}
    for x in sent["sendgrid"]:
        key = (x["json"].get("custom_args") or {}).get("supportd_key")
        if key:
            v["sg_by_key"].setdefault(key, []).append(x["message_id"])
        body = (x["json"].get("content") or [{}])[0].get("value")
        v.setdefault("sg_by_body", {}).setdefault(body, []).append(x["message_id"])
    v.setdefault("sg_by_body", {})
    for x in sent["twilio"]:
        v["tw_by_to_body"].setdefault((x["to"], x["body"]), []).append(x["sid"])
    # requests whose answer the sender never got although the provider did the work: the
    # documented duplicate risk for SendGrid (it cannot be asked), looked up for Twilio
    answered_late, other_lost = {}, {}  # by supportd_key: timeouts, the rest
    # a send in flight when its sender was killed (kill -9 lands while the provider works on
    # it, as with seed 23's 2.7-second answers): its answer is lost too
    kills = [run.start_time + f["at"] for f in run.faults if f.get("kind") == "kill9"]
    for r in reqs:
        f = r.get("fault") or {}
        late = (f.get("delay_ms") or 0) >= 3000 and not f.get("status") and not f.get("reset")
        answer_at = r["time"] + (f.get("delay_ms") or 0) / 1000 + 1.0
        killed = any(r["time"] - 0.1 <= k <= answer_at for k in kills)
        lost = (f.get("accept") and (f.get("status") or 0) >= 500) or \
            (f.get("accept") and f.get("reset")) or late or killed
        if not lost or r["method"] != "POST":
            continue
        if r["path"] == "/v3/mail/send" and r.get("json"):
            key = (r["json"].get("custom_args") or {}).get("supportd_key")
            if key:
                v["uncertain_sg_keys"].add(key)
                into = answered_late if late else other_lost
                into[key] = into.get(key, 0) + 1
        elif r["path"].endswith("/Messages.json") and r.get("form"):
            v["uncertain_tw"].add((r["form"].get("To"), r["form"].get("Body")))
    # The same risk without an injected fault: the fake, starved of CPU, answered a send
    # after supportd had stopped waiting (seed 21 on shared cores: 3 s, then a retry that
    # went out again). supportd's own log names every send it stopped waiting for (code
    # "timeout"), injected or not: per key the larger of the two counts.
    logged = {}
    for inst in run.instances:
        for p in inst.procs:
            for e in read_log(p["log"])[0]:
                if (e.get("event") in ("outbox.retry", "outbox.failed") and e.get("via") == "email"
                        and e.get("provider") == "sendgrid" and e.get("code") == "timeout"
                        and e.get("key")):
                    logged[e["key"]] = logged.get(e["key"], 0) + 1
    v["lost_answers"] = {}
    for key in set(answered_late) | set(other_lost) | set(logged):
        v["uncertain_sg_keys"].add(key)
        v["lost_answers"][key] = other_lost.get(key, 0) + max(answered_late.get(key, 0),
                                                              logged.get(key, 0))
    v["timeouts_without_fault"] = sum(max(0, n - answered_late.get(k, 0))
                                      for k, n in logged.items())
    return v


# ------------------------------------------------------------ invariants ----

def check_outbox(run, pv, out, notes):
    db = run.db
    entries = list(db[OUTBOX].find())
    notes["outbox entries"] = len(entries)
    notes["SendGrid sends timed out without an injected fault"] = pv.get("timeouts_without_fault", 0)
    if getattr(run, "after_stop", 0):
        notes["enqueued during the stop, delivered by one `once` after it"] = run.after_stop
    by_status = {}
    tw_expected: dict[tuple, list] = {}
    for e in entries:
        by_status[e.get("status")] = by_status.get(e.get("status"), 0) + 1
        eid, key, st = e["_id"], e.get("key"), e.get("status")
        if st == "pending":
            out.append(f"outbox {eid} ({key}) still pending: attempts {e.get('attempts')}, "
                       f"error {e.get('error')!r}")
        via = e.get("via")
        if via == "email":
            got = pv["sg_by_key"].get(key, [])
            if st == "sent":
                if e.get("provider_message_id") not in pv["sg_ids"]:
                    out.append(f"outbox {eid} ({key}) marked sent as "
                               f"{e.get('provider_message_id')}, which SendGrid never accepted")
                if len(got) > 1:
                    # each send whose answer was lost may be followed by one more
                    if len(got) <= 1 + pv.get("lost_answers", {}).get(key, 0):
                        notes["documented duplicates (SendGrid answer lost)"] = \
                            notes.get("documented duplicates (SendGrid answer lost)", 0) + 1
                    else:
                        out.append(f"outbox {eid} ({key}) reached SendGrid {len(got)} times: {got}")
            elif got and key not in pv["uncertain_sg_keys"]:
                out.append(f"outbox {eid} ({key}) is {st} but SendGrid accepted it: {got}")
        elif via == "sms":
            to = (e.get("recipient") or {}).get("phone")
            tw_expected.setdefault((to, e.get("text")), []).append(e)
    for (to, body), es in tw_expected.items():
        got = pv["tw_by_to_body"].get((to, body), [])
        sent = [e for e in es if e.get("status") == "sent"]
        for e in sent:
            if e.get("provider_message_id") not in pv["twilio_sids"]:
                out.append(f"outbox {e['_id']} ({e.get('key')}) marked sent as "
                           f"{e.get('provider_message_id')}, which Twilio never accepted")
        if len(got) != len(sent):
            out.append(f"outbox SMS to {to} ({[e['key'] for e in es]}): {len(sent)} sent, "
                       f"Twilio accepted {len(got)}: {got}")
    notes["outbox by status"] = by_status
    try:
        for e in entries:
            v = run.redis.get(f"{run.prefix}outbox:claim:{e['_id']}")
            if v and v.startswith("claimed:") and e.get("status") != "pending":
                # recorded as done in MongoDB: the marker is a leftover (a Redis restored
                # from a snapshot taken mid-send), it holds nothing back
                notes["stale claim markers on finished entries"] = \
                    notes.get("stale claim markers on finished entries", 0) + 1
            elif v and v.startswith("claimed:"):
                pid = re.match(r"^claimed:[^:]+:(\d+)/", v)
                pid = int(pid.group(1)) if pid else None
                alive = pid in run.before_stop["live_pids"]
                ttl = run.redis.pttl(f"{run.prefix}outbox:claim:{e['_id']}")
                out.append(f"outbox {e['_id']} ({e.get('key')}) still claimed: {v} "
                           f"({'a running' if alive else 'a stopped or killed'} process; "
                           f"{ttl / 1000:.0f} s of its claim left)")
    except redis.RedisError as ex:
        out.append(f"outbox claims unreadable: {ex}")


def check_resends(run, work, pv, out, notes):
    """Messages re-sent by message-status: each attempt reached its provider once."""
    n = 0
    for mid, m in work.messages.items():
        doc = run.db[MSGS].find_one({"_id": mid})
        if not doc:
            continue
        attempts = doc.get("attempts") or 1
        n += attempts - 1
        # the first send was the platform's (its own account); the re-sends are supportd's
        # Twilio is looked up before a re-send after a lost answer: no excuse there; an
        # e-mail re-send after a lost answer is made final instead, so none either
        if m["provider"] == "twilio":
            got = pv["tw_by_to_body"].get((doc["to"], doc["body"]), [])
        else:
            got = pv["sg_by_body"].get(doc["body"], [])
        gave_up = (doc.get("final") and (doc.get("error") or {}).get("code") == "resend_uncertain")
        if len(got) == attempts and gave_up and m["provider"] == "sendgrid":
            # the documented case: an e-mail re-send whose answer was lost is not sent again
            # and not recorded (SendGrid cannot be asked), although it may have arrived
            notes["e-mail re-sends given up as uncertain that had arrived"] = \
                notes.get("e-mail re-sends given up as uncertain that had arrived", 0) + 1
        elif len(got) != attempts - 1:
            out.append(f"message {mid}: attempts {attempts}, the provider accepted "
                       f"{len(got)} re-sends: {got} (recorded: {doc.get('provider_message_id')})")
        if doc.get("supportd_resend"):
            out.append(f"message {mid}: re-send marker left: {doc['supportd_resend']}")
    notes["re-sends recorded"] = n


def check_snooze(run, work, out, notes):
    db = run.db
    n = 0
    for cid, t in work.tickets.items():
        if not t["snoozed"]:
            continue
        n += 1
        doc = db[CONVS].find_one({"_id": cid})
        if doc["status"] == "snoozed":
            out.append(f"conversation {cid} still snoozed (until {doc['snooze']['until']})")
            continue
        orig = t.get("orig") or {}
        if doc.get("priority") != t["priority"]:
            out.append(f"conversation {cid} woke with priority {doc.get('priority')}, "
                       f"snoozed at {t['priority']}")
        if doc.get("supportd_unsnooze_pending"):
            out.append(f"conversation {cid}: wake-up marker left (supportd_unsnooze_pending)")
        woke = doc.get("unsnoozed_at")
        if not woke:
            out.append(f"conversation {cid} not snoozed any more but has no unsnoozed_at")
            continue
        woke_s = woke.timestamp()
        lost = any(l["at"] >= woke_s - 1 and (not l["keep"] or (l["saved_at"] or 0) <= woke_s + 1)
                   for l in run.redis_losses)
        try:
            score = run.redis.zscore(f"{run.prefix}queue:{doc['room_id']}", str(cid))
        except redis.RedisError:
            score = None
        if score is None and not lost:
            out.append(f"conversation {cid} woke at {woke.isoformat()} but is not in "
                       f"queue:{doc['room_id']}")
        if score is None and lost:
            notes["queue entries lost with Redis's data"] = \
                notes.get("queue entries lost with Redis's data", 0) + 1
        ents = list(db[OUTBOX].find({"type": "ticket.unsnoozed", "conversation_id": cid}))
        rec: dict[str, int] = {}
        for e in ents:
            r = e["recipient"].get("email") or e["recipient"].get("phone")
            rec[r] = rec.get(r, 0) + 1
            if e.get("status") != "sent":
                out.append(f"conversation {cid}: ticket.unsnoozed {e['_id']} to {r} is "
                           f"{e.get('status')}")
        if not ents:
            out.append(f"conversation {cid} woke but no ticket.unsnoozed was enqueued")
        for r, c in rec.items():
            if c > 1:
                out.append(f"conversation {cid}: {c} ticket.unsnoozed entries to {r}: "
                           f"{[e['key'] for e in ents]}")
    notes["snoozed tickets"] = n


def check_webhooks(run, work, out, notes):
    db = run.db
    applied = lost_with_redis = superseded = 0
    for eid, e in sorted(run.events.items()):
        doc = db[MSGS].find_one({"_id": e["mid"]})
        hist = [h for h in (doc or {}).get("status_history", []) if h.get("event_id") == eid]
        if len(hist) == 1:
            applied += 1
            continue
        if len(hist) > 1:
            out.append(f"event {eid} applied {len(hist)} times to message {e['mid']}")
            continue
        # No excuse for Redis losing its data: the door's journal copy (MongoDB) outlives
        # the stream. Named, to tell such a loss from others.
        lost = [l for l in run.redis_losses
                if eid in l["stream_event_ids"]
                or ((l["saved_at"] if l["keep"] else l["at"]) - 0.5 <= e["accepted_at"] <= l["done"] + 0.5)]
        if lost:
            lost_with_redis += 1
        cur = (doc or {}).get("provider_message_id")
        extra = (f" (in the stream when Redis lost its data at +{lost[0]['at'] - run.start_time:.1f}s)"
                 if lost else "")
        known = {h.get("event_id", "").split(":")[1] for h in (doc or {}).get("status_history", [])
                 if h.get("event_id", "").startswith("twilio:")}
        if doc and cur != e["pmid"] and e["pmid"] not in known and e["pmid"] not in work.messages[e["mid"]]["pmids"][:1]:
            extra += (f" (a send supportd never recorded: the message's provider_message_id is "
                      f"{cur}; a duplicate re-send, see invariant 1)")
        elif doc and cur != e["pmid"]:
            superseded += 1
            extra += (f" (the message was re-sent meanwhile: its provider_message_id is now "
                      f"{cur}; events for an earlier attempt's id are not matched)")
        out.append(f"event {eid} accepted at the door at +"
                   f"{e['accepted_at'] - run.start_time:.1f}s never applied to message "
                   f"{e['mid']}{extra}")
    notes["events accepted at the door"] = len(run.events)
    notes["events applied once"] = applied
    notes["events never applied that were in Redis when it lost its data"] = lost_with_redis
    # the journal keeps a copy until its entry is done with: nothing may be left
    left = list(db[INBOX].find({}, {"received_at": 1, "stream_id": 1}).limit(20))
    notes["webhook journal copies left"] = db[INBOX].count_documents({})
    for j in left:
        out.append(f"webhook journal copy {j['_id']} (received {j['received_at'].isoformat()}, "
                   f"entry {j.get('stream_id')}) left: its entry was never done with")
    # forged ones
    forged = [f for f in run.forged_ids]
    if forged:
        hit = list(db[MSGS].find({"status_history.event_id": {"$in": forged}}, {"_id": 1}))
        for h in hit:
            out.append(f"message {h['_id']} has a forged event in its history")
    for doc in db[MSGS].find({"status_history.provider_status": "canceled"}, {"_id": 1}):
        out.append(f"message {doc['_id']} applied a 'canceled' event (only forged ones say so)")
    for a in getattr(run, "door_anomalies", []):
        out.append(f"door answered {a['code']} (expected {a['expected']}) to {a['target']} "
                   f"at +{a['at']}s: {a['body']!r}")
    s = run.prefix + "status-events"
    try:
        for g in (run.redis.xinfo_groups(s) if run.redis.exists(s) else []):
            if g["pending"]:
                pend = run.redis.xpending_range(s, g["name"], "-", "+", 20)
                out.append(f"consumer group {g['name']}: {g['pending']} pending, e.g. "
                           f"{[(p['message_id'], p['consumer']) for p in pend]}")
        rejected = run.redis.xrange(s + ":rejected")
        notes["status-events:rejected"] = len(rejected)
        seen_bad = set()
        for rid, f in rejected:
            if f.get("body") in run.bad_bodies:
                seen_bad.add(f.get("origin_id"))
                continue
            out.append(f"status-events:rejected {rid} (origin {f.get('origin_id')}) is not a "
                       f"forged or malformed entry: reason {f.get('reason')!r}, "
                       f"events {sorted(entry_event_ids(f))}")
        for bid in sorted(run.bad_stream_ids - seen_bad):
            t = int(bid.split("-")[0]) / 1000
            if not any(l["at"] >= t for l in run.redis_losses):
                out.append(f"bad entry {bid} appended to the stream is not in "
                           f"status-events:rejected")
        unmatched = run.redis.xrange(s + ":unmatched")
        for uid, f in unmatched:
            out.append(f"status-events:unmatched {uid}: {f.get('reason')!r}")
    except redis.RedisError as ex:
        out.append(f"streams unreadable: {ex}")


def check_notify(run, work, pv, out, notes):
    db = run.db
    entries = list(db[OUTBOX].find({"type": {"$ne": "channel.alert"}}))
    keys = {}
    once_types = {"ticket.created"}
    per = {}
    for e in entries:
        keys[e["key"]] = keys.get(e["key"], 0) + 1
        r = (e.get("recipient") or {})
        who = r.get("email") or r.get("phone")
        if e["type"] in once_types:
            k = (e["type"], str(e.get("conversation_id")), who)
            per.setdefault(k, []).append(e["key"])
    for k, c in keys.items():
        if c > 1:
            out.append(f"outbox key {k} stored {c} times")
    for (typ, cid, who), ks in per.items():
        if len(ks) > 1:
            out.append(f"{typ} for conversation {cid} to {who} {len(ks)} times: {ks}")
    for key, ids in pv["sg_by_key"].items():
        if len(ids) > 1 and key not in pv["uncertain_sg_keys"] and not key.startswith("resend"):
            if not any(e["key"] == key for e in entries) and not key.startswith("channel.alert"):
                out.append(f"SendGrid got {len(ids)} mails for key {key}")
    # SLA: the urgent tickets that were never answered, paused or closed
    end = run.before_stop["at"]
    warned = breached = 0
    for cid, t in work.tickets.items():
        if not t["breacher"] or t.get("paused"):
            continue
        doc = db[CONVS].find_one({"_id": cid})
        if doc["status"] != "open" or doc.get("first_response_at"):
            continue
        created = doc["created_at"].timestamp()
        types = {e["type"]: e for e in db[OUTBOX].find({"conversation_id": cid})}
        mgr = t["room"]["manager"]["email"]
        if created + 60 < end - 15:
            breached += 1
            b = list(db[OUTBOX].find({"conversation_id": cid, "type": "ticket.sla_breached",
                                      "recipient.email": mgr}))
            if not b:
                out.append(f"conversation {cid} (urgent, created {doc['created_at'].isoformat()}) "
                           f"breached its first response at +1 min but {mgr} got no "
                           f"ticket.sla_breached (entries: {sorted(types)}; sla {doc.get('sla')})")
            elif not any(x.get("status") == "sent" for x in b):
                out.append(f"conversation {cid}: ticket.sla_breached to {mgr} not sent: "
                           f"{[(x['key'], x.get('status')) for x in b]}")
        if created < end - 15:
            warned += 1
            w = [e for e in db[OUTBOX].find({"conversation_id": cid, "type": "ticket.sla_warning"})]
            if not w:
                out.append(f"conversation {cid} (urgent, created {doc['created_at'].isoformat()}) "
                           f"was in its warning window from the start but no ticket.sla_warning "
                           f"was enqueued (entries: {sorted(types)})")
            elif not all(x.get("status") == "sent" for x in w):
                out.append(f"conversation {cid}: ticket.sla_warning not all sent: "
                           f"{[(x['key'], x.get('status')) for x in w]}")
    notes["SLA breaches due"] = breached
    notes["SLA warnings due"] = warned


def check_alerts(run, pv, out, notes):
    db = run.db
    alerts = list(db[ALERTS].find())
    notes["alerts (incidents)"] = len(alerts)
    open_by = {}
    for a in alerts:
        if a.get("status") == "open":
            open_by.setdefault(a.get("channel_check"), []).append(a["_id"])
    for cc, ids in open_by.items():
        if len(ids) > 1:
            out.append(f"{len(ids)} open alerts for {cc}: {ids}")
    managers = {str(r["_id"]): r["manager"]["email"] for r in run.rooms}
    for a in alerts:
        cc = a.get("channel_check")
        mgr = managers.get(str(a.get("room_id")))
        opened = f"channel.alert:{cc}:opened:{ms(a['first_seen_at'])}:"
        resolved = f"channel.alert:{a['_id']}:resolved:"
        for prefix, what in ((opened, "open"), (resolved, "resolve")):
            if what == "resolve" and a.get("status") != "resolved":
                continue
            ents = list(db[OUTBOX].find({"key": {"$regex": "^" + re.escape(prefix)}}))
            if len(ents) != 1:
                out.append(f"alert {a['_id']} ({cc}): {len(ents)} outbox entries on {what} "
                           f"(want 1, to {mgr}): {[e['key'] for e in ents]}")
                continue
            e = ents[0]
            if e.get("status") != "sent":
                out.append(f"alert {a['_id']} ({cc}): {what} mail {e['key']} is {e.get('status')}")
            got = pv["sg_by_key"].get(e["key"], [])
            if len(got) > 1 and e["key"] not in pv["uncertain_sg_keys"]:
                out.append(f"alert {a['_id']} ({cc}): {what} mail reached SendGrid {len(got)} times")
        if a.get("status") == "open":
            out.append(f"alert {a['_id']} ({cc}) still open at the end although every channel "
                       f"was healthy at the fake for the whole drain: {a.get('message')!r}")


def check_leases(run, out, notes):
    snap = run.before_stop
    for job, holder in snap["leases"].items():
        m = re.match(r"^[^:]+:(\d+)/", holder)
        pid = int(m.group(1)) if m else None
        if pid not in snap["live_pids"]:
            out.append(f"lease:{job} held by {holder.split('/')[0]}, not a live instance "
                       f"(live: {sorted(snap['live_pids'])})")
    for job in JOBS:
        h = snap["health"].get(job) or {}
        ls = int(h.get("last_success") or 0) / 1000
        limit = max(2 * JOB_INTERVAL_S[job], 10)
        if snap["at"] - ls > limit:
            out.append(f"job {job}: last success {snap['at'] - ls:.0f}s before the end "
                       f"(> {limit}s): last_result {h.get('last_result')!r}, last_error "
                       f"{h.get('last_error')!r}")
    notes["job runs"] = {j: int((snap['health'].get(j) or {}).get('runs') or 0) for j in JOBS}
    try:
        for job in JOBS:
            v = run.redis.get(f"{run.prefix}lease:{job}")
            if v:
                out.append(f"lease:{job} still held after every instance stopped: {v}")
    except redis.RedisError as ex:
        out.append(f"leases unreadable: {ex}")


def low_quartile(xs: list) -> float:
    return statistics.quantiles(xs, n=4)[0] if len(xs) > 1 else xs[0]


def check_resources(run, out, notes):
    rows = []
    peak_all = 0
    for inst in run.instances:
        for p in inst.procs:
            s = run.samples.get(p["pid"], [])
            if not s:
                continue
            t0 = s[0][0]
            peak = max(x[1] for x in s)
            peak_all = max(peak_all, peak)
            after = [x for x in s if x[0] - t0 >= WARMUP_S]
            row = {"slot": inst.idx, "pid": p["pid"], "seconds": round(s[-1][0] - t0),
                   "peak_rss_mib": round(peak / 1024, 1),
                   "max_threads": max(x[2] for x in s), "max_fds": max(x[3] for x in s)}
            if not run.asan and peak > RSS_LIMIT_KB:
                out.append(f"instance {inst.idx} pid {p['pid']}: peak RSS {peak / 1024:.1f} MiB "
                           f"> 64 MiB")
            if len(after) >= 60:
                q = len(after) // 4
                first, last = after[:q], after[-q:]
                for i, name, tol in ((1, "RSS", None), (2, "threads", 4), (3, "fds", 8)):
                    # threads and fds by what stays open between bursts (the lower
                    # quartile): a leak raises it, a delivery batch's 16 workers and their
                    # connections do not (seed 23: a 91-second process delivering a
                    # backlog in its last quarter, its median fds 26 → 45, its lower
                    # quartile 26 → 31). RSS by the median.
                    pick = statistics.median if i == 1 else low_quartile
                    a = pick([x[i] for x in first])
                    b = pick([x[i] for x in last])
                    row[f"{name}_first_last"] = (a, b) if i != 1 else (round(a / 1024, 1),
                                                                      round(b / 1024, 1))
                    if i == 1:
                        if run.asan:
                            continue
                        grew = b - a > max(8 * 1024, 0.15 * a)
                    else:
                        grew = b - a > tol
                    if grew:
                        what = "median" if i == 1 else "lower quartile"
                        out.append(f"instance {inst.idx} pid {p['pid']}: {name} grew after "
                                   f"warm-up: {what} {a:g} in the first quarter, {b:g} in the "
                                   f"last ({len(after)} samples)")
            rows.append(row)
    notes["peak RSS MiB (all processes)"] = round(peak_all / 1024, 1)
    notes["processes sampled"] = rows
    if run.asan:
        notes["RSS bound"] = "not judged: AddressSanitizer build"


def versions_before(evs: list[dict], t: float) -> set[str]:
    """The rules version a process ran last before t (from rules.loaded/reloaded)."""
    last = None
    for e in evs:
        if ts_of(e) > t:
            break
        if e.get("event") in ("rules.loaded", "rules.reloaded"):
            m = re.match(r"rules (\w+) (?:loaded|replace)", e.get("msg", ""))
            last = m.group(1) if m else last
    return {last} if last else set()


def check_processes(run, out, notes):
    exits = 0
    for inst in run.instances:
        for p in inst.procs:
            evs, text = read_log(p["log"])
            for m in SANITIZER_MARKERS:
                if m in text:
                    i = text.index(m)
                    out.append(f"instance {inst.idx} pid {p['pid']}: sanitizer report: "
                               f"{text[i:i + 300]!r}")
            if p.get("hung_on_term"):
                out.append(f"instance {inst.idx} pid {p['pid']}: did not exit within 40 s of "
                           f"SIGTERM (killed): {p['log']}")
            if p["rc"] is not None and not p["expected_exit"]:
                exits += 1
                out.append(f"instance {inst.idx} pid {p['pid']} exited by itself with "
                           f"{p['rc']}: tail of {p['log']}: {text[-600:]!r}")
            elif p["expected_exit"] and p["rc"] not in (0, -9, None) and not p.get("hung_on_term"):
                out.append(f"instance {inst.idx} pid {p['pid']}: exit code {p['rc']} on SIGTERM")
            for w in run.rule_windows:
                if w["kind"] != "broken":
                    continue
                alive = p["started"] < w["at"] and (p["ended"] or 1e18) > w["until"] + 2
                if not alive:
                    continue
                failed = [e for e in evs if e.get("event") == "rules.reload_failed"
                          and w["at"] - 1 <= ts_of(e) <= w["until"] + 2]
                if not failed:
                    out.append(f"instance {inst.idx} pid {p['pid']}: no rules.reload_failed "
                               f"while sla.lua was broken (+{w['at'] - run.start_time:.0f}s)")
                # its scheduler goes on: a tick, or a slot skipped for another's lease
                slots = [e for e in evs if e.get("event") in ("tick.start", "tick.skipped")
                         and w["at"] + 1 <= ts_of(e) <= w["until"]]
                if w["until"] - w["at"] > 4 and not slots:
                    out.append(f"instance {inst.idx} pid {p['pid']}: no tick and no slot while "
                               f"sla.lua was broken (+{w['at'] - run.start_time:.0f}s)")
                for e in evs:
                    if (e.get("event") == "tick.start" and w["at"] + 1 <= ts_of(e) <= w["until"]
                            and e.get("rules") not in versions_before(evs, w["at"])):
                        out.append(f"instance {inst.idx} pid {p['pid']}: tick {e.get('tick')} "
                                   f"ran rules {e.get('rules')} while sla.lua was broken, not "
                                   f"the last good set {sorted(versions_before(evs, w['at']))}")
    for w in run.rule_windows:
        if w["kind"] != "broken" or w["until"] - w["at"] <= 4:
            continue
        ran = [1 for inst in run.instances for p in inst.procs
               for e in read_log(p["log"])[0] if e.get("event") == "tick.start"
               and w["at"] + 1 <= ts_of(e) <= w["until"]]
        if not ran:
            out.append(f"no instance ran a tick while sla.lua was broken "
                       f"(+{w['at'] - run.start_time:.0f}s to +{w['until'] - run.start_time:.0f}s)")
    notes["unexpected exits"] = exits


def check_all(run, work) -> dict:
    pv = provider_view(run)
    res, notes = {}, {"provider requests": pv["requests"]}
    for n, fn in ((1, lambda o: (check_outbox(run, pv, o, notes),
                                 check_resends(run, work, pv, o, notes))),
                  (2, lambda o: check_snooze(run, work, o, notes)),
                  (3, lambda o: check_webhooks(run, work, o, notes)),
                  (4, lambda o: check_notify(run, work, pv, o, notes)),
                  (5, lambda o: check_alerts(run, pv, o, notes)),
                  (6, lambda o: check_leases(run, o, notes)),
                  (7, lambda o: check_resources(run, o, notes)),
                  (8, lambda o: check_processes(run, o, notes))):
        o: list[str] = []
        try:
            fn(o)
        except Exception as e:  # a checker that cannot read its data is a failure
            import traceback
            o.append(f"checker failed: {e!r}\n{traceback.format_exc()}")
        res[n] = o
    return {"violations": res, "notes": notes}


# ---------------------------------------------------------------- report ----

def report(run, work, result) -> int:
    v, notes = result["violations"], result["notes"]
    kinds: dict[str, int] = {}
    for f in run.faults:
        if "error" in f:
            kinds[f["kind"] + " (could not inject)"] = kinds.get(f["kind"] + " (could not inject)", 0) + 1
        else:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    print()
    print(f"chaos run: seed {run.seed}, {run.args.minutes:g} min, {len(run.instances)} instances"
          f"{', soak' if run.args.soak else ''}; binary {run.binary}")
    ok, why, secs = run.drain_result
    print(f"drain: {'complete' if ok else 'INCOMPLETE (' + why + ')'} after {secs}s")
    print()
    print("| faults injected | n |\n|---|---:|")
    for k in sorted(kinds):
        print(f"| {k} | {kinds[k]} |")
    if not kinds:
        print("| (none) | 0 |")
    print()
    print("| items | n |\n|---|---:|")
    for k in sorted(run.items):
        print(f"| {k} | {run.items[k]} |")
    for k in ("outbox entries", "re-sends recorded", "events accepted at the door",
              "events applied once",
              "events never applied that were in Redis when it lost its data",
              "webhook journal copies left",
              "status-events:rejected", "alerts (incidents)", "SLA warnings due",
              "SLA breaches due", "snoozed tickets", "provider requests",
              "documented duplicates (SendGrid answer lost)",
              "stale claim markers on finished entries",
              "e-mail re-sends given up as uncertain that had arrived",
              "queue entries lost with Redis's data"):
        if k in notes:
            print(f"| {k} | {notes[k]} |")
    print()
    print("| invariant | result |\n|---|---|")
    bad = 0
    for n in sorted(v):
        res = "held" if not v[n] else f"**VIOLATED** ({len(v[n])})"
        bad += len(v[n])
        print(f"| {n}. {NAMES[n]} | {res} |")
    print()
    print(f"outbox by status: {notes.get('outbox by status')}; job runs: {notes.get('job runs')}")
    print(f"peak RSS over all processes: {notes.get('peak RSS MiB (all processes)')} MiB"
          f"{' (' + notes['RSS bound'] + ')' if 'RSS bound' in notes else ''}")
    for r in notes.get("processes sampled", []):
        print(f"  instance {r['slot']} pid {r['pid']}: {r['seconds']}s, peak RSS "
              f"{r['peak_rss_mib']} MiB, max threads {r['max_threads']}, max fds {r['max_fds']}"
              + (f", median RSS first/last quarter {r['RSS_first_last']} MiB, threads "
                 f"{r['threads_first_last']}, fds {r['fds_first_last']}"
                 if "RSS_first_last" in r else ""))
    # the series (for soaks): medians over tenths of each long-lived process's life
    for inst in run.instances:
        for p in inst.procs:
            s = run.samples.get(p["pid"], [])
            if len(s) < 100:
                continue
            k = len(s) // 10
            parts = [s[i * k:(i + 1) * k] for i in range(10)]
            fmt = lambda i, f: "/".join(f"{f(statistics.median(x[i] for x in part)):g}"
                                        for part in parts)
            print(f"  series, instance {inst.idx} pid {p['pid']} (medians of tenths of "
                  f"{len(s)} s): RSS MiB {fmt(1, lambda x: round(x / 1024, 1))}; threads "
                  f"{fmt(2, int)}; fds {fmt(3, int)}")
    with open(run.logdir / "samples.csv", "w") as fh:
        fh.write("pid,time,rss_kib,threads,fds\n")
        for pid, s in sorted(run.samples.items()):
            for t, rss, thr, fds in s:
                fh.write(f"{pid},{t:.1f},{rss},{thr},{fds}\n")
    for n in sorted(v):
        if v[n]:
            print(f"\nviolations of {n}. {NAMES[n]}:")
            for line in v[n][:40]:
                print(f"  - {line}")
            if len(v[n]) > 40:
                print(f"  ... and {len(v[n]) - 40} more (summary.json)")
    with open(run.logdir / "summary.json", "w") as fh:
        json.dump({"seed": run.seed, "minutes": run.args.minutes, "faults": run.faults,
                   "rule_windows": run.rule_windows,
                   "items": run.items, "violations": {NAMES[n]: v[n] for n in v},
                   "notes": notes}, fh, indent=1, default=str)
    print(f"\n{'PASS' if not bad else 'FAIL'}: {bad} violation(s)")
    return 0 if not bad else 1
