"""The message-status job end to end: real FerretDB and Redis, the provider
fake for Twilio and SendGrid. Webhooks are signed with the providers' own
helper libraries (twilio's RequestValidator; SendGrid's documented ECDSA
scheme, each signature checked by sendgrid's EventWebhook before use), so
supportd's verification is shown to agree with theirs."""
from __future__ import annotations

import base64
import json
import signal
import time
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import pymongo
import pytest
from bson import ObjectId
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook
from twilio.request_validator import RequestValidator

from conftest import parse_log_lines, wait_until
from fakes_fixtures import *  # noqa: F401,F403

MESSAGES = "conversation-message"
HOOK = "https://hooks.example.com/webhooks/twilio/status"


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def tick_end(cp) -> dict:
    """The tick's tick.end, its counters checked to add up (README, Counters)."""
    events, _ = parse_log_lines(cp.stderr)
    ends = [e for e in events if e.get("event") == "tick.end"]
    assert ends, cp.stderr[-3000:]
    c = ends[-1]["counts"]
    assert c["entries"] == (c["acknowledged"] + c["rejected"] + c["unmatched"] + c["waiting"]
                            + c["deferred"] + c["rule_failed"]), c
    assert c["events"] == (c["applied"] + c["duplicates"] + c["ignored"] + c["history_only"]
                           + c["unknown"]), c
    return ends[-1]


class World:
    db_commands: dict = {}  # per flavor, across the parametrized runs of a test

    def __init__(self, sd, providers):
        self.sd, self.p = sd, providers
        self.db = pymongo.MongoClient(sd.mongo_url, tz_aware=True)[sd.db_name]
        self.stream = sd.key("status-events")
        self.token = providers.secrets["TWILIO_AUTH_TOKEN"]
        self.validator = RequestValidator(self.token)
        self.sg_private = ec.generate_private_key(ec.SECP256R1())
        der = self.sg_private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.sg_public = base64.b64encode(der).decode()
        self.room = ObjectId()
        self.conv = ObjectId()

    # -- messages --
    def message(self, provider="twilio", status="sent", pmid=None, channel=None, **fields):
        channel = channel or ("sms" if provider == "twilio" else "email")
        if pmid is None:
            pmid = ("SM" + uuid.uuid4().hex) if provider == "twilio" else uuid.uuid4().hex[:22]
        t = datetime.now(timezone.utc) - timedelta(minutes=5)
        doc = {"_id": ObjectId(), "conversation_id": self.conv, "room_id": self.room,
               "direction": "outbound", "channel": channel, "provider": provider,
               "provider_message_id": pmid,
               "to": "+15551230000" if channel == "sms" else "lena@example.org",
               "from": "+15557650000" if channel == "sms" else "support@example.com",
               "subject": None if channel == "sms" else "Your ticket", "body": "Hello Lena",
               "status": status, "status_history": [{"status": status, "at": t, "source": "send"}],
               "error": None, "attempts": 1, "next_retry_at": None, "final": False,
               "sent_at": t, "created_at": t, "updated_at": t}
        doc.update(fields)
        self.db[MESSAGES].insert_one(doc)
        return doc

    def get(self, doc):
        return self.db[MESSAGES].find_one({"_id": doc["_id"]})

    def history_ids(self, doc):
        return [h.get("event_id") for h in self.get(doc)["status_history"] if h.get("event_id")]

    # -- webhooks --
    def xadd(self, fields: dict) -> str:
        return self.sd.redis.xadd(self.stream, fields)

    def twilio(self, sid, status=None, *, error_code=None, event_type=None, forge=False,
               tamper=False, json_body=False, received_at=None, **extra):
        params = {"AccountSid": self.p.twilio_sid, "ApiVersion": "2010-04-01",
                  "From": "+15557650000", "To": "+15551230000", "MessageSid": sid, "SmsSid": sid}
        if status:
            params["MessageStatus"] = status
            params["SmsStatus"] = status
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        if event_type:
            params["EventType"] = event_type
        params.update(extra)
        if json_body:
            body = json.dumps(params)
            url = f"{HOOK}?bodySHA256={self.validator.compute_hash(body)}"
            sig = self.validator.compute_signature(url, {})
            assert self.validator.validate(url, body, sig)
        else:
            body = urlencode(params)
            url = HOOK
            sig = self.validator.compute_signature(url, params)
            assert self.validator.validate(url, params, sig)
        if forge:
            sig = RequestValidator("not-the-token").compute_signature(url, params)
        if tamper:
            body = body.replace(sid, sid[:-1] + ("0" if sid[-1] != "0" else "1"))
        return self.xadd({"provider": "twilio", "body": body, "url": url, "signature": sig,
                          "timestamp": "", "received_at": str(received_at or now_ms())})

    def sg_sign(self, ts: str, payload: str) -> str:
        sig = base64.b64encode(self.sg_private.sign((ts + payload).encode(),
                                                    ec.ECDSA(hashes.SHA256()))).decode()
        assert EventWebhook(self.sg_public).verify_signature(payload, sig, ts)
        return sig

    def sendgrid(self, events, *, ts=None, received_at=None, forge=False, tamper=False,
                 raw=None):
        received_at = received_at or now_ms()
        ts = str(ts if ts is not None else received_at // 1000)
        payload = raw if raw is not None else json.dumps(events) + "\r\n"
        sig = self.sg_sign(ts, payload)
        if forge:
            other = ec.generate_private_key(ec.SECP256R1())
            sig = base64.b64encode(other.sign((ts + payload).encode(),
                                              ec.ECDSA(hashes.SHA256()))).decode()
        if tamper:
            payload = payload.replace("delivered", "open")
        return self.xadd({"provider": "sendgrid", "body": payload, "url": "", "signature": sig,
                          "timestamp": ts, "received_at": str(received_at)})

    @staticmethod
    def sg_event(msg, event, **kw):
        e = {"email": "lena@example.org", "timestamp": int(time.time()), "event": event,
             "sg_event_id": uuid.uuid4().hex, "sg_message_id": f"{msg['provider_message_id']}.filter0001.1234.0"}
        e.update(kw)
        return e

    # -- running --
    def env(self, **kw):
        return self.p.env(SENDGRID_WEBHOOK_PUBLIC_KEY=self.sg_public, **kw)

    def once(self, *args, **kw):
        cp = self.sd.cli("once", "message-status", *args, timeout=120, **self.env(**kw))
        self.p.outputs.append(cp.stdout + cp.stderr)
        return cp

    def start(self, name, *args, **kw):
        return self.sd.start("once", "message-status", *args, name=name, **self.env(**kw))

    def pending(self) -> int:
        try:
            return self.sd.redis.xpending(self.stream, "supportd")["pending"]
        except Exception:  # noqa: BLE001 - no group yet
            return 0

    def side(self, name):
        return [f for _, f in self.sd.redis.xrange(self.sd.key(f"status-events:{name}"))]


@pytest.fixture
def world(sd, providers):
    return World(sd, providers)


# ------------------------------------------------------------------ mapping ----

TWILIO_ROWS = [  # (Twilio MessageStatus, ours, status before)
    ("queued", "queued", "queued"), ("accepted", "queued", "queued"),
    ("scheduled", "queued", "queued"), ("sending", "sending", "queued"),
    ("sent", "sent", "sending"), ("delivered", "delivered", "sent"), ("read", "read", "delivered"),
    ("undelivered", "undelivered", "sent"), ("failed", "failed", "sent"),
    ("canceled", "failed", "queued"),
]


@pytest.fixture(params=["ferretdb", "mongodb"])
def flavor(request):
    """The query shapes of each database (store_is_ferretdb): one equality find
    per message on FerretDB, one $in per batch on MongoDB; same results."""
    return request.param


def test_twilio_mapping_every_row(world, flavor):
    msgs = {}
    for twilio_status, ours, before in TWILIO_ROWS:
        m = world.message("twilio", status=before)
        code = 30006 if ours in ("failed", "undelivered") else None
        world.twilio(m["provider_message_id"], twilio_status, error_code=code)
        msgs[twilio_status] = (m, ours, before)
    read_m = world.message("twilio", status="delivered")
    world.twilio(read_m["provider_message_id"], None, event_type="READ")
    cp = world.once(QM_SUPPORT_TEST_FLAVOR=flavor)
    assert cp.returncode == 0, cp.stderr
    for twilio_status, (m, ours, before) in msgs.items():
        got = world.get(m)
        last = got["status_history"][-1]
        assert last["status"] == ours and last["provider_status"] == twilio_status, (twilio_status, last)
        assert last["source"] == "webhook"
        assert got["status"] == (ours if ours != before else before), twilio_status
    assert world.get(read_m)["status"] == "read" and world.get(read_m)["read_at"]
    failed = world.get(msgs["failed"][0])
    assert failed["error"]["code"] == 30006 and failed["failed_at"]
    assert failed["final"] is True  # 30006: never retried (rules/retry.lua)
    assert world.get(msgs["delivered"][0])["delivered_at"]
    counts = tick_end(cp)["counts"]
    assert counts["entries"] == 11 and counts["rejected"] == 0 and world.pending() == 0
    world.db_commands[flavor] = counts["db_commands"]


def test_each_flavor_used_its_own_query_shape():
    """11 messages: one find each on FerretDB, one $in on MongoDB."""
    d = World.db_commands
    if set(d) != {"ferretdb", "mongodb"}:
        pytest.skip("runs after both flavors of test_twilio_mapping_every_row")
    assert d["ferretdb"] - d["mongodb"] == 10, d


def test_twilio_json_body_signed_with_body_sha256(world):
    m = world.message("twilio", status="sent")
    world.twilio(m["provider_message_id"], "delivered", json_body=True)
    assert world.once().returncode == 0
    assert world.get(m)["status"] == "delivered"


def test_sendgrid_mapping_many_events_in_one_entry(world, flavor):
    rows = [("processed", {}, "queued", "sent"), ("deferred", {}, "queued", "sent"),
            ("delivered", {}, "sent", "delivered"), ("open", {}, "delivered", "read"),
            ("bounce", {"type": "blocked", "reason": "451 try later"}, "sent", "undelivered"),
            ("bounce", {"type": "bounce", "reason": "550 no such user"}, "sent", "failed"),
            ("dropped", {"reason": "Bounced Address"}, "sent", "failed")]
    events, expect = [], []
    for event, kw, before, after in rows:
        m = world.message("sendgrid", status=before)
        events.append(World.sg_event(m, event, **kw))
        expect.append((m, after))
    history_only = world.message("sendgrid", status="delivered")
    for ev in ("click", "spamreport", "unsubscribe"):
        events.append(World.sg_event(history_only, ev))
    world.sendgrid(events)
    cp = world.once(QM_SUPPORT_TEST_FLAVOR=flavor)
    assert cp.returncode == 0, cp.stderr
    for m, after in expect:
        assert world.get(m)["status"] == after, (m["provider_message_id"], world.get(m))
    blocked = world.get(expect[4][0])
    assert blocked["error"] == {"code": "blocked", "message": "451 try later"}
    assert blocked["final"] is False and blocked["next_retry_at"]  # blocked: transient
    assert world.get(expect[5][0])["final"] is True  # hard bounce: permanent
    h = world.get(history_only)
    assert h["status"] == "delivered"
    assert [x["provider_status"] for x in h["status_history"][1:]] == ["click", "spamreport", "unsubscribe"]
    assert all(x["applied"] is False for x in h["status_history"][1:])
    counts = tick_end(cp)["counts"]
    assert counts["entries"] == 1 and counts["events"] == 10 and counts["history_only"] == 3


# ------------------------------------------------- order, duplicates ----

def test_late_out_of_order_and_duplicate_events(world):
    m = world.message("twilio", status="sent")
    sid = m["provider_message_id"]
    world.twilio(sid, "read")
    world.twilio(sid, "delivered")  # late: after read
    world.twilio(sid, "read")       # duplicate in the same tick
    world.twilio(sid, "failed", error_code=30003)  # never after delivered
    assert world.once().returncode == 0
    got = world.get(m)
    assert got["status"] == "read" and not got.get("error")
    ids = world.history_ids(m)
    assert sorted(ids) == sorted({f"twilio:{sid}:read", f"twilio:{sid}:delivered", f"twilio:{sid}:failed"})
    late = [h for h in got["status_history"] if h.get("event_id") == f"twilio:{sid}:delivered"][0]
    assert late["applied"] is False
    # the same events again, in a later tick: nothing changes
    world.twilio(sid, "delivered")
    world.twilio(sid, "read")
    cp = world.once()
    assert cp.returncode == 0
    assert world.history_ids(m) == ids and tick_end(cp)["counts"]["duplicates"] == 2

    sg = world.message("sendgrid", status="sent")
    ev = World.sg_event(sg, "delivered")
    world.sendgrid([ev])
    world.sendgrid([ev])  # SendGrid's own retry: same sg_event_id
    assert world.once().returncode == 0
    assert world.history_ids(sg) == [f"sendgrid:{ev['sg_event_id']}"]


# ---------------------------------------------------------- rejections ----

def test_bad_entries_are_rejected_with_reason_and_nothing_applied(world):
    m = world.message("twilio", status="sent")
    sid = m["provider_message_id"]
    sg = world.message("sendgrid", status="sent")
    ids = {
        "forged": world.twilio(sid, "delivered", forge=True),
        "tampered": world.twilio(sid, "delivered", tamper=True),
        "no signature": world.xadd({"provider": "twilio", "body": f"MessageSid={sid}&MessageStatus=read",
                                    "url": HOOK, "received_at": str(now_ms())}),
        "stale": world.sendgrid([World.sg_event(sg, "delivered")], ts=now_ms() // 1000 - 8 * 3600),
        "sg forged": world.sendgrid([World.sg_event(sg, "delivered")], forge=True),
        "sg tampered": world.sendgrid([World.sg_event(sg, "delivered")], tamper=True),
        "malformed": world.sendgrid(None, raw="{not json\r\n"),
        "no event id": world.sendgrid([{"event": "delivered", "sg_message_id": sg["provider_message_id"]}]),
        "unknown provider": world.xadd({"provider": "mailgun", "body": "x", "received_at": str(now_ms())}),
        "no provider": world.xadd({"body": "x"}),
    }
    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    assert world.get(m)["status"] == "sent" and len(world.get(m)["status_history"]) == 1
    assert world.get(sg)["status"] == "sent" and len(world.get(sg)["status_history"]) == 1
    rejected = {f["origin_id"]: f for f in world.side("rejected")}
    assert set(rejected) == set(ids.values())
    reasons = {name: rejected[i]["reason"] for name, i in ids.items()}
    assert "signature" in reasons["forged"] and "signature" in reasons["tampered"]
    assert "missing signature" in reasons["no signature"]
    assert "stale timestamp" in reasons["stale"]
    assert "signature" in reasons["sg forged"] and "signature" in reasons["sg tampered"]
    assert "malformed" in reasons["malformed"]
    assert "sg_event_id" in reasons["no event id"]
    assert "unknown provider" in reasons["unknown provider"]
    assert "missing field: provider" in reasons["no provider"]
    # the original fields travel along
    assert rejected[ids["forged"]]["body"].startswith("AccountSid=") and rejected[ids["forged"]]["url"] == HOOK
    counts = tick_end(cp)["counts"]
    assert counts["rejected"] == len(ids) and counts["applied"] == 0
    logged = {e["entry"] for e in parse_log_lines(cp.stderr)[0] if e.get("event") == "status_event.rejected"}
    assert logged == set(ids.values())
    assert world.pending() == 0
    world.p.assert_no_secrets(cp.stderr)


def test_stale_judged_against_received_at_not_processing_time(world):
    """An entry that waited in the stream for hours is not stale for having waited."""
    sg = world.message("sendgrid", status="sent")
    long_ago = now_ms() - 10 * 3600 * 1000
    world.sendgrid([World.sg_event(sg, "delivered")], ts=long_ago // 1000, received_at=long_ago)
    assert world.once().returncode == 0
    assert world.get(sg)["status"] == "delivered"


# ----------------------------------------------------- unknown messages ----

def test_unknown_message_waits_then_applies(world):
    sid = "SM" + uuid.uuid4().hex
    world.twilio(sid, "delivered")
    cp = world.once(QM_SUPPORT_LEASE_TTL=1)
    assert cp.returncode == 0
    assert tick_end(cp)["counts"]["waiting"] == 1 and world.pending() == 1
    m = world.message("twilio", status="sent", pmid=sid)  # the platform's write lands late
    time.sleep(1.2)  # idle for the lease TTL: claimed back
    cp = world.once(QM_SUPPORT_LEASE_TTL=1)
    assert cp.returncode == 0, cp.stderr
    assert tick_end(cp)["counts"]["reclaimed"] == 1
    assert world.get(m)["status"] == "delivered" and world.pending() == 0
    assert world.side("unmatched") == []


def test_unknown_message_past_grace_goes_to_unmatched(world):
    sid = "SM" + uuid.uuid4().hex
    entry = world.twilio(sid, "delivered")
    assert world.once(QM_SUPPORT_LEASE_TTL=1).returncode == 0
    time.sleep(1.2)
    cp = world.once("--now", iso(now_ms() + 16 * 60 * 1000), QM_SUPPORT_LEASE_TTL=1)
    assert cp.returncode == 0, cp.stderr
    unmatched = world.side("unmatched")
    assert [u["origin_id"] for u in unmatched] == [entry]
    assert sid in unmatched[0]["reason"] and "15 minutes" in unmatched[0]["reason"]
    assert world.pending() == 0 and tick_end(cp)["counts"]["unmatched"] == 1


# ---------------------------------------------------------------- retry ----

def test_retryable_twilio_failure_is_sent_again_through_the_fake(world):
    m = world.message("twilio", status="sent")
    perm = world.message("twilio", status="sent")
    world.twilio(m["provider_message_id"], "undelivered", error_code=30003)
    world.twilio(perm["provider_message_id"], "undelivered", error_code=30005)
    assert world.once().returncode == 0
    got = world.get(m)
    assert got["status"] == "undelivered" and got["final"] is False
    due = got["next_retry_at"]
    assert 50 <= (due - datetime.now(timezone.utc)).total_seconds() <= 70  # retry.lua: 1 min
    assert world.get(perm)["final"] is True and world.get(perm)["next_retry_at"] is None
    # not due yet: nothing is sent
    assert world.once().returncode == 0
    assert world.p.fake.sent()["twilio"] == []
    cp = world.once("--now", iso(now_ms() + 2 * 60 * 1000))
    assert cp.returncode == 0, cp.stderr
    sent = world.p.fake.sent()["twilio"]
    assert len(sent) == 1 and sent[0]["to"] == m["to"] and sent[0]["body"] == m["body"]
    got = world.get(m)
    assert got["provider_message_id"] == sent[0]["sid"] and got["attempts"] == 2
    assert got["status"] == "queued" and got["next_retry_at"] is None and got["error"] is None
    assert got["status_history"][-1]["source"] == "retry"
    assert tick_end(cp)["counts"]["resent"] == 1
    # the new attempt's callbacks match it
    world.twilio(sent[0]["sid"], "delivered")
    assert world.once().returncode == 0
    assert world.get(m)["status"] == "delivered"
    assert len(world.p.fake.sent()["twilio"]) == 1


def test_retries_stop_at_the_rules_maximum(world):
    m = world.message("twilio", status="sent", attempts=4)  # retry.lua: max_attempts = 4
    world.twilio(m["provider_message_id"], "failed", error_code=30003)
    cp = world.once()
    assert cp.returncode == 0
    got = world.get(m)
    assert got["final"] is True and got["next_retry_at"] is None
    assert any(e.get("event") == "retry.exhausted" for e in parse_log_lines(cp.stderr)[0])


def test_blocked_sendgrid_bounce_is_sent_again_through_sendgrid(world):
    m = world.message("sendgrid", status="sent")
    world.sendgrid([World.sg_event(m, "bounce", type="blocked", reason="451 greylisted")])
    assert world.once().returncode == 0
    cp = world.once("--now", iso(now_ms() + 2 * 60 * 1000))
    assert cp.returncode == 0, cp.stderr
    mails = world.p.fake.sent()["sendgrid"]
    assert len(mails) == 1
    body = mails[0]["json"]
    assert body["personalizations"][0]["to"][0]["email"] == m["to"]
    assert body["subject"] == m["subject"]
    got = world.get(m)
    assert got["provider_message_id"] == mails[0]["message_id"] and got["attempts"] == 2


@pytest.mark.parametrize("fault", [{"status": 500, "accept": True},
                                   {"delay_ms": 3000, "status": 201, "accept": True}],
                         ids=["5xx", "timeout"])
def test_resend_5xx_or_timeout_is_looked_up_not_repeated_blindly(world, fault):
    m = world.message("twilio", status="sent")
    world.twilio(m["provider_message_id"], "failed", error_code=30008)
    assert world.once().returncode == 0
    later = iso(now_ms() + 2 * 60 * 1000)
    # accepted by Twilio, but the answer is a 500 or never arrives (HTTP timeout 2 s)
    world.p.fake.fault(match="/Messages.json", method="POST", **fault)
    cp = world.once("--now", later)
    assert cp.returncode == 0, cp.stderr
    # it did arrive (after the client gave up, in the timeout case)
    wait_until(lambda: len(world.p.fake.sent()["twilio"]) == 1, 10, what="the message at Twilio")
    got = world.get(m)
    assert got["supportd_resend"]["uncertain"] is True and got["attempts"] == 1
    cp = world.once("--now", iso(now_ms() + 20 * 60 * 1000))
    assert cp.returncode == 0, cp.stderr
    sent = world.p.fake.sent()["twilio"]
    assert len(sent) == 1, "sent twice"
    got = world.get(m)
    assert got["provider_message_id"] == sent[0]["sid"] and got["attempts"] == 2
    assert "supportd_resend" not in got
    assert tick_end(cp)["counts"]["resend_recovered"] == 1
    assert any(r["method"] == "GET" for r in world.p.fake.requests("/Messages.json"))


def test_resend_backoff_counts_from_the_failed_send_not_the_tick(world):
    """Found by the chaos run: a re-send that timed out (HTTP timeout 2 s) got next_retry_at
    from the tick's start, so with a send slower than the backoff the next attempt was due
    at once; its look-up came before Twilio, which accepted late, showed the message, and a
    second SMS went out. The backoff (retry.lua: 60 s) now counts from the failed send."""
    m = world.message("twilio", status="sent")
    world.twilio(m["provider_message_id"], "failed", error_code=30008)
    assert world.once().returncode == 0
    t = now_ms() + 2 * 60 * 1000
    # accepted by Twilio 3 s after the request, 1 s after the client gave up
    world.p.fake.fault(match="/Messages.json", method="POST", delay_ms=3000, status=201,
                       accept=True)
    cp = world.once("--now", iso(t))
    assert cp.returncode == 0, cp.stderr
    got = world.get(m)
    assert got["supportd_resend"]["uncertain"] is True
    due = int(got["next_retry_at"].timestamp() * 1000)
    assert due >= t + 2000 + 60 * 1000, \
        f"next_retry_at {due - t} ms after the tick's now: the 2 s send was not counted"
    # the backoff after the tick's now has passed, the one after the send not yet: nothing
    cp = world.once("--now", iso(t + 61 * 1000))
    assert cp.returncode == 0, cp.stderr
    wait_until(lambda: len(world.p.fake.sent()["twilio"]) >= 1, 10, what="the message at Twilio")
    assert len(world.p.fake.sent()["twilio"]) == 1, "sent twice: the look-up came too early"
    # once due, the look-up finds the late message: recovered, not sent again
    cp = world.once("--now", iso(t + 5 * 60 * 1000))
    assert cp.returncode == 0, cp.stderr
    sent = world.p.fake.sent()["twilio"]
    assert len(sent) == 1, "sent twice"
    assert world.get(m)["provider_message_id"] == sent[0]["sid"]
    assert tick_end(cp)["counts"]["resend_recovered"] == 1


def test_an_event_for_an_earlier_attempt_goes_to_the_history_only(world):
    """Found by the chaos run (seed 21): a Twilio event for a message's first SID reached
    message-status after the message had been re-sent under a new SID (it came back from
    the webhook journal after Redis lost its data). Events were matched by the current
    provider_message_id only, so it waited out the grace and went to :unmatched. The
    re-send now keeps the earlier SID (conversation-message-sids): the event goes to the
    history, not applied, and the status stays the re-send's."""
    m = world.message("twilio", status="sent")
    first = m["provider_message_id"]
    world.twilio(first, "failed", error_code=30008)
    assert world.once().returncode == 0
    cp = world.once("--now", iso(now_ms() + 2 * 60 * 1000))  # the re-send
    assert cp.returncode == 0, cp.stderr
    got = world.get(m)
    assert got["provider_message_id"] != first and got["status"] == "queued", got
    world.twilio(first, "sent")  # the first attempt's late event
    cp = world.once("--now", iso(now_ms() + 20 * 60 * 1000))  # past the 15-minute grace
    assert cp.returncode == 0, cp.stderr
    got = world.get(m)
    hist = [h for h in got["status_history"] if h.get("event_id") == f"twilio:{first}:sent"]
    assert len(hist) == 1 and hist[0]["applied"] is False, got["status_history"]
    assert got["status"] == "queued"
    assert world.side("unmatched") == [] and world.pending() == 0
    assert tick_end(cp)["counts"]["history_only"] == 1


def test_resend_reset_after_twilio_created_it_is_not_sent_again_by_curl(world):
    """Found by the chaos run (seed 21): the re-send's look-up (a GET) left its connection
    open, the POST went out on it, Twilio created the message and the connection was reset
    before the answer; libcurl then sent the POST again on a fresh connection by itself (it
    does so on a reused connection that dies before any answer byte): two SMS. The request
    now goes out once; the send is uncertain, and the next attempt's look-up finds it."""
    m = world.message("twilio", status="sent")
    world.twilio(m["provider_message_id"], "failed", error_code=30008)
    assert world.once().returncode == 0
    # a 500 (not created): this attempt is uncertain, so the next try looks up first
    world.p.fake.fault(match="/Messages.json", method="POST", status=500)
    assert world.once("--now", iso(now_ms() + 2 * 60 * 1000)).returncode == 0
    assert world.get(m)["supportd_resend"]["uncertain"] is True
    assert world.p.fake.sent()["twilio"] == []
    world.p.fake.fault(match="/Messages.json", method="POST", reset=True, accept=True)
    cp = world.once("--now", iso(now_ms() + 10 * 60 * 1000))
    assert cp.returncode == 0, cp.stderr
    reqs = world.p.fake.requests("/Messages.json")
    lookup = [r for r in reqs if r["method"] == "GET"][-1]
    posts = [r for r in reqs if r["method"] == "POST"]
    assert posts[1]["client_port"] == lookup["client_port"], "the send did not reuse the connection"
    assert len(posts) == 2 and len(world.p.fake.sent()["twilio"]) == 1, \
        f"{len(posts) - 1} POSTs for one try: the request was sent again"
    assert world.get(m)["supportd_resend"]["uncertain"] is True
    cp = world.once("--now", iso(now_ms() + 30 * 60 * 1000))
    assert cp.returncode == 0, cp.stderr
    sent = world.p.fake.sent()["twilio"]
    assert len(sent) == 1 and world.get(m)["provider_message_id"] == sent[0]["sid"]
    assert tick_end(cp)["counts"]["resend_recovered"] == 1


def test_resend_timeout_of_an_email_is_not_repeated(world):
    m = world.message("sendgrid", status="sent")
    world.sendgrid([World.sg_event(m, "bounce", type="blocked", reason="451")])
    assert world.once().returncode == 0
    world.p.fake.fault(match="/v3/mail/send", status=503, accept=True)
    assert world.once("--now", iso(now_ms() + 2 * 60 * 1000)).returncode == 0
    assert len(world.p.fake.sent()["sendgrid"]) == 1
    cp = world.once("--now", iso(now_ms() + 30 * 60 * 1000))
    assert cp.returncode == 0
    assert len(world.p.fake.sent()["sendgrid"]) == 1, "an email of unknown outcome was sent again"
    got = world.get(m)
    assert got["final"] is True and "cannot be asked" in got["error"]["message"]


# ------------------------------------------------------------ reconcile ----

def test_stale_message_is_reconciled_by_polling_twilio(world):
    sid = "SM" + uuid.uuid4().hex
    old = datetime.now(timezone.utc) - timedelta(hours=13)
    m = world.message("twilio", status="sent", pmid=sid, updated_at=old)
    fresh = world.message("twilio", status="sent")  # not stale: not polled
    world.p.fake.message(sid=sid, status="delivered")
    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    got = world.get(m)
    assert got["status"] == "delivered" and got["status_history"][-1]["source"] == "poll"
    polls = [r for r in world.p.fake.requests("/Messages/") if r["method"] == "GET"]
    assert [r["path"].rsplit("/", 1)[1] for r in polls] == [f"{sid}.json"]
    assert world.get(fresh)["status"] == "sent"
    assert tick_end(cp)["counts"]["polled"] == 1
    # the webhook for the same status, arriving afterwards, is a duplicate
    world.twilio(sid, "delivered")
    assert world.once().returncode == 0
    assert [h["event_id"] for h in world.get(m)["status_history"][1:]] == [f"twilio:{sid}:delivered"]


# ------------------------------------------------------------- crashes ----

def test_kill_9_before_ack_then_next_tick_applies_once(world, tmp_path):
    seams = tmp_path / "seams"
    seams.mkdir()
    msgs = [world.message("twilio", status="sent") for _ in range(20)]
    for m in msgs:
        world.twilio(m["provider_message_id"], "delivered")
    (seams / "message_status_before_ack.arm").touch()
    d = world.start("doomed", QM_SUPPORT_TEST_SEAMS=str(seams), QM_SUPPORT_LEASE_TTL=1)
    wait_until(lambda: (seams / "message_status_before_ack.reached").exists(), 30, what="the seam")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    assert all(world.get(m)["status"] == "delivered" for m in msgs)  # written, not acked
    assert world.pending() == 20
    time.sleep(1.2)
    cp = world.once(QM_SUPPORT_LEASE_TTL=1)
    assert cp.returncode == 0, cp.stderr
    assert world.pending() == 0
    counts = tick_end(cp)["counts"]
    assert counts["reclaimed"] == 20 and counts["duplicates"] == 20 and counts["applied"] == 0
    assert all(len(world.get(m)["status_history"]) == 2 for m in msgs)


def test_paused_instance_past_its_lease_writes_nothing(world, tmp_path):
    """Two writers to one message on FerretDB could lose a history entry: the
    paused one must not write once its lease is gone."""
    seams = tmp_path / "seams"
    seams.mkdir()
    m = world.message("twilio", status="sent")
    sid = m["provider_message_id"]
    world.twilio(sid, "delivered")
    (seams / "message_status_before_write.arm").touch()
    a = world.start("paused", QM_SUPPORT_TEST_SEAMS=str(seams), QM_SUPPORT_LEASE_TTL=1)
    wait_until(lambda: (seams / "message_status_before_write.reached").exists(), 30, what="the seam")
    a.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: world.sd.lease("message-status") is None, 10, what="the lease to expire")
        world.twilio(sid, "read")
        time.sleep(1.2)
        cp = world.once(QM_SUPPORT_LEASE_TTL=1)
        assert cp.returncode == 0, cp.stderr
    finally:
        a.proc.send_signal(signal.SIGCONT)
    (seams / "message_status_before_write.go").touch()
    assert a.wait_exit(30) == 1  # abandoned its batch
    assert "lease can no longer be counted on" in a.stderr()
    got = world.get(m)
    assert got["status"] == "read"
    assert sorted(world.history_ids(m)) == sorted([f"twilio:{sid}:delivered", f"twilio:{sid}:read"])


def test_two_instances_on_one_stream(world):
    msgs = [world.message("twilio" if i % 2 else "sendgrid", status="sent") for i in range(60)]
    for m in msgs:
        if m["provider"] == "twilio":
            world.twilio(m["provider_message_id"], "delivered")
            world.twilio(m["provider_message_id"], "read")
        else:
            world.sendgrid([World.sg_event(m, "delivered"), World.sg_event(m, "open")])
    daemons = [world.sd.start("run", name=f"i{n}", **world.env(QM_SUPPORT_MESSAGE_STATUS="true",
                                                            QM_SUPPORT_MESSAGE_STATUS_CRON="* * * * * *",
                                                            QM_SUPPORT_LEASE_TTL=2))
               for n in range(2)]
    try:
        wait_until(lambda: world.pending() == 0 and all(world.get(m)["status"] == "read" for m in msgs),
                   60, what="every message read")
    finally:
        for d in daemons:
            d.signal(signal.SIGTERM)
        for d in daemons:
            d.wait_exit(30)
    for m in msgs:
        hist = world.get(m)["status_history"]
        ids = [h["event_id"] for h in hist[1:]]
        assert len(ids) == 2 and len(set(ids)) == 2, hist


def test_acknowledged_entries_are_trimmed(world):
    m = world.message("twilio", status="sent")
    for status in ("sent", "delivered", "read"):
        world.twilio(m["provider_message_id"], status)
    assert world.sd.redis.xlen(world.stream) == 3
    cp = world.once()
    assert cp.returncode == 0
    assert world.sd.redis.xlen(world.stream) <= 1 and tick_end(cp)["counts"]["trimmed"] >= 2


def test_redis_stopped_mid_tick_then_replayed(world, tmp_path, redis_restart_guard):
    """Redis goes away between the write and the acknowledgement: the tick
    fails cleanly; the test Redis keeps nothing across a restart, so the
    providers' retries bring the events again, and they apply once."""
    from conftest import services_script
    seams = tmp_path / "seams"
    seams.mkdir()
    msgs = [world.message("twilio", status="sent") for _ in range(5)]
    for m in msgs:
        world.twilio(m["provider_message_id"], "delivered")
    (seams / "message_status_before_ack.arm").touch()
    d = world.start("cut", QM_SUPPORT_TEST_SEAMS=str(seams), QM_SUPPORT_LEASE_TTL=2)
    wait_until(lambda: (seams / "message_status_before_ack.reached").exists(), 30, what="the seam")
    services_script("stop-redis")
    (seams / "message_status_before_ack.go").touch()
    assert d.wait_exit(60) == 1
    services_script("start-redis")
    wait_until(lambda: world.sd.redis.ping(), 20, what="Redis")
    assert all(world.get(m)["status"] == "delivered" for m in msgs)  # written before the cut
    for m in msgs:  # Twilio retries what was not acknowledged
        world.twilio(m["provider_message_id"], "delivered")
        world.twilio(m["provider_message_id"], "read")
    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    for m in msgs:
        sid = m["provider_message_id"]
        assert world.get(m)["status"] == "read"
        assert world.history_ids(m) == [f"twilio:{sid}:delivered", f"twilio:{sid}:read"]


def test_daemon_keeps_consuming_across_a_redis_restart(world, redis_restart_guard):
    from conftest import services_script
    d = world.sd.start("run", name="daemon", **world.env(QM_SUPPORT_MESSAGE_STATUS="true",
                                                        QM_SUPPORT_MESSAGE_STATUS_CRON="* * * * * *"))
    a = world.message("twilio", status="sent")
    world.twilio(a["provider_message_id"], "delivered")
    wait_until(lambda: world.get(a)["status"] == "delivered", 30, what="the first event")
    services_script("restart-redis")
    wait_until(lambda: world.sd.redis.ping(), 20, what="Redis")
    b = world.message("sendgrid", status="sent")
    world.sendgrid([World.sg_event(b, "delivered")])
    wait_until(lambda: world.get(b)["status"] == "delivered", 40, what="an event after the restart")
    assert d.alive()
    assert d.terminate_and_wait() == 0


def test_many_messages_in_one_batch_are_found_by_helper_threads(world):
    """On FerretDB a batch's messages are read by one equality find each, four
    threads at a time (from 64 distinct ids): every one is found, and the
    tick's db_commands counts the helpers' finds too."""
    msgs = [world.message("twilio", status="sent") for _ in range(150)]
    for m in msgs:
        world.twilio(m["provider_message_id"], "delivered")
    cp = world.once(QM_SUPPORT_TEST_FLAVOR="ferretdb")
    assert cp.returncode == 0, cp.stderr
    counts = tick_end(cp)["counts"]
    assert counts["applied"] == 150 and counts["unknown"] == 0
    assert counts["db_commands"] >= 150
    assert all(world.get(m)["status"] == "delivered" for m in msgs)


# ------------------------------------------------- the webhook journal ----

INBOX = "conversation-status-inbox"


def test_journal_sweep_is_bounded_per_tick_and_resumes_where_it_stopped(world):
    """The repair sweep looks at 5 pages of 1,000 journal copies a tick, oldest
    first, and the next tick goes on from there (its cursor is in Redis): a
    copy whose entry is gone, behind 5,000 whose entries wait in the stream
    for their message, is appended again by the second tick and applied; the
    third starts at the oldest again."""
    old = now_ms() - 10 * 60 * 1000
    pipe = world.sd.redis.pipeline()
    docs = []
    for i in range(5000):
        sid = "SM" + uuid.uuid4().hex  # no such message: the entry waits
        params = {"MessageSid": sid, "MessageStatus": "delivered"}
        fields = {"provider": "twilio", "body": urlencode(params), "url": HOOK,
                  "signature": world.validator.compute_signature(HOOK, params), "timestamp": "",
                  "received_at": str(old + i), "journal": f"{i:032x}"}
        pipe.xadd(world.stream, fields)
        docs.append(fields)
    stream_ids = pipe.execute()
    m = world.message("twilio", status="sent")
    sid = m["provider_message_id"]
    params = {"MessageSid": sid, "MessageStatus": "delivered"}
    docs.append({"provider": "twilio", "body": urlencode(params), "url": HOOK,
                 "signature": world.validator.compute_signature(HOOK, params), "timestamp": "",
                 "received_at": str(old + 5000), "journal": "f" * 32})
    stream_ids.append("1-1")  # its entry was lost with Redis's data
    world.db[INBOX].insert_many([
        {"_id": f.pop("journal"), **{k: v for k, v in f.items() if k != "received_at"},
         "received_at": datetime.fromtimestamp(int(f["received_at"]) / 1000, timezone.utc),
         "stream_id": i} for f, i in zip(docs, stream_ids)])

    cp = world.once(QM_SUPPORT_TEST_FLAVOR="mongodb")
    assert cp.returncode == 0, cp.stderr
    c = tick_end(cp)["counts"]
    assert c["journal_checked"] == 5000 and c["journal_reappended"] == 0, c
    assert c["waiting"] == 5000 and world.get(m)["status"] == "sent"
    cp = world.once(QM_SUPPORT_TEST_FLAVOR="mongodb")
    assert cp.returncode == 0, cp.stderr
    c = tick_end(cp)["counts"]
    assert c["journal_checked"] == 1 and c["journal_reappended"] == 1, c
    assert world.history_ids(m) == [f"twilio:{sid}:delivered"]
    assert world.db[INBOX].count_documents({}) == 5000 and c["journal_deleted"] == 1
    cp = world.once(QM_SUPPORT_TEST_FLAVOR="mongodb")
    assert cp.returncode == 0, cp.stderr
    c = tick_end(cp)["counts"]
    assert c["journal_checked"] == 5000 and c["journal_reappended"] == 0, c
    assert world.history_ids(m) == [f"twilio:{sid}:delivered"]


# --------------------------------------------------- a rule that fails ----

BAD_PHONE = "+15559990000"


def rules_failing_for(tmp_path, phone: str):
    """A copy of rules/ whose retry.lua raises for one phone number (a rule bug
    that hits one message only)."""
    import shutil
    from pathlib import Path
    rules = tmp_path / "rules"
    shutil.copytree(Path(__file__).resolve().parents[2] / "rules", rules,
                    ignore=shutil.ignore_patterns("fixtures"))
    lua = rules / "retry.lua"
    src = lua.read_text()
    hook = "function M.decide(message, err, attempts)\n"
    assert hook in src
    lua.write_text(src.replace(hook, hook + f'  if message.to == "{phone}" then '
                               f'error("no policy for {phone}") end\n'))
    return rules


def test_rule_error_for_one_message_skips_its_entry_then_parks_it(world, tmp_path):
    """retry.lua raising for one message: the rest of the batch is applied and
    acknowledged; the failing entry stays pending, is tried again when claimed
    back, and after MSGSTATUS_MAX_RULE_FAILURES tries lands in
    status-events:rejected with the error, so it never blocks the stream."""
    rules = rules_failing_for(tmp_path, BAD_PHONE)
    good = [world.message("twilio", status="sent") for _ in range(3)]
    bad = world.message("twilio", status="sent", to=BAD_PHONE)
    retried = world.message("twilio", status="sent")
    world.twilio(good[0]["provider_message_id"], "delivered")
    bad_entry = world.twilio(bad["provider_message_id"], "undelivered", error_code=30003)
    world.twilio(good[1]["provider_message_id"], "delivered")
    world.twilio(retried["provider_message_id"], "undelivered", error_code=30003)
    world.twilio(good[2]["provider_message_id"], "read")
    run = dict(QM_SUPPORT_RULES_DIR=str(rules), QM_SUPPORT_LEASE_TTL=1)
    cp = world.once(**run)
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert [world.get(m)["status"] for m in good] == ["delivered", "delivered", "read"]
    got = world.get(retried)
    assert got["status"] == "undelivered" and got["next_retry_at"] and got["final"] is False
    assert world.get(bad)["status"] == "sent"  # nothing half-applied
    pending = world.sd.redis.xpending_range(world.stream, "supportd", "-", "+", 10)
    assert [p["message_id"] for p in pending] == [bad_entry]
    counts = tick_end(cp)["counts"]
    assert counts["acknowledged"] == 4 and counts["rule_failed"] == 1, counts
    logged = [e for e in parse_log_lines(cp.stderr)[0] if e.get("event") == "status_event.rule_failed"]
    assert len(logged) == 1 and logged[0]["entry"] == bad_entry and logged[0]["tries"] == 1
    assert logged[0]["message"] == str(bad["_id"]) and "no policy for" in logged[0]["reason"]
    # tried again each time it is claimed back, a bounded number of times
    tries = 1
    while world.pending():
        time.sleep(1.2)  # idle for the lease TTL: claimed back
        cp = world.once(**run)
        assert cp.returncode == 0, cp.stderr[-3000:]
        tries += 1
        assert tries <= 10, "the failing entry is never parked"
        assert tick_end(cp)["counts"]["reclaimed"] == 1
    assert tries == 5  # MSGSTATUS_MAX_RULE_FAILURES
    rejected = world.side("rejected")
    assert [r["origin_id"] for r in rejected] == [bad_entry]
    assert "no policy for" in rejected[0]["reason"] and "5 tries" in rejected[0]["reason"]
    assert rejected[0]["body"].startswith("AccountSid=")
    assert world.get(bad)["status"] == "sent"
    counts = tick_end(cp)["counts"]
    assert counts["rejected"] == 1 and counts["trimmed"] >= 1
    left = [i for i, _ in world.sd.redis.xrange(world.stream)]
    assert bad_entry not in left and len(left) <= 1  # trimmed past it (up to the last read)


# ------------------------------------- "did the re-send arrive?" look-up ----

def rfc2822(dt: datetime) -> str:
    from email.utils import format_datetime
    return format_datetime(dt.astimezone(timezone.utc), usegmt=True).replace("GMT", "+0000")


def fail_then_uncertain_resend(world, m, *, accept=True):
    """m fails (retryable), then its re-send's answer is a 500: Twilio created
    the message (accept) or not. Returns the time of the next tick."""
    world.twilio(m["provider_message_id"], "failed", error_code=30008)
    assert world.once().returncode == 0
    world.p.fake.fault(match="/Messages.json", method="POST", status=500, accept=accept)
    cp = world.once("--now", iso(now_ms() + 2 * 60 * 1000))
    assert cp.returncode == 0, cp.stderr
    assert world.get(m)["supportd_resend"]["uncertain"] is True
    return iso(now_ms() + 20 * 60 * 1000)


def twilio_posts(world) -> int:
    return len([r for r in world.p.fake.requests("/Messages.json") if r["method"] == "POST"])


@pytest.mark.parametrize("body", ["Здравствуйте, Лена! " * 75, "您的工单已更新。" * 200],
                         ids=["cyrillic-1500", "cjk-1600"])
def test_resend_lookup_compares_the_whole_long_body(world, body):
    """A 1,500-character Cyrillic or 1,600-character CJK SMS (3,000 and 4,800
    bytes of UTF-8) is found by the look-up, not sent twice."""
    assert len(body) <= 1600 and len(body.encode()) > 1700
    m = world.message("twilio", status="sent", body=body)
    later = fail_then_uncertain_resend(world, m)
    assert len(world.p.fake.sent()["twilio"]) == 1
    cp = world.once("--now", later)
    assert cp.returncode == 0, cp.stderr
    sent = world.p.fake.sent()["twilio"]
    assert len(sent) == 1, "sent twice"
    assert world.get(m)["provider_message_id"] == sent[0]["sid"]
    assert tick_end(cp)["counts"]["resend_recovered"] == 1


def test_resend_lookup_ignores_an_identical_message_sent_before_it(world):
    """The same text to the same number a minute before the re-send started
    (another message of the conversation): not this re-send, which Twilio
    never got (500, not created). It is sent, and its own SID recorded."""
    m = world.message("twilio", status="sent")
    earlier = "SM" + uuid.uuid4().hex
    world.p.fake.message(sid=earlier, account_sid=world.p.twilio_sid, to=m["to"],
                         **{"from": m["from"]}, body=m["body"], status="delivered",
                         date_created=rfc2822(datetime.now(timezone.utc) - timedelta(minutes=1)))
    later = fail_then_uncertain_resend(world, m, accept=False)
    cp = world.once("--now", later)
    assert cp.returncode == 0, cp.stderr
    sent = world.p.fake.sent()["twilio"]
    new = [s for s in sent if s["sid"] != earlier]
    assert len(new) == 1, "the re-send was taken for the earlier message and never sent"
    got = world.get(m)
    assert got["provider_message_id"] == new[0]["sid"] and got["attempts"] == 2


def test_resend_lookup_never_takes_the_failed_original(world):
    """The original send (same To, From, Body, created just now, failed) is
    not the re-send: taking its SID would leave the message queued forever."""
    original = "SM" + uuid.uuid4().hex
    m = world.message("twilio", status="sent", pmid=original)
    world.p.fake.message(sid=original, account_sid=world.p.twilio_sid, to=m["to"],
                         **{"from": m["from"]}, body=m["body"], status="failed",
                         error_code=30008)
    later = fail_then_uncertain_resend(world, m, accept=False)
    cp = world.once("--now", later)
    assert cp.returncode == 0, cp.stderr
    got = world.get(m)
    assert got["provider_message_id"] != original, "the failed original was taken as the re-send"
    new = [s for s in world.p.fake.sent()["twilio"] if s["sid"] != original]
    assert len(new) == 1 and got["provider_message_id"] == new[0]["sid"]


def test_resend_lookup_finds_a_messaging_service_send(world):
    """Sent through a Messaging Service (from = MG…): Twilio's `from` is the
    number it picked, so the look-up filters by To and matches
    messaging_service_sid on the result."""
    service = "MG" + uuid.uuid4().hex
    world.p.fake.state(messaging_services={service: ["+15557651111"]})
    m = world.message("twilio", status="sent", **{"from": service})
    later = fail_then_uncertain_resend(world, m)
    sent = world.p.fake.sent()["twilio"]
    assert len(sent) == 1 and sent[0]["messaging_service_sid"] == service
    cp = world.once("--now", later)
    assert cp.returncode == 0, cp.stderr
    sent = world.p.fake.sent()["twilio"]
    assert len(sent) == 1, "sent twice"
    assert world.get(m)["provider_message_id"] == sent[0]["sid"]
    lookups = [r for r in world.p.fake.requests("/Messages.json") if r["method"] == "GET"]
    assert lookups and all("From=MG" not in r["query"] for r in lookups)


# ----------------------------------------- the re-send's "started" marker ----

def test_kill_9_while_twilio_accepts_the_resend_then_found_not_sent_again(world):
    """supportd dies between Twilio's acceptance of a re-send and recording it,
    and its Redis claim is gone (expired, or Redis lost its data): the marker
    written before the send makes the next tick look the message up, record
    its SID and send nothing."""
    m = world.message("twilio", status="sent")
    world.twilio(m["provider_message_id"], "failed", error_code=30008)
    assert world.once().returncode == 0
    later = iso(now_ms() + 2 * 60 * 1000)
    # Twilio takes the request and creates the message 3 s later; supportd is
    # killed while it waits for the answer
    world.p.fake.fault(match="/Messages.json", method="POST", delay_ms=3000, status=201,
                       accept=True)
    d = world.start("doomed", "--now", later, QM_SUPPORT_LEASE_TTL=1,
                    QM_SUPPORT_HTTP_TIMEOUT_MS=20000)
    wait_until(lambda: twilio_posts(world) == 1, 30, what="the re-send at Twilio")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    wait_until(lambda: len(world.p.fake.sent()["twilio"]) == 1, 10, what="Twilio's acceptance")
    wait_until(lambda: world.sd.lease("message-status") is None, 10, what="the lease to expire")
    claims = list(world.sd.redis.scan_iter(match=world.sd.key("outbox:claim:resend:*")))
    assert claims
    world.sd.redis.delete(*claims)
    # once the in-flight window (a claim's 5 minutes from the send's start) has passed
    cp = world.once("--now", iso(now_ms() + 8 * 60 * 1000))
    assert cp.returncode == 0, cp.stderr
    sent = world.p.fake.sent()["twilio"]
    assert len(sent) == 1 and twilio_posts(world) == 1, "re-sent blind after the crash"
    got = world.get(m)
    assert got["provider_message_id"] == sent[0]["sid"] and got["attempts"] == 2
    assert "supportd_resend" not in got
    assert tick_end(cp)["counts"]["resend_recovered"] == 1


def test_resend_whose_sender_ended_while_twilio_still_holds_it_is_not_sent_again(world):
    """The chaos run (seed 23): a re-send's answer was slow, its tick ended without
    recording the outcome (its lease was lost; here: killed) and released or lost its
    claim, and another instance looked Twilio up at once — before Twilio had created
    the message — and sent a second SMS. A send started less than a claim's lifetime
    ago with no outcome recorded is left alone; the look-up comes after."""
    m = world.message("twilio", status="sent")
    world.twilio(m["provider_message_id"], "failed", error_code=30008)
    assert world.once().returncode == 0
    later = now_ms() + 2 * 60 * 1000
    # Twilio creates the message 4 s after the request arrives
    world.p.fake.fault(match="/Messages.json", method="POST", delay_ms=4000, status=201,
                       accept=True)
    d = world.start("doomed", "--now", iso(later), QM_SUPPORT_LEASE_TTL=1,
                    QM_SUPPORT_HTTP_TIMEOUT_MS=20000)
    wait_until(lambda: twilio_posts(world) == 1, 30, what="the re-send at Twilio")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    world.sd.redis.delete(*world.sd.redis.scan_iter(match=world.sd.key("outbox:claim:resend:*")))
    wait_until(lambda: world.sd.lease("message-status") is None, 10, what="the lease to expire")
    assert world.p.fake.sent()["twilio"] == [], "Twilio created it too early for this test"
    cp = world.once("--now", iso(later))  # another instance, at once
    assert cp.returncode == 0, cp.stderr
    assert twilio_posts(world) == 1, "sent again while the first was still at Twilio"
    assert tick_end(cp)["counts"]["resend_in_flight"] == 1
    wait_until(lambda: len(world.p.fake.sent()["twilio"]) == 1, 15, what="Twilio's acceptance")
    cp = world.once("--now", iso(later + 6 * 60 * 1000))
    assert cp.returncode == 0, cp.stderr
    sent = world.p.fake.sent()["twilio"]
    assert len(sent) == 1 and twilio_posts(world) == 1
    got = world.get(m)
    assert got["provider_message_id"] == sent[0]["sid"] and got["attempts"] == 2
    assert tick_end(cp)["counts"]["resend_recovered"] == 1


def test_resend_marker_that_does_not_land_means_no_send(world, tmp_path):
    """The "re-send started" marker is written before Twilio is called; when
    that write does not land (the platform changed the message meanwhile),
    nothing is sent this tick; the next tick sends it once."""
    seams = tmp_path / "seams"
    seams.mkdir()
    m = world.message("twilio", status="sent")
    world.twilio(m["provider_message_id"], "failed", error_code=30008)
    assert world.once().returncode == 0
    later = iso(now_ms() + 2 * 60 * 1000)
    (seams / "message_status_before_resend_mark.arm").touch()
    d = world.start("marker", "--now", later, QM_SUPPORT_TEST_SEAMS=str(seams))
    wait_until(lambda: (seams / "message_status_before_resend_mark.reached").exists(), 20,
               what="the seam")
    world.db[MESSAGES].update_one({"_id": m["_id"]}, {"$set": {
        "updated_at": datetime.now(timezone.utc), "tags": ["vip"]}})
    (seams / "message_status_before_resend_mark.go").touch()
    assert d.wait_exit(30) == 0, d.stderr()[-3000:]
    assert twilio_posts(world) == 0, "sent without its marker"
    got = world.get(m)
    assert got["tags"] == ["vip"] and got["attempts"] == 1 and "supportd_resend" not in got
    cp = world.once("--now", later)
    assert cp.returncode == 0, cp.stderr
    sent = world.p.fake.sent()["twilio"]
    assert len(sent) == 1 and world.get(m)["provider_message_id"] == sent[0]["sid"]


# ------------------------------------------------------ reconcile starves ----

def test_reconcile_reaches_twilio_messages_behind_many_unpollable_ones(world):
    """510 stale SendGrid messages (never polled: SendGrid cannot be asked) and
    510 stale Twilio ones polled a minute ago, all older than 5 stale Twilio
    messages: those 5 are polled, and each poll is remembered
    (supportd_polled_at), so the next tick does not ask again."""
    long_ago = datetime.now(timezone.utc) - timedelta(hours=20)
    polled = datetime.now(timezone.utc) - timedelta(minutes=1)
    t = datetime.now(timezone.utc) - timedelta(hours=13)

    def doc(provider, updated_at, **kw):
        channel = "sms" if provider == "twilio" else "email"
        d = {"_id": ObjectId(), "conversation_id": world.conv, "room_id": world.room,
             "direction": "outbound", "channel": channel, "provider": provider,
             "provider_message_id": ("SM" + uuid.uuid4().hex) if provider == "twilio"
             else uuid.uuid4().hex[:22],
             "to": "+15551230000" if channel == "sms" else "lena@example.org",
             "from": "+15557650000" if channel == "sms" else "support@example.com",
             "body": "Hello", "status": "sent",
             "status_history": [{"status": "sent", "at": updated_at, "source": "send"}],
             "error": None, "attempts": 1, "next_retry_at": None, "final": False,
             "sent_at": updated_at, "created_at": updated_at, "updated_at": updated_at}
        d.update(kw)
        return d
    world.db[MESSAGES].insert_many([doc("sendgrid", long_ago) for _ in range(510)]
                                   + [doc("twilio", long_ago, supportd_polled_at=polled)
                                      for _ in range(510)])
    due = [world.message("twilio", status="sent", updated_at=t) for _ in range(5)]
    for m in due:
        world.p.fake.message(sid=m["provider_message_id"], account_sid=world.p.twilio_sid,
                             status="delivered")
    # Twilio says "sent", which the webhook brought already: no news
    sid = "SM" + uuid.uuid4().hex
    due.append(world.message("twilio", status="sent", pmid=sid, updated_at=t, status_history=[
        {"status": "sent", "at": t, "source": "webhook", "event_id": f"twilio:{sid}:sent"}]))
    world.p.fake.message(sid=sid, account_sid=world.p.twilio_sid, status="sent")
    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    assert tick_end(cp)["counts"]["polled"] == 6
    assert [world.get(m)["status"] for m in due] == ["delivered"] * 5 + ["sent"]
    polls = {r["path"].rsplit("/", 1)[1] for r in world.p.fake.requests("/Messages/")}
    assert polls == {f"{m['provider_message_id']}.json" for m in due}
    still = world.get(due[-1])
    assert still["supportd_polled_at"] and still["updated_at"] == due[-1]["updated_at"].replace(
        microsecond=due[-1]["updated_at"].microsecond // 1000 * 1000)
    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    assert tick_end(cp)["counts"]["polled"] == 0  # polled a moment ago: not asked again
