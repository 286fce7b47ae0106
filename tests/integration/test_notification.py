"""The notification job end to end against FerretDB, Redis and the provider
fake (SendGrid for email, Twilio for SMS), Mailpit for SMTP.

Every tick runs with --now at an exact instant; the platform's writes are
simulated with updated_at set to the instant they happen.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

import pymongo
import pytest
from bson import ObjectId

from conftest import REPO, _ping, services_script, unaligned_heap, wait_until
from fakes_fixtures import *  # noqa: F401,F403

UTC = timezone.utc
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday
NOTIFY_STATE = "conversation-notify-state"


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


class World:
    def __init__(self, sd, providers):
        self.sd, self.p = sd, providers
        self.client = pymongo.MongoClient(sd.mongo_url, tz_aware=True)
        self.db = self.client[sd.db_name]
        self.tag = uuid.uuid4().hex[:8]
        self.anna = self.member("Anna", "agent")
        self.jonas = self.member("Jonas", "agent")
        self.petra = self.member("Petra", "manager")
        self.room_id = self.room()

    def member(self, name, role):
        return {"user_id": ObjectId(), "name": name, "role": role,
                "email": f"{name.lower()}-{self.tag}@acme.example"}

    def room(self, *, tz="Europe/Berlin", hours=None, holidays=None):
        rid = ObjectId()
        self.db["conversation-room"].insert_one({
            "_id": rid, "name": "Berlin desk", "timezone": tz, "business_hours": hours,
            "holidays": holidays, "members": [self.anna, self.jonas, self.petra],
            "email_from": "desk@acme.example", "sla_policy": "default"})
        return rid

    def ticket(self, at, *, room=None, **fields):
        doc = {"_id": ObjectId(), "room_id": room or self.room_id,
               "subject": f"ticket {uuid.uuid4().hex[:6]}", "channel": "email",
               "status": "open", "priority": "normal", "assignee_id": None,
               "contact": {"name": "Lena", "email": f"lena-{self.tag}@example.org",
                           "phone": "+4915112345678"},
               "created_at": at, "updated_at": at, "first_response_at": None,
               "resolved_at": None, "last_customer_message_at": at,
               "last_agent_message_at": None, "escalation_level": 0}
        doc.update(fields)
        self.db["conversation-conversation"].insert_one(doc)
        return doc["_id"]

    def change(self, oid, at, **fields):
        self.db["conversation-conversation"].update_one(
            {"_id": oid}, {"$set": {**fields, "updated_at": at}})

    def customer_writes(self, oid, at):
        self.db["conversation-message"].insert_one({
            "_id": ObjectId(), "conversation_id": oid, "room_id": self.room_id,
            "direction": "inbound", "channel": "email", "body": "hello", "created_at": at,
            "updated_at": at})
        self.change(oid, at, last_customer_message_at=at)

    def conv(self, oid):
        return self.db["conversation-conversation"].find_one({"_id": oid})

    def sla(self, oid):
        """supportd's whole SLA for the conversation, in its notify-state record."""
        return self.db[NOTIFY_STATE].find_one({"_id": oid})["sla"]

    def outbox(self, oid=None, type=None):
        q = {}
        if oid:
            q["conversation_id"] = oid
        if type:
            q["type"] = type
        return list(self.db["conversation-notification"].find(q))

    def env(self, **extra):
        return self.p.env(**extra)

    def tick(self, at, **env):
        cp = self.sd.cli("once", "notification", "--now", iso(at), timeout=90, **self.env(**env))
        self.p.outputs.append(cp.stdout + cp.stderr)
        assert cp.returncode == 0, cp.stderr
        return tick_counts(cp)

    def start(self, at, name, **env):
        return self.sd.start("once", "notification", "--now", iso(at), name=name,
                             **self.env(**env))

    def start_to_seam(self, tmp_path, seam, at, name, **env):
        """A `once notification` at `at`, waited for until it stands at the armed seam;
        returns it and the seams folder (<seam>.go there lets it go on)."""
        seams = tmp_path / "seams"
        seams.mkdir(exist_ok=True)
        (seams / f"{seam}.arm").touch()
        proc = self.start(at, name, QM_SUPPORT_TEST_SEAMS=str(seams), **env)
        wait_until(lambda: (seams / f"{seam}.reached").exists(), 30, what="seam")
        return proc, seams

    def mails(self):
        """[(to, type-ish subject)] accepted by the SendGrid fake."""
        out = []
        for m in self.p.fake.sent()["sendgrid"]:
            body = m["json"]
            for to in body["personalizations"][0]["to"]:
                out.append((to["email"], body["subject"]))
        return out

    def mails_to(self, member_or_email):
        email = member_or_email["email"] if isinstance(member_or_email, dict) else member_or_email
        return [s for to, s in self.mails() if to == email]


def tick_counts(cp):
    for line in cp.stderr.splitlines():
        if '"tick.end"' in line:
            return json.loads(line)["counts"]
    raise AssertionError(f"no tick.end in:\n{cp.stderr}")


@pytest.fixture
def world(sd, providers):
    w = World(sd, providers)
    yield w
    w.client.close()


def installed(world, at=T0 - timedelta(hours=1)):
    """The fresh install's first tick, so that later tickets are news."""
    counts = world.tick(at)
    assert counts["baseline"] is True
    return at


# ---- fresh install ----------------------------------------------------------------

def test_fresh_install_first_tick_records_the_present_and_mails_nobody(world):
    old = world.ticket(T0 - timedelta(days=2), assignee_id=world.jonas["user_id"],
                       last_customer_message_at=T0 - timedelta(minutes=5),
                       updated_at=T0 - timedelta(minutes=5))
    resolved = world.ticket(T0 - timedelta(days=3), status="resolved",
                            resolved_at=T0 - timedelta(minutes=1), updated_at=T0 - timedelta(minutes=1))
    counts = world.tick(T0)
    assert counts["baseline"] is True and counts["changed"] == 2
    assert world.outbox() == [] and world.mails() == []
    states = {s["_id"]: s for s in world.db[NOTIFY_STATE].find()}
    assert states[old]["status"] == "open" and states[old]["assignee"] == str(world.jonas["user_id"])
    assert states[resolved]["status"] == "resolved"
    # the next tick knows them: nothing new, nothing sent
    counts = world.tick(T0 + timedelta(minutes=1))
    assert counts["baseline"] is False and world.mails() == []
    # an old ticket's change after the install is news
    world.change(old, T0 + timedelta(minutes=2), assignee_id=world.anna["user_id"])
    world.tick(T0 + timedelta(minutes=3))
    assert [s for s in world.mails_to(world.anna) if s.startswith("Assigned to you")]
    assert world.mails_to(world.jonas) == []


# ---- events and recipients ------------------------------------------------------------

def test_created_goes_to_room_agents_not_managers(world):
    installed(world)
    t = world.ticket(T0, subject=f"Printer on fire {world.tag}")
    world.tick(T0 + timedelta(minutes=1))
    assert world.mails_to(world.anna) == [f"New ticket: Printer on fire {world.tag}"]
    assert world.mails_to(world.jonas) == [f"New ticket: Printer on fire {world.tag}"]
    assert world.mails_to(world.petra) == []
    e = world.outbox(t)
    assert {x["type"] for x in e} == {"ticket.created"}
    assert all(x["status"] == "sent" and x["from"] == "desk@acme.example" for x in e)


def test_assigned_to_new_assignee_but_not_when_self_assigned(world):
    installed(world)
    a = world.ticket(T0 - timedelta(hours=2))
    b = world.ticket(T0 - timedelta(hours=2))
    world.tick(T0 - timedelta(minutes=30))  # both known now
    base = len(world.mails())
    world.change(a, T0, assignee_id=world.jonas["user_id"], assigned_by=world.anna["user_id"])
    world.change(b, T0, assignee_id=world.anna["user_id"], assigned_by=world.anna["user_id"])
    world.tick(T0 + timedelta(minutes=1))
    new = world.mails()[base:]
    assert [to for to, s in new if s.startswith("Assigned to you")] == [world.jonas["email"]]
    assert world.outbox(b, "ticket.assigned") == []


def test_customer_messages_coalesce_into_one_mail_to_the_assignee(world):
    installed(world)
    a = world.ticket(T0 - timedelta(hours=1), assignee_id=world.jonas["user_id"])
    u = world.ticket(T0 - timedelta(hours=1))
    world.tick(T0 - timedelta(minutes=30))
    for k in range(3):
        world.customer_writes(a, T0 + timedelta(seconds=10 * k))
    world.customer_writes(u, T0)
    world.tick(T0 + timedelta(minutes=1))
    to_jonas = [e for e in world.outbox(a, "ticket.customer_message")]
    assert len(to_jonas) == 1 and to_jonas[0]["recipient"]["email"] == world.jonas["email"]
    assert "wrote 3 new message(s)" in to_jonas[0]["text"]
    unassigned = {e["recipient"]["email"] for e in world.outbox(u, "ticket.customer_message")}
    assert unassigned == {world.anna["email"], world.jonas["email"]}


def test_status_changes_reach_the_customer_by_email(world):
    installed(world)
    t = world.ticket(T0 - timedelta(hours=1), assignee_id=world.anna["user_id"])
    world.tick(T0 - timedelta(minutes=30))
    customer = world.conv(t)["contact"]["email"]
    world.change(t, T0, status="pending")
    world.tick(T0 + timedelta(minutes=1))
    world.change(t, T0 + timedelta(minutes=2), status="resolved",
                 resolved_at=T0 + timedelta(minutes=2))
    world.tick(T0 + timedelta(minutes=3))
    world.change(t, T0 + timedelta(minutes=4), status="closed")
    world.tick(T0 + timedelta(minutes=5))
    subjects = world.mails_to(customer)
    assert len(subjects) == 3, subjects
    assert "is now pending" in subjects[0]
    assert subjects[1].startswith("Resolved: ") and subjects[2].startswith("Closed: ")
    # snoozing is internal: the customer hears nothing of it
    s = world.ticket(T0, status="open")
    world.tick(T0 + timedelta(minutes=6))
    world.change(s, T0 + timedelta(minutes=7), status="snoozed")
    world.tick(T0 + timedelta(minutes=8))
    world.change(s, T0 + timedelta(minutes=9), status="open")
    world.tick(T0 + timedelta(minutes=10))
    assert world.outbox(s, "ticket.status_changed") == []


def test_sms_customer_is_told_through_twilio(world):
    installed(world)
    world.db["conversation-channel"].insert_one({
        "_id": ObjectId(), "room_id": world.room_id, "type": "sms", "provider": "twilio",
        "phone_number": "+4930123456", "webhook_url": "https://hooks.example.com/twilio",
        "active": True})
    t = world.ticket(T0 - timedelta(hours=1), channel="sms",
                     contact={"name": "Lena", "phone": "+4915199999999"})
    world.tick(T0 - timedelta(minutes=30))
    world.change(t, T0, status="resolved", resolved_at=T0)
    world.tick(T0 + timedelta(minutes=1))
    sms = world.p.fake.sent()["twilio"]
    assert len(sms) == 1, sms
    assert sms[0]["to"] == "+4915199999999" and sms[0]["from"] == "+4930123456"
    assert "Berlin desk" in sms[0]["body"] and len(sms[0]["body"]) <= 3 * 153
    assert world.mails_to("lena-" + world.tag + "@example.org") == []


def test_smtp_delivery_reaches_mailpit(world, sd):
    installed(world)
    world.ticket(T0, subject=f"Mailpit {world.tag}")
    world.tick(T0 + timedelta(minutes=1), QM_SUPPORT_EMAIL_PROVIDER="smtp",
               SMTP_URL=sd.services["SMTP_URL"])
    api = sd.services["MAILPIT_API_URL"]
    q = urllib.request.quote(f'to:"{world.anna["email"]}"')
    with urllib.request.urlopen(f"{api}/api/v1/search?query={q}", timeout=10) as r:
        subjects = [m["Subject"] for m in json.load(r)["messages"]]
    assert subjects == [f"New ticket: Mailpit {world.tag}"]


# ---- exactly once -------------------------------------------------------------------------

def test_a_change_seen_in_two_ticks_sends_once(world):
    installed(world)
    t = world.ticket(T0 - timedelta(hours=1))
    world.tick(T0 - timedelta(minutes=30))
    world.change(t, T0, assignee_id=world.jonas["user_id"])
    world.tick(T0 + timedelta(seconds=20))
    # inside the skew margin the next tick reads it again; and with the state
    # record gone it decides the same mail again: the key makes it a no-op
    counts = world.tick(T0 + timedelta(seconds=40))
    assert counts["unchanged"] >= 1 and counts["notifications"] == 0  # read, nothing new
    world.db[NOTIFY_STATE].delete_one({"_id": t})
    world.db[NOTIFY_STATE].insert_one({"_id": t, "status": "open", "assignee": "",
                                       "customer_at": T0 - timedelta(hours=1),
                                       "seen_updated_at": T0 - timedelta(hours=1)})
    counts = world.tick(T0 + timedelta(minutes=1))
    assert counts["duplicate_notifications"] >= 1
    assert world.mails_to(world.jonas).count(f"Assigned to you: {world.conv(t)['subject']}") == 1


def test_two_instances_send_once(world, tmp_path):
    installed(world)
    ids = [world.ticket(T0) for _ in range(20)]
    a, seams = world.start_to_seam(tmp_path, "notification_after_enqueue",
                                   T0 + timedelta(minutes=1), "paused", QM_SUPPORT_LEASE_TTL="1")
    a.proc.send_signal(signal.SIGSTOP)  # the renewer stops too: the lease expires
    try:
        wait_until(lambda: world.sd.lease("notification") is None, 10, what="the lease to expire")
        world.tick(T0 + timedelta(minutes=1))
    finally:
        a.proc.send_signal(signal.SIGCONT)
    (seams / "notification_after_enqueue.go").touch()
    assert a.wait_exit(60) == 0
    world.tick(T0 + timedelta(minutes=2))
    assert len(world.outbox()) == 40
    per_addr = {}
    for to, s in world.mails():
        per_addr[(to, s)] = per_addr.get((to, s), 0) + 1
    assert len(per_addr) == 40 and set(per_addr.values()) == {1}, per_addr
    assert len(ids) == 20


def test_kill_between_enqueue_and_delivery_delivers_once_next_tick(world, tmp_path):
    installed(world)
    t = world.ticket(T0)
    d, _ = world.start_to_seam(tmp_path, "notification_after_enqueue",
                               T0 + timedelta(minutes=1), "doomed", QM_SUPPORT_LEASE_TTL="1")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    assert len(world.outbox(t)) == 2 and world.mails() == []
    assert world.db[NOTIFY_STATE].find_one({"_id": t}) is None
    time.sleep(1.2)
    world.tick(T0 + timedelta(minutes=2))
    assert sorted(to for to, _ in world.mails()) == sorted([world.anna["email"], world.jonas["email"]])
    world.tick(T0 + timedelta(minutes=3))
    assert len(world.mails()) == 2


# ---- SLA ------------------------------------------------------------------------------------

SPLIT_WEEK = {d: [{"from": "09:00", "to": "12:00"}, {"from": "13:00", "to": "17:00"}]
              for d in ("mon", "tue", "wed", "thu", "fri")}


@pytest.mark.parametrize("case,created,expected", [
    # Friday 16:30 CET + 60 business minutes: 30 on Friday, 30 on Monday
    ("weekend", datetime(2026, 3, 6, 15, 30, tzinfo=UTC), datetime(2026, 3, 9, 8, 30, tzinfo=UTC)),
    # Thursday 24 Dec 16:30 CET: Friday 25th is a holiday, then the weekend
    ("holiday", datetime(2026, 12, 24, 15, 30, tzinfo=UTC), datetime(2026, 12, 28, 8, 30, tzinfo=UTC)),
    # Monday 11:30 CET: 30 minutes before lunch, 30 after it
    ("two intervals", datetime(2026, 3, 2, 10, 30, tzinfo=UTC), datetime(2026, 3, 2, 12, 30, tzinfo=UTC)),
    # Friday 27 March 16:30 CET; clocks go forward on Sunday: Monday 09:30 CEST
    ("daylight saving", datetime(2026, 3, 27, 15, 30, tzinfo=UTC), datetime(2026, 3, 30, 7, 30, tzinfo=UTC)),
])
def test_business_hours_in_the_rooms_zone(world, case, created, expected):
    room = world.room(hours=SPLIT_WEEK, holidays=["2026-12-25"])
    installed(world, created - timedelta(minutes=5))
    t = world.ticket(created, room=room, priority="high")
    world.tick(created + timedelta(minutes=1))
    sla = world.conv(t)["sla"]
    assert sla["first_response_due"] == expected, (case, sla)
    # the conversation carries SPEC §2's view; the bookkeeping is supportd's own
    assert sorted(sla) == ["first_response_due", "policy", "resolution_due"], sla
    assert sla["policy"] == "default" and world.sla(t)["next_due"] <= expected


def test_unknown_zone_is_logged_with_the_room_and_treated_as_utc(world, sd):
    room = world.room(tz="Mars/Olympus_Mons", hours=SPLIT_WEEK)
    installed(world)
    t = world.ticket(datetime(2026, 3, 2, 10, 30, tzinfo=UTC), room=room, priority="high")
    cp = sd.cli("once", "notification", "--now", iso(T0 + timedelta(hours=3)), **world.env())
    assert cp.returncode == 0, cp.stderr
    assert "notification.unknown_timezone" in cp.stderr and str(room) in cp.stderr
    assert world.conv(t)["sla"]["first_response_due"] == datetime(2026, 3, 2, 11, 30, tzinfo=UTC)


@pytest.mark.parametrize("pause", ["pending", "snoozed"])
def test_clock_pauses_while_pending_or_snoozed(world, pause):
    installed(world)
    t = world.ticket(T0, assignee_id=world.anna["user_id"])  # normal: first response in 240
    world.tick(T0 + timedelta(minutes=1))
    assert world.conv(t)["sla"]["first_response_due"] == T0 + timedelta(minutes=240)
    world.change(t, T0 + timedelta(minutes=60), status=pause)
    world.tick(T0 + timedelta(minutes=61))
    assert "next_due" not in world.sla(t)
    # the old warning time passes while paused: no warning
    world.tick(T0 + timedelta(minutes=230))
    assert world.outbox(t, "ticket.sla_warning") == []
    world.change(t, T0 + timedelta(minutes=300), status="open")
    world.tick(T0 + timedelta(minutes=301))
    assert world.conv(t)["sla"]["first_response_due"] == T0 + timedelta(minutes=240 + 240)
    sla = world.sla(t)
    assert sla["paused_minutes"] == 240 and "paused_at" not in sla


def answered(world, t, at):
    world.change(t, at, first_response_at=at, last_agent_message_at=at)


def test_an_answer_keeps_the_first_response_deadline_it_met_on_the_conversation(world):
    installed(world)
    t = world.ticket(T0, assignee_id=world.anna["user_id"])  # normal: first response in 240
    world.tick(T0 + timedelta(minutes=1))
    due = T0 + timedelta(minutes=240)
    assert world.conv(t)["sla"]["first_response_due"] == due
    answered(world, t, T0 + timedelta(minutes=30))
    world.tick(T0 + timedelta(minutes=31))
    # no longer tracked (nothing warns about it), still shown
    assert "first_response_due" not in world.sla(t)
    assert world.conv(t)["sla"]["first_response_due"] == due
    assert world.outbox(t, "ticket.sla_warning") == []
    world.tick(T0 + timedelta(minutes=230))
    assert world.outbox(t, "ticket.sla_warning") == []


def test_priority_change_moves_the_deadline_and_warns_again(world):
    installed(world)
    t = world.ticket(T0, priority="high", assignee_id=world.anna["user_id"],
                     first_response_at=T0, last_agent_message_at=T0)  # resolution in 480
    world.tick(T0 + timedelta(minutes=1))
    world.tick(T0 + timedelta(minutes=470))
    assert len(world.outbox(t, "ticket.sla_warning")) == 1
    world.change(t, T0 + timedelta(minutes=471), priority="normal")  # resolution in 1440
    world.tick(T0 + timedelta(minutes=472))
    assert world.conv(t)["sla"]["resolution_due"] == T0 + timedelta(minutes=1440)
    assert len(world.outbox(t, "ticket.sla_warning")) == 1
    world.tick(T0 + timedelta(minutes=1430))
    warnings = world.outbox(t, "ticket.sla_warning")
    assert len(warnings) == 2 and {w["recipient"]["email"] for w in warnings} == {world.anna["email"]}
    assert sum(s.startswith("SLA warning") for s in world.mails_to(world.anna)) == 2


def test_warning_then_breach_then_escalation_one_mail_each(world):
    installed(world)
    t = world.ticket(T0, priority="urgent", assignee_id=world.anna["user_id"],
                     first_response_at=T0, last_agent_message_at=T0)  # resolution in 240
    world.tick(T0 + timedelta(minutes=1))
    for m in (226, 227):
        world.tick(T0 + timedelta(minutes=m))
    assert [s for s in world.mails_to(world.anna) if s.startswith("SLA warning")]
    for m in (241, 242):
        world.tick(T0 + timedelta(minutes=m))
    to_petra = world.mails_to(world.petra)
    assert sorted(to_petra) == sorted([f"SLA breached: {world.conv(t)['subject']}",
                                       f"Escalated to level 1: {world.conv(t)['subject']}"])
    assert world.conv(t)["escalation_level"] == 1
    # the platform goes on: the checkpoint (the newest updated_at read) moves past t
    world.ticket(T0 + timedelta(minutes=290))
    world.tick(T0 + timedelta(minutes=291))
    counts = world.tick(T0 + timedelta(minutes=301))  # 60 minutes overdue: level 2
    assert counts["due"] == 1  # found through sla.next_due
    world.tick(T0 + timedelta(minutes=302))
    assert world.conv(t)["escalation_level"] == 2
    assert len(world.mails_to(world.petra)) == 3
    assert sum(s.startswith("SLA warning") for s in world.mails_to(world.anna)) == 1
    # a later change of the ticket recomputes, but never steps back or repeats
    world.change(t, T0 + timedelta(minutes=303), subject=world.conv(t)["subject"])
    world.tick(T0 + timedelta(minutes=304))
    assert len(world.mails_to(world.petra)) == 3 and world.conv(t)["escalation_level"] == 2


def legacy_ticket_past_its_warning(world):
    """An urgent ticket warned by an earlier build, which kept the whole SLA on the
    conversation (next_due: its deadline, T0+240), and the checkpoint past it."""
    t = world.ticket(T0, priority="urgent", assignee_id=world.anna["user_id"],
                     first_response_at=T0, last_agent_message_at=T0)  # resolution in 240
    world.tick(T0 + timedelta(minutes=1))
    world.tick(T0 + timedelta(minutes=226))
    world.ticket(T0 + timedelta(minutes=230))  # the checkpoint moves past t
    world.tick(T0 + timedelta(minutes=231))
    sla = world.sla(t)
    assert sla["warned"] and sla["next_due"] == T0 + timedelta(minutes=240)
    world.db["conversation-conversation"].update_one({"_id": t}, {"$set": {"sla": sla}})
    world.db[NOTIFY_STATE].update_one({"_id": t}, {"$unset": {"sla": "", "sla_pending": ""},
                                                   "$set": {"next_due": sla["next_due"]}})
    return t


def test_an_earlier_builds_sla_on_the_conversation_is_carried_over(world):
    """Builds before this one kept the whole SLA (next_due, warned, breached) on the
    conversation: what they warned is not warned again, their due deadline is found,
    and the conversation is left with SPEC §2's view."""
    installed(world)
    t = legacy_ticket_past_its_warning(world)
    warned = world.conv(t)["sla"]["warned"]
    counts = world.tick(T0 + timedelta(minutes=241))
    assert counts["due"] == 1, counts  # through the conversation's own next_due
    assert sum(s.startswith("SLA warning") for s in world.mails_to(world.anna)) == 1
    subject = world.conv(t)["subject"]
    assert sorted(world.mails_to(world.petra)) == [f"Escalated to level 1: {subject}",
                                                   f"SLA breached: {subject}"]
    assert sorted(world.conv(t)["sla"]) == ["policy", "resolution_due"]
    assert world.sla(t)["warned"] == warned and world.sla(t)["breached"]
    assert world.tick(T0 + timedelta(minutes=301))["due"] == 1  # through the record
    assert world.conv(t)["escalation_level"] == 2


def test_kill_while_an_earlier_builds_sla_is_carried_over_loses_no_deadline(world, tmp_path):
    """The conversation's whole SLA is replaced by the view only once its record holds
    it: killed in between, the next tick still finds the deadline and the steps after."""
    installed(world)
    t = legacy_ticket_past_its_warning(world)
    d, _ = world.start_to_seam(tmp_path, "notification_before_records",
                               T0 + timedelta(minutes=241), "doomed", QM_SUPPORT_LEASE_TTL="1")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    time.sleep(1.2)
    world.tick(T0 + timedelta(minutes=242))
    assert sorted(world.conv(t)["sla"]) == ["policy", "resolution_due"]
    assert world.sla(t)["breached"] and world.sla(t)["warned"]
    assert world.tick(T0 + timedelta(minutes=301))["due"] == 1  # the next step, through the record
    world.tick(T0 + timedelta(minutes=302))
    subject = world.conv(t)["subject"]
    assert world.conv(t)["escalation_level"] == 2
    assert sorted(world.mails_to(world.petra)) == [f"Escalated to level 1: {subject}",
                                                   f"Escalated to level 2: {subject}",
                                                   f"SLA breached: {subject}"]
    assert sum(s.startswith("SLA warning") for s in world.mails_to(world.anna)) == 1


def test_a_deadline_on_the_minute_is_found_by_that_minutes_tick(world):
    """Ticks run on whole minutes, and so do deadlines counted from business hours."""
    installed(world)
    t = world.ticket(T0, priority="urgent", assignee_id=world.anna["user_id"],
                     first_response_at=T0, last_agent_message_at=T0)  # warning at T0+225
    world.tick(T0 + timedelta(minutes=1))
    world.ticket(T0 + timedelta(minutes=200))  # the checkpoint moves past t
    world.tick(T0 + timedelta(minutes=201))
    assert world.sla(t)["next_due"] == T0 + timedelta(minutes=225)
    counts = world.tick(T0 + timedelta(minutes=225))
    assert counts["due"] == 1, counts
    assert len(world.outbox(t, "ticket.sla_warning")) == 1


def test_a_deleted_conversations_deadline_is_dropped_once(world, sd):
    installed(world)
    t = world.ticket(T0, priority="urgent", assignee_id=world.anna["user_id"],
                     first_response_at=T0, last_agent_message_at=T0)
    world.tick(T0 + timedelta(minutes=1))
    world.db["conversation-conversation"].delete_one({"_id": t})
    cp = sd.cli("once", "notification", "--now", iso(T0 + timedelta(minutes=230)), **world.env())
    assert cp.returncode == 0, cp.stderr
    assert "notification.conversation_gone" in cp.stderr and str(t) in cp.stderr
    assert world.db[NOTIFY_STATE].find_one({"_id": t})["sla_pending"] is False
    cp = sd.cli("once", "notification", "--now", iso(T0 + timedelta(minutes=231)), **world.env())
    assert cp.returncode == 0 and "notification.conversation_gone" not in cp.stderr, cp.stderr


def test_a_bad_document_with_a_deadline_is_not_read_again_until_it_changes(world, sd):
    installed(world)
    t = world.ticket(T0, priority="urgent", assignee_id=world.anna["user_id"],
                     first_response_at=T0, last_agent_message_at=T0)
    world.tick(T0 + timedelta(minutes=1))
    world.ticket(T0 + timedelta(minutes=200))  # the checkpoint moves past t
    world.tick(T0 + timedelta(minutes=201))
    world.db["conversation-room"].delete_one({"_id": world.room_id})  # its room is gone
    cp = sd.cli("once", "notification", "--now", iso(T0 + timedelta(minutes=230)), **world.env())
    assert cp.returncode == 0 and "notification.bad_document" in cp.stderr, cp.stderr
    assert world.sla(t)["resolution_due"] and "next_due" not in world.sla(t)
    cp = sd.cli("once", "notification", "--now", iso(T0 + timedelta(minutes=231)), **world.env())
    assert cp.returncode == 0 and "notification.bad_document" not in cp.stderr, cp.stderr


def test_reminders_are_bounded_and_stop_when_an_agent_answers(world):
    installed(world)
    a = world.ticket(T0, assignee_id=world.anna["user_id"], first_response_at=T0 - timedelta(hours=1))
    b = world.ticket(T0, assignee_id=world.jonas["user_id"], first_response_at=T0 - timedelta(hours=1))
    world.tick(T0 + timedelta(minutes=1))
    world.tick(T0 + timedelta(minutes=61))   # after 60 minutes: first reminder
    world.tick(T0 + timedelta(minutes=62))
    assert len(world.outbox(a, "ticket.response_reminder")) == 1
    assert len(world.outbox(b, "ticket.response_reminder")) == 1
    answered(world, b, T0 + timedelta(minutes=100))
    for m in (181, 301, 421, 541, 661):      # every 120 minutes, 3 at most
        world.tick(T0 + timedelta(minutes=m))
    assert len(world.outbox(a, "ticket.response_reminder")) == 3
    assert len(world.outbox(b, "ticket.response_reminder")) == 1
    assert sum(s.startswith("Reminder:") for s in world.mails_to(world.anna)) == 3


def test_nothing_for_a_resolved_tickets_old_deadline(world):
    installed(world)
    t = world.ticket(T0, priority="urgent", assignee_id=world.anna["user_id"])
    world.tick(T0 + timedelta(minutes=1))
    assert world.sla(t)["next_due"] is not None
    world.change(t, T0 + timedelta(minutes=10), status="resolved",
                 resolved_at=T0 + timedelta(minutes=10))
    world.tick(T0 + timedelta(minutes=11))
    for m in (26, 31, 100, 241, 400):
        world.tick(T0 + timedelta(minutes=m))
    assert "next_due" not in world.sla(t)
    assert world.db[NOTIFY_STATE].find_one({"_id": t})["sla_pending"] is False
    types = {e["type"] for e in world.outbox(t)}
    assert types == {"ticket.created", "ticket.assigned", "ticket.resolved"}, types


# ---- dry-run ----------------------------------------------------------------------------------

def test_dry_run_plans_every_mail_with_key_recipient_rendering_and_sla(sd):
    from conftest import REPO
    fx = str(REPO / "tests" / "fixtures" / "notification")
    cp = sd.cli("dry-run", "--fixtures", fx, "--job", "notification")
    assert cp.returncode == 0, cp.stderr
    again = sd.cli("dry-run", "--fixtures", fx, "--job", "notification")
    assert again.stdout == cp.stdout  # byte-stable
    plan = json.loads(cp.stdout)["jobs"]["notification"]["actions"]
    by = {a["target"][-3:]: a for a in plan}
    keys = {a["target"][-3:]: [(n["key"], n["recipient"]["email"]) for n in a["notifications"]]
            for a in plan}
    assert keys["101"] == [("ticket.created:65e2f0000000000000000101:new:u-anna", "anna@acme.example")]
    assert keys["102"][0][0].startswith("ticket.assigned:65e2f0000000000000000102:u-anna:")
    assert keys["103"] == [("ticket.customer_message:65e2f0000000000000000103:1772452740000:u-anna",
                            "anna@acme.example")]
    assert "wrote 2 new message(s)" in by["103"]["notifications"][0]["text"]
    assert [k for k, _ in keys["104"]] == [
        "ticket.sla_breached:65e2f0000000000000000104:resolution:1772452800000:u-petra",
        "ticket.escalated:65e2f0000000000000000104:1:1772452800000:u-petra"]
    assert "&amp;" in by["104"]["notifications"][0]["html"]  # rendered, escaped
    sla = by["104"]["sla"]
    assert sla["resolution_due"] == {"$date": "2026-03-02T12:00:00Z"}
    assert sla["breached"] == ["resolution:1772452800000"] and by["104"]["escalation_level"] == 1


def test_a_batch_with_many_mails_enqueues_and_delivers_each_once(world):
    """More outbox entries in one batch than the first allocation holds (a
    regression: entries moved in memory lost their keys; seen with the
    release build, where no sanitizer quarantine keeps the freed copy intact)."""
    installed(world)
    ids = [world.ticket(T0) for _ in range(60)]
    counts = world.tick(T0 + timedelta(minutes=1))
    assert counts["notifications"] == 120 and counts["outbox_sent"] == 120, counts
    assert {e["key"] for e in world.outbox()} == {
        f"ticket.created:{t}:new:{m['user_id']}" for t in ids for m in (world.anna, world.jonas)}
    assert len(world.mails()) == 120


def test_outbox_entries_are_aligned_for_libbson(world):
    """A batch's outbox entries are handed to libbson as bson_t, which libbson declares
    128-byte aligned: never from a malloc'ed array (16-byte aligned under glibc's and
    musl's malloc; shims/bson_align_check.c aborts the process)."""
    installed(world)
    for _ in range(5):
        world.ticket(T0)
    counts = world.tick(T0 + timedelta(minutes=1), **unaligned_heap())
    assert counts["notifications"] == 10, counts


@pytest.mark.parametrize("flavor", ["ferretdb", "mongodb"])
def test_both_query_shapes_read_the_same_rooms_states_and_messages(world, flavor):
    """FerretDB's shape (an equality find per conversation, room and message
    list, on several connections) and MongoDB's ({$in} per batch) find the
    same records: each of 40 tickets in 4 rooms gets its one coalesced mail
    with its own message count, and nothing is mailed twice."""
    installed(world)
    rooms = [world.room() for _ in range(4)]
    ids = [world.ticket(T0 - timedelta(hours=1), room=rooms[i % 4],
                        assignee_id=world.jonas["user_id"]) for i in range(40)]
    world.tick(T0 - timedelta(minutes=30), QM_SUPPORT_TEST_FLAVOR=flavor)
    for i, t in enumerate(ids):
        for k in range(1 + i % 3):
            world.customer_writes(t, T0 + timedelta(seconds=10 * k))
    counts = world.tick(T0 + timedelta(minutes=1), QM_SUPPORT_TEST_FLAVOR=flavor)
    assert counts["changed"] == 40 and counts["notifications"] == 40, counts
    for i, t in enumerate(ids):
        mails = world.outbox(t, "ticket.customer_message")
        assert len(mails) == 1 and mails[0]["recipient"]["email"] == world.jonas["email"]
        assert f"wrote {1 + i % 3} new message(s)" in mails[0]["text"]
    # FerretDB: a find per state record and per message list; MongoDB: a few $in
    if flavor == "ferretdb":
        assert counts["db_commands"] >= 80, counts
    else:
        assert counts["db_commands"] < 40, counts
    again = world.tick(T0 + timedelta(minutes=2), QM_SUPPORT_TEST_FLAVOR=flavor)
    assert again["notifications"] == 0


def test_rooms_read_in_an_earlier_batch_stay_known(world):
    """A batch needing a room read by an earlier batch and a new one finds
    both (batches are 500 conversations; rooms are read once per tick)."""
    installed(world)
    later_room = world.room()
    docs = [{"_id": ObjectId(), "room_id": world.room_id, "subject": f"t{i}", "channel": "email",
             "status": "open", "priority": "normal", "assignee_id": world.anna["user_id"],
             "contact": {"name": "Lena", "email": f"lena-{world.tag}@example.org"},
             "created_at": T0, "updated_at": T0, "last_customer_message_at": T0,
             "escalation_level": 0} for i in range(502)]
    docs[-1]["room_id"] = later_room
    world.db["conversation-conversation"].insert_many(docs)
    counts = world.tick(T0 + timedelta(minutes=1))
    assert counts["batches"] >= 2 and counts["changed"] == 502, counts
    assert counts["bad_documents"] == 0, counts
    # ticket.created to both agents, ticket.assigned to Anna
    assert counts["notifications"] == 3 * 502, counts


def test_tick_end_counts_the_rules_cpu(world):
    """tick.end says how many rule calls the tick made and the CPU they took,
    templates.lua apart from the other files; a tick that calls no rule says 0."""
    installed(world)
    world.ticket(T0)
    counts = world.tick(T0 + timedelta(minutes=1))
    assert counts["notifications"] > 0, counts
    assert counts["rule_calls"] >= counts["notifications"], counts
    assert counts["render_cpu_us"] > 0 and counts["rules_cpu_us"] > 0, counts
    cp = world.p.run()  # `once outbox`: delivery only, no rules
    assert cp.returncode == 0, cp.stderr
    outbox = tick_counts(cp)
    assert outbox["rule_calls"] == 0 and outbox["rules_cpu_us"] == 0 and outbox["render_cpu_us"] == 0


# ---- the checkpoint: lost, or ahead of the platform -------------------------------------

CHECKPOINT = {"_id": "checkpoint"}


def flush_redis(world):
    """What a Redis restarted without persistence, or flushed, leaves of this test's keys."""
    keys = list(world.sd.redis.scan_iter(match=world.sd.prefix + "*"))
    if keys:
        world.sd.redis.delete(*keys)


def once_each(world):
    """The outbox key of every mail the SendGrid fake accepted so far, asserting that
    none was sent twice."""
    seen = {}
    for m in world.p.fake.sent()["sendgrid"]:
        key = m["json"]["custom_args"]["supportd_key"]
        seen[key] = seen.get(key, 0) + 1
    assert set(seen.values()) <= {1}, {k: v for k, v in seen.items() if v > 1}
    return set(seen)


def urgent_answered_ticket(world, at):
    """Urgent, answered at once: one deadline left, resolution at `at` + 240 minutes."""
    return world.ticket(at, priority="urgent", assignee_id=world.anna["user_id"],
                        first_response_at=at, last_agent_message_at=at)


@pytest.mark.parametrize("loss", ["flush", "restart"])
def test_a_lost_redis_is_not_a_fresh_install(world, loss, redis_restart_guard):
    """Redis flushed, or restarted without persistence (scripts/services restart-redis):
    the next tick is not a first install. A breach due right then reaches the managers;
    nothing already sent is sent again."""
    installed(world)
    t = urgent_answered_ticket(world, T0)
    world.tick(T0 + timedelta(minutes=1))
    world.tick(T0 + timedelta(minutes=226))  # the warning
    before = once_each(world)
    assert any(s.startswith("SLA warning") for s in world.mails_to(world.anna))
    if loss == "flush":
        flush_redis(world)
    else:
        services_script("restart-redis")
        wait_until(lambda: _ping(world.sd.redis), 30, 0.2, "Redis to come back")
        assert world.sd.redis.dbsize() == 0
    counts = world.tick(T0 + timedelta(minutes=241))
    assert counts["baseline"] is False, counts
    subject = world.conv(t)["subject"]
    assert f"SLA breached: {subject}" in world.mails_to(world.petra)
    assert f"Escalated to level 1: {subject}" in world.mails_to(world.petra)
    after = once_each(world)
    assert before < after
    assert world.conv(t)["escalation_level"] == 1


def test_a_database_served_before_without_any_checkpoint_mails_what_is_due(world):
    """No checkpoint anywhere (Redis lost by a version that kept it only there), but
    supportd's records show the database was served: every conversation is looked at,
    what is due is mailed, what was mailed is not mailed again, and a ticket without a
    record is news."""
    installed(world)
    t = urgent_answered_ticket(world, T0)
    world.tick(T0 + timedelta(minutes=1))
    world.tick(T0 + timedelta(minutes=226))
    before = once_each(world)
    flush_redis(world)
    world.db[NOTIFY_STATE].delete_one(CHECKPOINT)
    new = world.ticket(T0 + timedelta(minutes=230), subject=f"late news {world.tag}")
    counts = world.tick(T0 + timedelta(minutes=241))
    assert counts["baseline"] is False, counts
    assert f"SLA breached: {world.conv(t)['subject']}" in world.mails_to(world.petra)
    assert f"New ticket: late news {world.tag}" in world.mails_to(world.jonas)
    assert before < once_each(world)
    assert new


def test_an_earlier_builds_checkpoint_in_redis_is_taken_over(world):
    """An earlier build kept the checkpoint only in Redis (its tick's now): taken over once
    (the change query starts from it, not a full sweep), then kept in MongoDB only."""
    installed(world)
    old = world.ticket(T0 - timedelta(hours=2))
    t = world.ticket(T0 - timedelta(hours=2))
    world.tick(T0)
    world.db[NOTIFY_STATE].delete_one(CHECKPOINT)
    key = world.sd.key("notification:changed_since")
    world.sd.redis.set(key, str(ms(T0)))
    world.change(t, T0 + timedelta(minutes=2), assignee_id=world.jonas["user_id"])
    counts = world.tick(T0 + timedelta(minutes=3))
    assert counts["baseline"] is False and counts["full_sweep"] is False, counts
    assert counts["changed"] == 1, counts  # t; not `old`
    assert world.mails_to(world.jonas).count(f"Assigned to you: {world.conv(t)['subject']}") == 1
    assert world.sd.redis.get(key) is None
    assert world.db[NOTIFY_STATE].find_one(CHECKPOINT)["changed_since"] == T0 + timedelta(minutes=2)
    assert old


def test_an_interrupted_first_install_still_mails_nobody(world, tmp_path):
    """The first install's first tick stopped half-way (SIGTERM between batches) leaves
    records for some conversations; the next tick finishes the first install: still
    nobody is mailed about what was there before."""
    docs = [{"_id": ObjectId(), "room_id": world.room_id, "subject": f"old {i}", "channel": "email",
             "status": "open", "priority": "normal", "assignee_id": world.anna["user_id"],
             "contact": {"name": "Lena", "email": f"lena-{world.tag}@example.org"},
             "created_at": T0 - timedelta(days=1), "updated_at": T0 - timedelta(days=1),
             "last_customer_message_at": T0 - timedelta(days=1), "escalation_level": 0}
            for i in range(502)]
    world.db["conversation-conversation"].insert_many(docs)
    d, seams = world.start_to_seam(tmp_path, "notification_after_enqueue", T0, "interrupted")
    d.proc.send_signal(signal.SIGTERM)
    (seams / "notification_after_enqueue.arm").unlink()
    (seams / "notification_after_enqueue.go").touch()
    d.wait_exit(60)
    recorded = world.db[NOTIFY_STATE].count_documents({"status": {"$exists": True}})
    assert 0 < recorded < 502, recorded
    counts = world.tick(T0 + timedelta(minutes=1))
    assert counts["baseline"] is True, counts
    assert world.outbox() == [] and world.mails() == []
    assert world.db[NOTIFY_STATE].count_documents({"status": {"$exists": True}}) == 502
    # and the install is finished: news is news again
    world.ticket(T0 + timedelta(minutes=2), subject=f"news {world.tag}")
    counts = world.tick(T0 + timedelta(minutes=3))
    assert counts["baseline"] is False
    assert world.mails_to(world.anna) == [f"New ticket: news {world.tag}"]


def test_a_tick_with_a_future_now_does_not_skip_later_changes(world):
    """`once notification --now <future>` (or a clock running ahead) leaves the
    checkpoint where the platform's writes are, not at its own now: a change made after
    it, at the platform's present, is still seen by the next tick."""
    installed(world)
    t = world.ticket(T0 - timedelta(hours=1), status="pending")
    world.tick(T0)
    world.tick(T0 + timedelta(days=1))
    world.change(t, T0 + timedelta(minutes=5), assignee_id=world.jonas["user_id"])
    counts = world.tick(T0 + timedelta(minutes=6))
    assert counts["changed"] >= 1, counts
    assigned = f"Assigned to you: {world.conv(t)['subject']}"
    assert world.mails_to(world.jonas).count(assigned) == 1


# ---- a decision that fails ------------------------------------------------------------------

def failing_rules(tmp_path):
    """The shipped rules, but sla.lua's policy raises for a subject starting with "boom"."""
    rules = tmp_path / "failing-rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("fixtures"))
    path = rules / "sla.lua"
    text = path.read_text()
    head = "function M.policy(conversation, room)\n"
    assert head in text
    path.write_text(text.replace(head, head + '  if tostring(conversation.subject):sub(1, 4) == "boom" '
                                       'then error("no policy for this one") end\n'))
    return str(rules)


def test_a_conversation_whose_decision_fails_is_retried_next_tick(world, tmp_path):
    rules = failing_rules(tmp_path)
    installed(world)
    bad = world.ticket(T0, subject=f"boom {world.tag}")
    good = world.ticket(T0)
    counts = world.tick(T0 + timedelta(minutes=1), QM_SUPPORT_RULES_DIR=rules)
    assert counts["bad_documents"] == 1, counts
    assert world.outbox(bad) == [] and len(world.outbox(good, "ticket.created")) == 2
    world.tick(T0 + timedelta(minutes=2), QM_SUPPORT_RULES_DIR=rules)
    # the platform goes on (so the change query has moved past `bad`); the rule is fixed
    world.change(good, T0 + timedelta(minutes=3), priority="high")
    world.tick(T0 + timedelta(minutes=4))
    assert {e["recipient"]["email"] for e in world.outbox(bad, "ticket.created")} == {
        world.anna["email"], world.jonas["email"]}
    record = world.db[NOTIFY_STATE].find_one({"_id": bad})
    assert "failure" not in record and record["status"] == "open", record
    world.tick(T0 + timedelta(minutes=5))
    assert len(world.outbox(bad)) == 2 and len(world.mails_to(world.anna)) == 2


def test_a_conversation_that_keeps_failing_is_parked_with_its_error(world, tmp_path, sd):
    rules = failing_rules(tmp_path)
    installed(world)
    bad = world.ticket(T0, subject=f"boom {world.tag}")
    at = T0
    attempts = []
    for k in range(12):  # an hour apart: every retry is due
        at += timedelta(hours=1)
        cp = sd.cli("once", "notification", "--now", iso(at), timeout=90,
                    **world.env(QM_SUPPORT_RULES_DIR=rules))
        assert cp.returncode == 0, cp.stderr
        failure = world.db[NOTIFY_STATE].find_one({"_id": bad})["failure"]
        attempts.append(failure["attempts"])
        if k == 9:
            assert "notification.parked" in cp.stderr and str(bad) in cp.stderr
    assert attempts == list(range(1, 11)) + [10, 10], attempts
    assert failure["parked"] is True and "no policy for this one" in failure["error"], failure
    assert tick_counts(cp)["due"] == 0  # parked: no longer looked at
    assert world.outbox(bad) == []
    # the platform changes it (or an operator touches it): looked at again, and decided
    world.change(bad, at + timedelta(minutes=1), subject=f"fixed {world.tag}")
    world.tick(at + timedelta(minutes=2), QM_SUPPORT_RULES_DIR=rules)
    assert len(world.outbox(bad, "ticket.created")) == 2
    assert "failure" not in world.db[NOTIFY_STATE].find_one({"_id": bad})


# ---- catching up ------------------------------------------------------------------------------

def escalations(world, t):
    return sorted((e["recipient"]["email"], e["subject"]) for e in world.outbox(t, "ticket.escalated"))


def test_a_ticket_first_seen_hours_past_its_deadlines_escalates_once_per_manager(world):
    """Downtime: an urgent ticket is first looked at ten hours after its first-response
    deadline. One ticket.escalated per manager, naming the level reached; the level is
    recorded."""
    installed(world)
    second = world.member("Markus", "manager")
    world.db["conversation-room"].update_one({"_id": world.room_id}, {"$push": {"members": second}})
    t = world.ticket(T0, priority="urgent", assignee_id=world.anna["user_id"])
    world.tick(T0 + timedelta(minutes=30 + 600))
    subject = world.conv(t)["subject"]
    assert escalations(world, t) == sorted([(world.petra["email"], f"Escalated to level 3: {subject}"),
                                            (second["email"], f"Escalated to level 3: {subject}")])
    assert world.mails_to(world.petra).count(f"Escalated to level 3: {subject}") == 1
    assert world.conv(t)["escalation_level"] == 3
    world.tick(T0 + timedelta(minutes=30 + 601))
    assert len(world.outbox(t, "ticket.escalated")) == 2


def test_after_a_catch_up_a_later_step_up_the_ladder_mails_once(world):
    installed(world)
    t = world.ticket(T0, priority="urgent", assignee_id=world.anna["user_id"])
    world.tick(T0 + timedelta(minutes=30 + 90))  # 90 minutes overdue: level 2 at once
    subject = world.conv(t)["subject"]
    assert escalations(world, t) == [(world.petra["email"], f"Escalated to level 2: {subject}")]
    assert world.conv(t)["escalation_level"] == 2
    for m in (30 + 241, 30 + 242):  # 240 minutes overdue: level 3
        world.tick(T0 + timedelta(minutes=m))
    assert escalations(world, t) == sorted([(world.petra["email"], f"Escalated to level 2: {subject}"),
                                            (world.petra["email"], f"Escalated to level 3: {subject}")])
    assert world.conv(t)["escalation_level"] == 3
    once_each(world)


def test_a_quiet_system_reads_its_newest_changes_again_but_decides_nothing(world):
    """The checkpoint is the newest updated_at read, so the change query's margin keeps
    the last changes in every tick's read until a newer one comes: read, found unchanged
    since their decision and not due, and left (no rules, no writes)."""
    installed(world)
    for _ in range(3):
        world.ticket(T0)
    counts = world.tick(T0 + timedelta(minutes=1))
    assert counts["changed"] == 3 and counts["notifications"] == 6, counts
    for m in (5, 10):
        counts = world.tick(T0 + timedelta(minutes=m))
        assert (counts["unchanged"], counts["changed"], counts["due"]) == (3, 0, 0), counts
        assert counts["states"] == 0 and counts["rule_calls"] == 0, counts
