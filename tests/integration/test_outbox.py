"""The notification outbox (SPEC §2 `conversation-notification`) delivered by
the real binary — `supportd once outbox` — through the fake Twilio/SendGrid
server: hand-inserted entries go out once, every injected fault ends in its
documented outcome, two deliverers never send an entry twice, and no secret
reaches the logs (checked after every test by the `providers` fixture)."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime, timedelta, timezone

import pymongo
import pytest

from conftest import parse_log_lines, services_script, wait_until
from fakes_fixtures import *  # noqa: F401,F403  (provider_fake, providers)


def naive_utc(dt: datetime) -> datetime:
    return dt.astimezone(timezone.utc).replace(tzinfo=None) if dt.tzinfo else dt


def tick_counts(cp_or_text) -> dict:
    text = cp_or_text if isinstance(cp_or_text, str) else cp_or_text.stderr
    ends = [e for e in parse_log_lines(text)[0] if e.get("event") == "tick.end"]
    assert ends, f"no tick.end in:\n{text[-3000:]}"
    return ends[-1].get("counts", {})


# ---- delivered once ---------------------------------------------------------

def test_email_entry_delivered_once_via_sendgrid(providers):
    e = providers.entry("email", subject="Grüße — Ticket #42", from_name="Support Team")
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr

    sent = providers.fake.sent()["sendgrid"]
    assert len(sent) == 1, sent
    body = sent[0]["json"]
    assert body["personalizations"] == [{"to": [{"email": "ann@example.org",
                                                  "name": "Ann Agent"}]}]
    assert body["from"] == {"email": "support@example.com", "name": "Support Team"}
    assert body["subject"] == "Grüße — Ticket #42"
    assert body["content"] == [{"type": "text/plain", "value": "Hello Ann,\n.a reply\n"},
                               {"type": "text/html", "value": "<p>Hello Ann,</p>"}]
    assert body["custom_args"] == {"supportd_key": e["key"]}
    req = providers.fake.requests("/v3/mail/send")[0]
    assert req["headers"]["Authorization"] == "Bearer " + providers.secrets["SENDGRID_API_KEY"]

    doc = providers.get(e)
    assert doc["status"] == "sent"
    assert doc["provider"] == "sendgrid"
    assert doc["provider_message_id"] == sent[0]["message_id"]
    assert doc["attempts"] == 1
    assert doc["sent_at"] is not None and doc["error"] is None
    assert tick_counts(cp)["outbox_sent"] == 1

    # A second tick finds nothing to do.
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    assert len(providers.fake.sent()["sendgrid"]) == 1
    assert tick_counts(cp)["outbox_due"] == 0


def test_sms_entry_delivered_via_twilio(providers):
    e = providers.entry("sms")
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    msgs = providers.fake.sent()["twilio"]
    assert len(msgs) == 1, msgs
    req = providers.fake.requests("/Messages.json")[0]
    assert req["method"] == "POST"
    assert req["path"] == f"/2010-04-01/Accounts/{providers.twilio_sid}/Messages.json"
    assert req["form"] == {"To": "+15551234567", "From": "+15557654321",
                           "Body": "Your ticket #42 was updated.",
                           "StatusCallback": "https://hooks.example.com/twilio"}
    doc = providers.get(e)
    assert doc["status"] == "sent" and doc["provider"] == "twilio"
    assert doc["provider_message_id"] == msgs[0]["sid"]
    assert "send_started_at" not in doc


def test_sms_sender_and_subaccount_from_channel(providers):
    """An SMS entry without from/account_sid/status_callback takes them from
    its channel (a sub-account of the main credentials)."""
    sub = "AC" + "5" * 32
    providers.fake.state(subaccounts=[sub])
    db = providers.sd.mongo_client[providers.sd.db_name]
    ch = db["conversation-channel"].insert_one({
        "type": "sms", "provider": "twilio", "phone_number": "+15550001111",
        "account_sid": sub, "webhook_url": "https://hooks.example.com/ch1", "active": True})
    e = providers.entry("sms", channel_id=ch.inserted_id)
    providers.coll.update_one({"_id": e["_id"]}, {"$unset": {"from": "", "status_callback": ""}})
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    req = providers.fake.requests("/Messages.json")[0]
    assert req["path"] == f"/2010-04-01/Accounts/{sub}/Messages.json"
    assert req["form"]["From"] == "+15550001111"
    assert req["form"]["StatusCallback"] == "https://hooks.example.com/ch1"
    assert providers.get(e)["status"] == "sent"


# ---- faults -----------------------------------------------------------------

def test_429_with_retry_after_then_202_delivers_exactly_once(providers):
    providers.fake.fault(match="/v3/mail/send", status=429, retry_after=1, times=1)
    e = providers.entry("email")
    t0 = time.monotonic()
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    assert time.monotonic() - t0 >= 1.0  # waited out Retry-After: 1
    assert len(providers.fake.requests("/v3/mail/send")) == 2
    assert len(providers.fake.sent()["sendgrid"]) == 1
    doc = providers.get(e)
    assert doc["status"] == "sent" and doc["attempts"] == 1


def test_500_leaves_entry_pending_with_backoff(providers):
    providers.fake.fault(match="/v3/mail/send", status=500, times=0)
    e = providers.entry("email")
    before = datetime.now(timezone.utc).replace(tzinfo=None)
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    doc = providers.get(e)
    assert doc["status"] == "pending"
    assert doc["attempts"] == 1
    assert doc["error"]["code"] == "http_500"
    assert "500" in doc["error"]["message"]
    # Backoff after the first failure: 30 s to 1 min.
    wait = (doc["next_attempt_at"] - before).total_seconds()
    assert 25 <= wait <= 65, wait
    # A send is not retried in-process on 5xx (it may have been accepted).
    assert len(providers.fake.requests("/v3/mail/send")) == 1
    # Not due yet: the next tick leaves it alone...
    providers.run()
    assert len(providers.fake.requests("/v3/mail/send")) == 1
    # ...and once due (and the provider healthy again) it goes out.
    providers.fake.reset(twilio_sid=providers.twilio_sid,
                         twilio_token=providers.secrets["TWILIO_AUTH_TOKEN"],
                         sendgrid_key=providers.secrets["SENDGRID_API_KEY"])
    later = (datetime.now(timezone.utc) + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cp = providers.run("--now", later)
    assert cp.returncode == 0, cp.stderr
    doc = providers.get(e)
    assert doc["status"] == "sent" and doc["attempts"] == 2 and doc["error"] is None


def test_permanent_after_max_attempts(providers):
    providers.fake.fault(match="/v3/mail/send", status=503, times=0)
    e = providers.entry("email", attempts=7)
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    doc = providers.get(e)
    assert doc["status"] == "failed" and doc["attempts"] == 8
    assert doc["error"]["message"].startswith("gave up after 8 attempts:")


def test_timeout_leaves_entry_pending(providers):
    providers.fake.fault(match="/v3/mail/send", delay_ms=3000, times=1)
    e = providers.entry("email")
    t0 = time.monotonic()
    cp = providers.run(QM_SUPPORT_HTTP_TIMEOUT_MS="800")
    assert cp.returncode == 0, cp.stderr
    assert time.monotonic() - t0 < 10
    doc = providers.get(e)
    assert doc["status"] == "pending" and doc["attempts"] == 1
    assert doc["error"]["code"] == "timeout"
    assert "no answer within 800 ms" in doc["error"]["message"]


def test_malformed_answers(providers):
    """Twilio 201 with a body that is not JSON: the message was accepted, so the
    entry is sent (its SID found by a lookup), never resent. SendGrid 400 with
    a body that is not JSON: failed, with the status as the reason."""
    providers.fake.fault(match="/Messages.json", method="POST", body="not json{")
    sms = providers.entry("sms")
    providers.fake.fault(match="/v3/mail/send", status=400, body="not json{")
    mail = providers.entry("email")
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    msgs = providers.fake.sent()["twilio"]
    assert len(msgs) == 1
    doc = providers.get(sms)
    assert doc["status"] == "sent"
    assert doc["provider_message_id"] == msgs[0]["sid"]
    doc = providers.get(mail)
    assert doc["status"] == "failed"
    assert "400 Bad Request" in doc["error"]["message"]


def test_twilio_5xx_but_accepted_is_looked_up_not_resent(providers):
    """Twilio answers 500 yet created the message: the next attempt asks
    Twilio first and records the SID instead of sending again."""
    providers.fake.fault(match="/Messages.json", method="POST", status=500, accept=True)
    e = providers.entry("sms")
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    doc = providers.get(e)
    assert doc["status"] == "pending" and doc["attempts"] == 1
    assert doc.get("send_started_at") is not None
    later = (datetime.now(timezone.utc) + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cp = providers.run("--now", later)
    assert cp.returncode == 0, cp.stderr
    msgs = providers.fake.sent()["twilio"]
    assert len(msgs) == 1, msgs
    assert len([r for r in providers.fake.requests("/Messages.json") if r["method"] == "POST"]) == 1
    doc = providers.get(e)
    assert doc["status"] == "sent" and doc["provider_message_id"] == msgs[0]["sid"]
    assert any(ev.get("event") == "outbox.recovered" for ev in parse_log_lines(cp.stderr)[0])


def test_twilio_invalid_number_fails(providers):
    e = providers.entry("sms", recipient={"role": "customer", "phone": "12345"})
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    doc = providers.get(e)
    assert doc["status"] == "failed"
    assert doc["error"]["code"] == "twilio_21211"
    assert "not a valid phone number" in doc["error"]["message"]


def test_invalid_entries_fail_and_the_rest_goes_on(providers):
    bad = providers.entry("email", recipient={"role": "agent"})  # no email
    weird = providers.entry("fax")
    good = providers.entry("email")
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    assert providers.get(bad)["status"] == "failed"
    assert "recipient.email" in providers.get(bad)["error"]["message"]
    assert providers.get(weird)["status"] == "failed"
    assert providers.get(good)["status"] == "sent"


def test_provider_not_configured_waits(providers):
    e = providers.entry("email")
    cp = providers.run(SENDGRID_API_KEY=None)
    assert cp.returncode == 0, cp.stderr
    doc = providers.get(e)
    assert doc["status"] == "pending"
    assert doc["error"]["code"] == "not_configured"
    assert "SENDGRID_API_KEY" in doc["error"]["message"]


def test_uncertain_sms_keeps_its_mark_while_it_waits_for_the_operator(providers):
    """Found in review: an SMS whose last send may have reached Twilio carries its
    send_started_at, the cue to ask Twilio before sending again. A tick that could not
    even prepare it (Twilio not configured, a database blip) dropped the cue, and the
    next attempt sent blind: a duplicate if the first had arrived. The mark stays."""
    providers.fake.fault(match="/Messages.json", method="POST", status=500, accept=True)
    e = providers.entry("sms")
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    assert providers.get(e).get("send_started_at") is not None  # uncertain: Twilio has it
    later = (datetime.now(timezone.utc) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cp = providers.run("--now", later, TWILIO_AUTH_TOKEN=None)
    assert cp.returncode == 0, cp.stderr
    doc = providers.get(e)
    assert doc["status"] == "pending" and doc["error"]["code"] == "not_configured", doc
    assert doc.get("send_started_at") is not None, "the cue to ask Twilio first was dropped"
    later = (datetime.now(timezone.utc) + timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cp = providers.run("--now", later)
    assert cp.returncode == 0, cp.stderr
    msgs = providers.fake.sent()["twilio"]
    assert len(msgs) == 1, f"sent {len(msgs)} times"
    doc = providers.get(e)
    assert doc["status"] == "sent" and doc["provider_message_id"] == msgs[0]["sid"], doc


# ---- claims -----------------------------------------------------------------

def test_sent_marker_in_redis_is_recorded_not_resent(providers, redis_client):
    """A deliverer died after the provider accepted the entry but before
    MongoDB heard of it: the claim says "sent:…", so the next one records it."""
    e = providers.entry("email")
    redis_client.set(providers.sd.key(f"outbox:claim:{e['_id']}"), "sent:sendgrid:MSGID123",
                     px=60000)
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    assert providers.fake.requests("/v3/mail/send") == []
    doc = providers.get(e)
    assert doc["status"] == "sent" and doc["provider_message_id"] == "MSGID123"
    assert doc["provider"] == "sendgrid"


def test_entry_claimed_elsewhere_is_left_alone(providers, redis_client):
    e = providers.entry("email")
    key = providers.sd.key(f"outbox:claim:{e['_id']}")
    redis_client.set(key, "claimed:otherhost:1/abcd", px=60000)
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    assert providers.fake.requests("/v3/mail/send") == []
    assert providers.get(e)["status"] == "pending"
    assert providers.get(e)["attempts"] == 0
    assert redis_client.get(key) == "claimed:otherhost:1/abcd"  # never deleted another's claim
    assert tick_counts(cp)["outbox_skipped"] == 1


def test_sent_entry_keeps_marker_and_claim_released_on_retry(providers, redis_client):
    ok = providers.entry("email")
    providers.run()
    mark = redis_client.get(providers.sd.key(f"outbox:claim:{ok['_id']}"))
    assert mark == "sent:sendgrid:" + providers.get(ok)["provider_message_id"]
    ttl = redis_client.pttl(providers.sd.key(f"outbox:claim:{ok['_id']}"))
    assert 6 * 86400 * 1000 < ttl <= 7 * 86400 * 1000
    providers.fake.fault(match="/v3/mail/send", status=503, times=0)
    retry = providers.entry("email")
    providers.run()
    # the claim became the "done:" marker: the entry as this deliverer left it
    key = providers.sd.key(f"outbox:claim:{retry['_id']}")
    assert providers.get(retry)["attempts"] == 1
    assert redis_client.get(key) == "done:1"
    assert 0 < redis_client.pttl(key) <= 120_000


def test_claims_are_released_after_a_dropped_redis_connection(providers, redis_client, tmp_path):
    """Found by the chaos run (seed 1): Redis dropped the deliverer's connection just as the
    batch's claims were released, and they stayed held for the full 5-minute claim, so an
    entry due for a retry could not be sent by anyone until then. The release is retried."""
    seams = tmp_path / "seams"
    seams.mkdir()
    (seams / "outbox_before_release.arm").touch()
    providers.fake.fault(match="/v3/mail/send", status=503, times=0)
    retry = providers.entry("email")
    d = providers.start("blip", QM_SUPPORT_TEST_SEAMS=str(seams))
    wait_until(lambda: (seams / "outbox_before_release.reached").exists(), 60, what="the seam")
    # every other client's connection closed, as a Redis restart or failover does
    redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    (seams / "outbox_before_release.go").touch()
    assert d.wait_exit(60) == 0, d.tail()
    providers.outputs.append(d.stderr())
    assert providers.get(retry)["attempts"] == 1
    assert redis_client.get(providers.sd.key(f"outbox:claim:{retry['_id']}")) == "done:1"


def test_outcomes_reach_the_database_through_an_outage_and_a_redis_loss(providers, redis_client,
                                                                         tmp_path):
    """Found by the chaos run (seed 1): a batch's outcome write failed while PostgreSQL
    restarted under FerretDB, Redis lost its data half a second later (the claim's "sent:"
    marker with it), and the next tick sent the entry again. The outcomes are now tried
    again until the database is back, and only for the version claimed."""
    seams = tmp_path / "seams"
    seams.mkdir()
    (seams / "outbox_before_outcomes.arm").touch()
    sent = providers.entry("email")
    failed = providers.entry("email", key=f"retry:{sent['key']}",
                             recipient={"role": "agent", "email": "bob@example.org"})
    providers.fake.fault(match="/v3/mail/send", status=500)  # one of the two: attempt 1
    d = providers.start("outage", QM_SUPPORT_TEST_SEAMS=str(seams))
    wait_until(lambda: (seams / "outbox_before_outcomes.reached").exists(), 60, what="the seam")
    assert len(providers.fake.requests("/v3/mail/send")) == 2
    services_script("stop-postgres")
    try:
        (seams / "outbox_before_outcomes.go").touch()
        wait_until(lambda: "recording 2 outbox outcomes" in d.stderr(), 60,
                   what="the outcome write failing")
        for key in redis_client.scan_iter(providers.sd.key("*")):  # Redis loses its data
            redis_client.delete(key)
    finally:
        services_script("start-postgres", timeout=120)
    assert d.wait_exit(120) == 0, d.tail()
    providers.outputs.append(d.stderr())
    ok = [s for s in (providers.get(sent), providers.get(failed)) if s["status"] == "sent"]
    retry = [s for s in (providers.get(sent), providers.get(failed)) if s["status"] == "pending"]
    assert len(ok) == 1 and ok[0]["attempts"] == 1, (ok, retry)
    assert len(retry) == 1 and retry[0]["attempts"] == 1, "the failed attempt counted twice"
    providers.coll.update_one({"_id": retry[0]["_id"]},
                              {"$set": {"next_attempt_at": datetime.now(timezone.utc)}})
    cp = providers.run()  # the next tick: the retry goes out, the sent one does not
    assert cp.returncode == 0, cp.stderr
    to = [r["json"]["personalizations"][0]["to"][0]["email"]
          for r in providers.fake.requests("/v3/mail/send")]
    assert sorted(to) == sorted(["ann@example.org", "bob@example.org",
                                 retry[0]["recipient"]["email"]]), to


@pytest.mark.parametrize("via,path,sent", [("sms", "/Messages.json", "twilio"),
                                            ("email", "/v3/mail/send", "sendgrid")])
def test_entry_in_flight_is_left_alone_when_redis_lost_its_claim(providers, redis_client, via,
                                                                 path, sent):
    """Found by the chaos run: Redis restarted without its data while a deliverer waited for
    the provider's answer (seed 21: an SMS; the second deliverer's Twilio look-up came before
    Twilio had created it) or for the rest of its batch before writing the outcomes (seed 22:
    20 e-mails, whose "sent:" markers went with Redis's data); another deliverer got the claims
    and sent them again. An entry whose send started less than a claim's lifetime ago without
    an outcome is now left to its deliverer."""
    e = providers.entry(via)
    # the provider takes 4 s to answer
    providers.fake.fault(match=path, method="POST", delay_ms=4000)
    a = providers.start("slow", QM_SUPPORT_HTTP_TIMEOUT_MS="15000")
    wait_until(lambda: any(r["method"] == "POST" for r in providers.fake.requests(path)),
               30, what="the first deliverer's request")
    for key in redis_client.scan_iter(providers.sd.key("*")):  # Redis loses its data
        redis_client.delete(key)
    cp = providers.run()  # a second deliverer, while the first waits for the answer
    assert cp.returncode == 0, cp.stderr
    assert a.wait_exit(60) == 0, a.tail()
    providers.outputs.append(a.stderr())
    msgs = providers.fake.sent()[sent]
    assert len(msgs) == 1, f"sent {len(msgs)} times"
    doc = providers.get(e)
    assert doc["status"] == "sent" and doc["provider_message_id"], doc
    assert "send_started_at" not in doc, doc
    assert any(ev.get("event") == "outbox.in_flight" for ev in parse_log_lines(cp.stderr)[0])


def test_copy_read_before_another_deliverer_marked_it_is_not_sent(providers, redis_client,
                                                                  tmp_path):
    """Found in review of the in-flight mark: a deliverer's copy from its due query is
    not re-read when younger than a minute (its claim proves it current, unless Redis
    lost the claims' markers). Another deliverer claimed, marked and sent the entry after
    that read; Redis then lost its data, the first got the claim and its copy showed no
    mark. The mark is now a compare-and-set on the copy's: it does not match, the entry
    is not sent again."""
    seams = tmp_path / "seams"
    seams.mkdir()
    (seams / "outbox_before_claims.arm").touch()
    e = providers.entry("email")
    providers.fake.fault(match="/v3/mail/send", method="POST", delay_ms=4000)
    late = providers.start("late", QM_SUPPORT_TEST_SEAMS=str(seams))  # has read its copy
    wait_until(lambda: (seams / "outbox_before_claims.reached").exists(), 60, what="the seam")
    first = providers.start("first", QM_SUPPORT_HTTP_TIMEOUT_MS="15000")
    wait_until(lambda: any(r["method"] == "POST" for r in providers.fake.requests("/v3/mail/send")),
               30, what="the first deliverer's request")
    for key in redis_client.scan_iter(providers.sd.key("*")):  # Redis loses its data
        redis_client.delete(key)
    (seams / "outbox_before_claims.go").touch()
    assert late.wait_exit(60) == 0, late.tail()
    assert first.wait_exit(60) == 0, first.tail()
    providers.outputs += [late.stderr(), first.stderr()]
    msgs = providers.fake.sent()["sendgrid"]
    assert len(msgs) == 1, f"sent {len(msgs)} times"
    doc = providers.get(e)
    assert doc["status"] == "sent" and doc["attempts"] == 1 and "send_started_at" not in doc, doc
    assert any(ev.get("event") == "outbox.in_flight" for ev in parse_log_lines(late.stderr())[0])


def test_entries_that_cannot_be_marked_are_handed_back_without_an_attempt(providers, tmp_path):
    """Found in review: the database failing the mark before a batch's sends counted an
    attempt for every entry of the batch (eight such blips and a mail failed unsent). They
    are now handed back as they were: pending, no attempt, no mark; the next tick sends."""
    seams = tmp_path / "seams"
    seams.mkdir()
    (seams / "outbox_before_claims.arm").touch()
    e = providers.entry("email")
    d = providers.start("blip", QM_SUPPORT_TEST_SEAMS=str(seams))
    wait_until(lambda: (seams / "outbox_before_claims.reached").exists(), 60, what="the seam")
    services_script("stop-postgres")
    try:
        (seams / "outbox_before_claims.go").touch()
        wait_until(lambda: "entries as being sent:" in d.stderr(), 60, what="the mark failing")
    finally:
        services_script("start-postgres", timeout=120)
    assert d.wait_exit(120) == 0, d.tail()
    providers.outputs.append(d.stderr())
    assert providers.fake.requests("/v3/mail/send") == []
    doc = providers.get(e)
    assert doc["status"] == "pending" and doc.get("attempts", 0) == 0, doc
    assert "send_started_at" not in doc and doc.get("error") is None, doc
    assert tick_counts(d.stderr())["outbox_handed_back"] == 1
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    assert len(providers.fake.sent()["sendgrid"]) == 1 and providers.get(e)["status"] == "sent"


def test_copy_older_than_the_done_marker_is_not_sent(providers, redis_client):
    """Another deliverer finished the entry (attempts 0 → 1) after our due
    query read it: its "done:1" refuses our copy at attempts 0, without a
    re-read; a copy at attempts 1 takes the claim over and sends."""
    stale = providers.entry("email")
    key = providers.sd.key(f"outbox:claim:{stale['_id']}")
    redis_client.set(key, "done:1", px=60000)
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    assert providers.fake.requests("/v3/mail/send") == []
    assert providers.get(stale)["status"] == "pending"
    assert tick_counts(cp)["outbox_skipped"] == 1
    assert redis_client.get(key) == "done:1"  # left as it was

    providers.coll.update_one({"_id": stale["_id"]}, {"$set": {"attempts": 1}})
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    assert len(providers.fake.requests("/v3/mail/send")) == 1
    doc = providers.get(stale)
    assert doc["status"] == "sent" and doc["attempts"] == 2
    assert redis_client.get(key) == "sent:sendgrid:" + doc["provider_message_id"]


def test_duplicate_key_rejected_by_unique_index(providers):
    providers.run()  # creates the indexes
    names = {ix["name"]: ix for ix in providers.coll.list_indexes()}
    assert names["supportd_key"].get("unique") is True
    providers.entry("email", key="dup:1")
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        providers.entry("email", key="dup:1")


def test_two_concurrent_deliverers_send_each_entry_once(providers):
    # Slow sends so the two processes overlap for the whole batch.
    providers.fake.fault(match="/v3/mail/send", delay_ms=50, times=0)
    entries = [providers.entry("email", key=f"race:{i}",
                               recipient={"role": "agent", "email": f"agent{i}@example.org"})
               for i in range(50)]
    a = providers.start("A")
    b = providers.start("B")
    assert a.wait_exit(120) == 0, a.tail()
    assert b.wait_exit(120) == 0, b.tail()
    providers.outputs += [a.stderr(), b.stderr()]

    sent = providers.fake.sent()["sendgrid"]
    keys = [m["json"]["custom_args"]["supportd_key"] for m in sent]
    assert len(keys) == 50, f"{len(keys)} sends for 50 entries"
    assert sorted(set(keys)) == sorted(e["key"] for e in entries)
    docs = list(providers.coll.find({"key": {"$regex": "^race:"}}))
    assert all(d["status"] == "sent" and d["attempts"] == 1 for d in docs)
    assert len({d["provider_message_id"] for d in docs}) == 50
    ca, cb = tick_counts(a.stderr()), tick_counts(b.stderr())
    assert ca["outbox_sent"] + cb["outbox_sent"] == 50, (ca, cb)
    # Both really ran at once: claims are taken a batch at a time (one
    # pipeline), so the later one found the entries claimed by the other.
    assert ca["outbox_due"] > 0 and cb["outbox_due"] > 0, (ca, cb)
    assert ca["outbox_skipped"] + cb["outbox_skipped"] > 0, (ca, cb)


# ---- stops, expired claims, credentials (issue 20) ------------------------------

def _claim(providers, redis_client, doc) -> str | None:
    return redis_client.get(providers.sd.key(f"outbox:claim:{doc['_id']}"))


def _mixed_entries(providers, n_email: int, n_sms: int, tag: str) -> list[dict]:
    """Email and SMS entries, interleaved in due order, each recognisable at the fake
    (email by its key, SMS by its own phone number)."""
    out, base = [], utcnow() - timedelta(minutes=5)
    for i in range(n_email + n_sms):
        due = base + timedelta(milliseconds=i)
        if i % 3 == 2 and n_sms:
            n_sms -= 1
            out.append(providers.entry("sms", key=f"{tag}:sms:{i}", next_attempt_at=due,
                                       recipient={"role": "customer", "phone": f"+1555100{i:04d}"},
                                       text=f"update {i}"))
        else:
            out.append(providers.entry("email", key=f"{tag}:mail:{i}", next_attempt_at=due,
                                       recipient={"role": "agent",
                                                  "email": f"agent{i}@example.org"}))
    return out


def _reached_fake(providers) -> dict:
    """key → number of sends that reached the fake provider."""
    sent = providers.fake.sent()
    got: dict = {}
    for m in sent["sendgrid"]:
        k = m["json"]["custom_args"]["supportd_key"]
        got[k] = got.get(k, 0) + 1
    for m in sent["twilio"]:
        got[m["to"]] = got.get(m["to"], 0) + 1
    return got


def _fake_key(doc) -> str:
    return doc["recipient"]["phone"] if doc["via"] == "sms" else doc["key"]


def test_sigterm_mid_delivery_marks_only_what_the_provider_accepted(providers, redis_client):
    """Issue 20 item 1: SIGTERM while slow sends are in flight. An entry is `sent`
    only if its request reached the provider; one never attempted stays pending,
    unclaimed and untouched; the next run sends the rest, each exactly once."""
    providers.fake.fault(match="/v3/mail/send", delay_ms=1500, times=0)
    providers.fake.fault(match="/Messages.json", method="POST", delay_ms=1500, times=0)
    entries = _mixed_entries(providers, 40, 20, "stop")
    d = providers.start("stopped")
    wait_until(lambda: len(providers.fake.requests()) > 0, 60, what="the first send")
    d.signal(signal.SIGTERM)
    assert d.wait_exit(60) == 0, d.tail()
    providers.outputs.append(d.stderr())
    # The fake answers after its delay even when the client went away: wait
    # until every request it received has been handled.
    wait_until(lambda: len(providers.fake.requests("/v3/mail/send"))
               + len(providers.fake.requests("/Messages.json")) == sum(_reached_fake(providers).values()),
               30, what="the fake to handle every request it received")

    reached = _reached_fake(providers)
    assert 0 < len(reached) < len(entries), reached
    docs = {e["key"]: providers.get(e) for e in entries}
    phantom = [k for k, doc in docs.items()
               if doc["status"] == "sent" and reached.get(_fake_key(doc), 0) != 1]
    assert not phantom, f"{len(phantom)} entries marked sent never reached the provider once"
    for e in entries:
        doc = docs[e["key"]]
        n = reached.get(_fake_key(e), 0)
        if doc["status"] != "sent":
            assert doc["status"] == "pending", doc
            # In-flight requests are finished, not cut: what reached the provider is sent.
            assert n == 0, f"{e['key']} reached the provider but is still {doc['status']}"
            assert doc["attempts"] == 0 and doc.get("error") is None, doc
            assert "send_started_at" not in doc, doc
            claim = _claim(providers, redis_client, e)
            assert claim is None or claim == "done:0", f"{e['key']} left claimed: {claim}"
    counts = tick_counts(d.stderr())
    assert counts["outbox_sent"] == sum(1 for e in entries if providers.get(e)["status"] == "sent")

    providers.fake.reset(twilio_sid=providers.twilio_sid,
                         twilio_token=providers.secrets["TWILIO_AUTH_TOKEN"],
                         sendgrid_key=providers.secrets["SENDGRID_API_KEY"])
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    again = _reached_fake(providers)
    for e in entries:
        doc = providers.get(e)
        assert doc["status"] == "sent", doc
        total = reached.get(_fake_key(e), 0) + again.get(_fake_key(e), 0)
        assert total == 1, f"{e['key']} reached the provider {total} times"


@pytest.mark.parametrize("lost", ["expired_and_taken", "redis_lost_it"])
def test_claim_lost_mid_batch_is_checked_before_each_send(providers, redis_client, tmp_path, lost):
    """Issue 20 item 5: a deliverer's claim expires (or Redis loses it) while its
    batch waits; another deliverer sends the entry meanwhile. The first must not
    send it again: each send re-checks (and extends) its claim first."""
    seams = tmp_path / "seams"
    seams.mkdir()
    (seams / "outbox_before_send.arm").touch()
    entries = [providers.entry("email", key=f"lost:{i}",
                               recipient={"role": "agent", "email": f"a{i}@example.org"})
               for i in range(3)]
    slow = providers.start("slow", QM_SUPPORT_TEST_SEAMS=str(seams))
    wait_until(lambda: (seams / "outbox_before_send.reached").exists(), 60, what="the seam")
    if lost == "expired_and_taken":
        # as if their 5-minute claims had run out: so long ago, too, the sends were marked
        # started (else the next deliverer leaves them to this one: in flight)
        old = datetime.now(timezone.utc) - timedelta(minutes=6)
        for e in entries:
            redis_client.delete(providers.sd.key(f"outbox:claim:{e['_id']}"))
            assert providers.get(e).get("send_started_at") is not None
            providers.coll.update_one({"_id": e["_id"]},
                                      {"$set": {"send_started_at": old, "updated_at": old}})
        cp = providers.run()  # another deliverer sends them
        assert cp.returncode == 0, cp.stderr
        assert all(providers.get(e)["status"] == "sent" for e in entries)
    else:
        for k in redis_client.scan_iter(providers.sd.key("outbox:claim:*")):
            redis_client.delete(k)
    (seams / "outbox_before_send.go").touch()
    assert slow.wait_exit(60) == 0, slow.tail()
    providers.outputs.append(slow.stderr())
    reached = _reached_fake(providers)
    for e in entries:
        assert reached.get(e["key"], 0) == (1 if lost == "expired_and_taken" else 0), reached
    if lost == "redis_lost_it":
        # Handed back untouched; the next deliverer re-reads and sends each once.
        assert all(providers.get(e)["status"] == "pending" and providers.get(e)["attempts"] == 0
                   for e in entries)
        cp = providers.run()
        assert cp.returncode == 0, cp.stderr
        reached = _reached_fake(providers)
        assert all(reached.get(e["key"]) == 1 for e in entries), reached


def test_rotated_key_keeps_mail_pending_until_it_works(providers):
    """Issue 20 item 10: 401/403 mean the provider is not usable with our
    credentials, not that the entry is bad: entries stay pending (not failed, no
    attempt counted); after the first refusal nothing more is sent to it in that
    tick (only requests already in flight, at most 16); an error is logged and
    counted; with the right key every entry goes out once."""
    wrong = "SG.it-wrong-key-" + providers.twilio_sid[-8:]
    providers.watch.append(wrong)
    entries = [providers.entry("email", key=f"rot:{i}",
                               recipient={"role": "agent", "email": f"r{i}@example.org"})
               for i in range(40)]
    seen = 0
    for _ in range(2):
        cp = providers.run(SENDGRID_API_KEY=wrong)
        assert cp.returncode == 0, cp.stderr
        counts = tick_counts(cp)
        assert counts["outbox_waiting"] == 40 and counts["outbox_failed"] == 0, counts
        events = [ev for ev in parse_log_lines(cp.stderr)[0]
                  if ev.get("event") == "outbox.provider_unusable"]
        assert len(events) == 1 and events[0]["level"] == "error", cp.stderr
        assert "SendGrid rejected the API key (401 Unauthorized)" in events[0]["msg"]
        n = len(providers.fake.requests("/v3/mail/send"))
        assert 1 <= n - seen <= 16, f"{n - seen} requests in one tick for 40 entries"
        seen = n
    for e in entries:
        doc = providers.get(e)
        assert doc["status"] == "pending" and doc["attempts"] == 0, doc
    probed = [providers.get(e) for e in entries if providers.get(e).get("error")]
    assert probed and all(p["error"]["code"] == "http_401" for p in probed), probed
    cp = providers.run()
    assert cp.returncode == 0, cp.stderr
    assert sorted(m["json"]["custom_args"]["supportd_key"]
                  for m in providers.fake.sent()["sendgrid"]) == sorted(e["key"] for e in entries)
    assert all(providers.get(e)["status"] == "sent" for e in entries)


def test_not_configured_never_uses_up_attempts(providers):
    """Issue 20 item 10: an entry waiting for the operator (provider not configured)
    does not count attempts, so it is still there, pending, when the operator acts."""
    e = providers.entry("email")
    now = utcnow()
    for i in range(10):  # more ticks than OUTBOX_MAX_ATTEMPTS, each past any backoff
        later = (now + timedelta(hours=2 * (i + 1))).strftime("%Y-%m-%dT%H:%M:%SZ")
        cp = providers.run("--now", later, SENDGRID_API_KEY=None)
        assert cp.returncode == 0, cp.stderr
        assert tick_counts(cp)["outbox_waiting"] == 1
    doc = providers.get(e)
    assert doc["status"] == "pending" and doc["attempts"] == 0, doc
    assert doc["error"]["code"] == "not_configured"
    cp = providers.run("--now", (now + timedelta(hours=30)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert cp.returncode == 0, cp.stderr
    assert providers.get(e)["status"] == "sent"
