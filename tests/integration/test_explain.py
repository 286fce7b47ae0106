"""`supportd explain ID`: the jobs' own decisions for one conversation, each with its
verdict (would_send, already_sent, suppressed with the reason), its SLA and the rule
calls behind it; a message's status history. Read-only, like dry-run --live."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from bson import ObjectId

from fakes_fixtures import *  # noqa: F401,F403
from test_live_dry_run import snapshot, snoozed
from test_notification import T0, World, installed, iso


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


def test_a_message_shows_its_status_history(world):
    mid = ObjectId()
    history = [{"status": "sent", "at": T0, "event_id": "ev-1"},
               {"status": "delivered", "at": T0 + timedelta(seconds=5), "event_id": "ev-2"}]
    world.db["conversation-message"].insert_one({
        "_id": mid, "conversation_id": ObjectId(), "direction": "outbound", "channel": "sms",
        "body": "secret body", "status": "delivered", "provider_message_id": "SM123",
        "status_history": history})
    report = explain(world, mid)
    assert report["kind"] == "message" and report["message"]["status"] == "delivered"
    assert [h["event_id"] for h in report["status_history"]] == ["ev-1", "ev-2"]
    assert "body" not in report["message"]


def test_unknown_and_malformed_ids(world):
    cp = explain(world, ObjectId(), check=False)
    assert cp.returncode == 1 and "no conversation or message has the id" in cp.stderr
    cp = explain(world, "not-an-id", check=False)
    assert cp.returncode == 2 and "not an id" in cp.stderr
