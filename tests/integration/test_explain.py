"""`supportd explain ID`: the jobs' own decisions for one conversation, each with its
verdict (would_send, already_sent, suppressed with the reason), its SLA and the rule
calls behind it; a message's status history. Read-only, like dry-run --live."""
from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from bson import ObjectId

from fakes_fixtures import *  # noqa: F401,F403
from test_live_dry_run import snapshot, snoozed
from test_message_status import World as MsWorld
from test_notification import T0, World, failing_rules, installed, iso


@pytest.fixture
def world(sd, providers):
    w = World(sd, providers)
    yield w
    w.client.close()


def explain(world, oid, *, now=T0, fmt="json", check=True):
    cp = world.sd.cli("explain", str(oid), "--now", iso(now), "--format", fmt, timeout=90,
                      **world.env())
    if check:
        assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout) if fmt == "json" and check else cp


def verdicts(report, type_):
    return [d for d in report["decisions"] if d["type"] == type_]


def test_would_send_then_already_sent_with_its_status(world):
    installed(world)
    t = world.ticket(T0)
    report = explain(world, t)
    assert report["kind"] == "conversation" and report["conversation"]["status"] == "open"
    assert report["room"]["timezone"] == "Europe/Berlin"
    created = verdicts(report, "ticket.created")
    assert {d["verdict"] for d in created} == {"would_send"}
    assert {d["recipient"] for d in created} == {world.anna["email"], world.jonas["email"]}
    world.tick(T0)
    after = verdicts(explain(world, t, now=T0 + timedelta(minutes=1)), "ticket.created")
    assert {d["verdict"] for d in after} == {"already_sent"}
    assert {d["key"] for d in after} == {d["key"] for d in created}
    assert all(d["status"] == "sent" and d["sent_at"] and d["provider_message_id"] for d in after)


def test_suppressed_decisions_say_why(world):
    installed(world)
    self_assigned = world.ticket(T0, priority="urgent", assignee_id=world.anna["user_id"],
                                 assigned_by=world.anna["user_id"], assigned_at=T0)
    first = explain(world, self_assigned)
    assert [(d["verdict"], d["reason"]) for d in verdicts(first, "ticket.assigned")] == [
        ("suppressed", "self-assignment (assigned_by = assignee)")]
    world.tick(T0)
    report = explain(world, self_assigned, now=T0 + timedelta(minutes=5))
    reasons = {d["type"]: d["reason"] for d in report["decisions"] if d["verdict"] == "suppressed"}
    assert reasons["ticket.assigned"].startswith("assignee unchanged since the last notification")
    sla = [d["reason"] for d in verdicts(report, "ticket.sla_warning")]
    # urgent: first response due 08:30 (warned from 08:15), resolution 12:00 (from 11:45)
    assert sorted(sla) == [
        "first_response due 2026-03-02T08:30:00.000Z: not due until 2026-03-02T08:15:00.000Z",
        "resolution due 2026-03-02T12:00:00.000Z: not due until 2026-03-02T11:45:00.000Z"]
    assert reasons["ticket.response_reminder"].startswith("customer waiting 5 min, reminder 1 of")
    assert "not snoozed (status open)" in reasons["ticket.unsnoozed"]
    assert report["sla"]["policy"] and report["sla"]["first_response_due"]
    files = {(c["file"], c["function"]) for c in report["rules_calls"]}
    assert ("sla.lua", "policy") in files
    assert all(c["duration_us"] >= 0 and "args" in c for c in report["rules_calls"])
    warned = explain(world, self_assigned, now=T0 + timedelta(minutes=20))
    def first_response(report):
        return sorted((d["verdict"], d.get("reason", "")) for d in
                      verdicts(report, "ticket.sla_warning")
                      if "first_response" in d.get("key", "") + d.get("reason", ""))
    assert first_response(warned) == [("would_send", "")]
    world.tick(T0 + timedelta(minutes=20))
    again = first_response(explain(world, self_assigned, now=T0 + timedelta(minutes=21)))
    assert again == [("already_sent", ""), ("suppressed", "already warned for this deadline "
                                            "(first_response due 2026-03-02T08:30:00.000Z)")]


def test_snooze_verdicts(world):
    installed(world)
    due = snoozed(world, T0 - timedelta(minutes=1), assignee=world.anna)
    later = snoozed(world, T0 + timedelta(hours=2), assignee=world.anna)
    woken = verdicts(explain(world, due), "ticket.unsnoozed")
    assert [d["verdict"] for d in woken] == ["would_send"]
    assert woken[0]["recipient"] == world.anna["email"]
    waiting = verdicts(explain(world, later), "ticket.unsnoozed")
    assert [d["verdict"] for d in waiting] == ["suppressed"] and waiting[0]["reason"]


def test_room_not_found(world):
    installed(world)
    t = world.ticket(T0, room=ObjectId())
    report = explain(world, t)
    assert report["room"] is None
    assert {d["reason"] for d in verdicts(report, "ticket.created")} == {"room not found"}


def test_text_format_lists_the_decisions(world):
    installed(world)
    t = world.ticket(T0, assignee_id=world.anna["user_id"], assigned_by=world.anna["user_id"])
    cp = explain(world, t, fmt="text")
    assert f"conversation {t}" in cp.stdout
    assert "would_send" in cp.stdout and "self-assignment" in cp.stdout
    assert "sla.lua policy" in cp.stdout


def test_explain_writes_nothing(world):
    installed(world)
    t = world.ticket(T0, priority="urgent")
    snoozed(world, T0 - timedelta(minutes=1), assignee=world.anna)
    before = snapshot(world)
    explain(world, t)
    explain(world, t, fmt="text")
    assert snapshot(world) == before


def test_a_message_shows_each_event_and_what_became_of_it(sd, providers):
    ms = MsWorld(sd, providers)
    m = ms.message("twilio", status="sent")
    sid = m["provider_message_id"]
    ms.twilio(sid, "read")
    ms.twilio(sid, "delivered")  # late: after read
    assert ms.once().returncode == 0
    ms.twilio(sid, "failed", error_code=30003)  # arrived after the tick: still in the stream
    cp = sd.cli("explain", str(m["_id"]), "--format", "json", **ms.env())
    assert cp.returncode == 0, cp.stderr
    report = json.loads(cp.stdout)
    assert report["kind"] == "message" and report["message"]["status"] == "read"
    assert "body" not in report["message"] and "Hello Lena" not in cp.stdout
    by_id = {h.get("event_id"): h for h in report["status_history"]}
    assert by_id[f"twilio:{sid}:read"]["verdict"] == "applied"
    late = by_id[f"twilio:{sid}:delivered"]
    assert late["verdict"] == "ignored"
    assert late["reason"] == "delivered after read: the status does not move backwards"
    events = {(e["event_id"], e["verdict"]) for e in report["events"]}
    # acknowledged entries are trimmed from the stream; any still there is in the history
    assert all(v == "in_history" for e, v in events if e != f"twilio:{sid}:failed")
    assert (f"twilio:{sid}:failed", "waiting") in events
    text = sd.cli("explain", str(m["_id"]), **ms.env())
    assert "does not move backwards" in text.stdout and "waiting" in text.stdout


def test_unknown_and_malformed_ids(world):
    cp = explain(world, ObjectId(), check=False)
    assert cp.returncode == 1 and "no conversation or message has the id" in cp.stderr
    cp = explain(world, "not-an-id", check=False)
    assert cp.returncode == 2 and "not an id" in cp.stderr


def test_the_sla_walk_through_business_hours_holidays_and_closed_days(world):
    """Thursday 24 Dec 16:30 CET, 60 business minutes (high): 30 on Thursday, Friday a
    holiday, the weekend closed, 30 on Monday (the case of test_notification's SLA test)."""
    from test_notification import SPLIT_WEEK
    from datetime import datetime, timezone
    created = datetime(2026, 12, 24, 15, 30, tzinfo=timezone.utc)
    room = world.room(hours=SPLIT_WEEK, holidays=["2026-12-25"])
    installed(world, created - timedelta(minutes=5))
    t = world.ticket(created, room=room, priority="high")
    report = explain(world, t, now=created + timedelta(minutes=1))
    walk = report["sla"]["walk"]["first_response"]
    assert walk["business_minutes"] == 60
    assert walk["due"] == {"$date": "2026-12-28T08:30:00Z"}
    assert [(s["day"], s["minutes"], s["utc_offset_minutes"]) for s in walk["spans"]] == [
        ("2026-12-24 thu", 30, 60), ("2026-12-28 mon", 30, 60)]
    assert [(s["day"], s["why"]) for s in walk["skipped"]] == [
        ("2026-12-25 fri", "holiday"), ("2026-12-26 sat", "no business hours on sat"),
        ("2026-12-27 sun", "no business hours on sun")]
    text = explain(world, t, now=created + timedelta(minutes=1), fmt="text").stdout
    assert "first_response: 60 business min" in text and "skipped: holiday" in text


def test_a_failing_rule_is_shown_with_its_file_and_line(world, tmp_path):
    installed(world)
    t = world.ticket(T0, subject=f"boom {world.tag}")
    cp = world.sd.cli("explain", str(t), "--now", iso(T0), "--format", "json", timeout=90,
                      **world.env(QM_SUPPORT_RULES_DIR=failing_rules(tmp_path)))
    assert cp.returncode == 0, cp.stderr
    failed = [c for c in json.loads(cp.stdout)["rules_calls"] if "error" in c]
    assert [(c["file"], c["function"]) for c in failed] == [("sla.lua", "policy")]
    assert re.search(r"sla\.lua:\d+: no policy for this one", failed[0]["error"]), failed
