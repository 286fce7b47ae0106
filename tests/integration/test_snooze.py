"""The snooze job end to end against FerretDB, Redis and Mailpit (SMTP).

Every ticket is created relative to a fixed tick time NOW (passed with
--now), so "due", "not due" and "exactly now" are exact.
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
from pathlib import Path

import pymongo
import pytest
from bson import ObjectId

from conftest import REPO, services_script, unaligned_heap, wait_until

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
NOW_ISO = "2026-03-02T09:00:00Z"
BAND = 1e13  # rules/queue.lua


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


class World:
    """One room with two agents and a manager, mail through Mailpit."""

    def __init__(self, sd):
        self.sd = sd
        self.client = pymongo.MongoClient(sd.mongo_url, tz_aware=True)
        self.db = self.client[sd.db_name]
        self.tag = uuid.uuid4().hex[:10]
        self.room_id = ObjectId()
        self.anna = {"user_id": ObjectId(), "name": "Anna", "email": f"anna-{self.tag}@acme.example", "role": "agent"}
        self.jonas = {"user_id": ObjectId(), "name": "Jonas", "email": f"jonas-{self.tag}@acme.example", "role": "agent"}
        self.petra = {"user_id": ObjectId(), "name": "Petra", "email": f"petra-{self.tag}@acme.example", "role": "manager"}
        self.db["conversation-room"].insert_one({
            "_id": self.room_id, "name": "Berlin", "timezone": "Europe/Berlin", "business_hours": None,
            "members": [self.anna, self.jonas, self.petra], "email_from": "support@acme.example",
            "sla_policy": "default"})

    def ticket(self, until, *, priority="normal", original_priority="high", original_status="open",
               assignee=None, snooze_at=None, last_customer=None, room_id=None, snooze="default",
               subject=None):
        doc = {"_id": ObjectId(), "room_id": room_id or self.room_id,
               "subject": subject or f"ticket {uuid.uuid4().hex[:6]}", "channel": "email",
               "status": "snoozed", "priority": priority,
               "assignee_id": assignee["user_id"] if assignee else None,
               "contact": {"name": "Lena", "email": "lena@example.org", "phone": None},
               "created_at": NOW - timedelta(days=3), "updated_at": NOW - timedelta(days=1),
               "last_customer_message_at": last_customer or NOW - timedelta(days=3),
               "escalation_level": 0}
        if snooze == "default":
            doc["snooze"] = {"until": until, "original_priority": original_priority,
                             "original_status": original_status, "by": self.anna["user_id"],
                             "at": snooze_at or NOW - timedelta(days=1)}
        elif snooze is not None:
            doc["snooze"] = snooze
        self.db["conversation-conversation"].insert_one(doc)
        return doc["_id"]

    def conv(self, oid):
        return self.db["conversation-conversation"].find_one({"_id": oid})

    def outbox(self, oid=None):
        q = {"conversation_id": oid} if oid else {}
        return list(self.db["conversation-notification"].find(q))

    def queue(self):
        return {m: s for m, s in self.sd.redis.zrange(self.sd.key(f"queue:{self.room_id}"), 0, -1,
                                                      withscores=True)}

    def env(self, **extra):
        e = {"QM_SUPPORT_EMAIL_PROVIDER": "smtp", "SMTP_URL": self.sd.services["SMTP_URL"],
             "QM_SUPPORT_EMAIL_FROM": "support@acme.example"}
        e.update(extra)
        return e

    def once(self, *extra_args, **env):
        return self.sd.cli("once", "snooze", "--now", NOW_ISO, *extra_args, **self.env(**env))

    def start_once(self, name, **env):
        return self.sd.start("once", "snooze", "--now", NOW_ISO, name=name, **self.env(**env))

    def mails_to(self, address):
        api = self.sd.services["MAILPIT_API_URL"]
        q = urllib.request.quote(f'to:"{address}"')
        with urllib.request.urlopen(f"{api}/api/v1/search?query={q}&limit=200", timeout=10) as r:
            return json.load(r)["messages"]


def tick_end(cp):
    for line in cp.stderr.splitlines():
        if '"tick.end"' in line:
            return json.loads(line)
    raise AssertionError(f"no tick.end in:\n{cp.stderr}")


@pytest.fixture
def world(sd):
    w = World(sd)
    yield w
    w.client.close()


def test_due_not_due_and_exactly_now(world):
    due = world.ticket(NOW - timedelta(minutes=1), assignee=world.anna)
    exact = world.ticket(NOW, assignee=world.anna)
    later = world.ticket(NOW + timedelta(seconds=1), assignee=world.anna)
    ten_days = world.ticket(NOW - timedelta(days=10), assignee=world.anna)  # no lower bound

    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    for oid in (due, exact, ten_days):
        c = world.conv(oid)
        assert c["status"] == "open" and c["priority"] == "high", c
        assert "snooze" not in c and "supportd_unsnooze" not in c
        assert c["unsnoozed_at"] is not None and c["updated_at"] > NOW - timedelta(days=1)
    assert world.conv(later)["status"] == "snoozed"
    queue = world.queue()
    assert set(queue) == {str(due), str(exact), str(ten_days)}
    # queue.lua: priority band + the time the customer started waiting
    assert queue[str(due)] == 1 * BAND + ms(NOW - timedelta(days=3))
    counts = tick_end(cp)["counts"]
    assert counts["woken"] == 3 and counts["queued"] == 3 and counts["outbox_sent"] == 3


def test_status_and_priority_restoration(world):
    pending = world.ticket(NOW - timedelta(hours=1), original_status="pending", original_priority="urgent")
    bogus_status = world.ticket(NOW - timedelta(hours=1), original_status="closed", original_priority="low")
    no_priority = world.ticket(NOW - timedelta(hours=1), priority="low", original_priority=None)
    assert world.once().returncode == 0
    assert (world.conv(pending)["status"], world.conv(pending)["priority"]) == ("pending", "urgent")
    assert (world.conv(bogus_status)["status"], world.conv(bogus_status)["priority"]) == ("open", "low")
    assert (world.conv(no_priority)["status"], world.conv(no_priority)["priority"]) == ("open", "low")


def test_recipients_assigned_and_unassigned(world):
    assigned = world.ticket(NOW - timedelta(minutes=5), assignee=world.jonas, subject=f"assigned {world.tag}")
    unassigned = world.ticket(NOW - timedelta(minutes=5), subject=f"unassigned {world.tag}")
    assert world.once().returncode == 0
    to_assigned = {e["recipient"]["email"] for e in world.outbox(assigned)}
    to_unassigned = {e["recipient"]["email"] for e in world.outbox(unassigned)}
    assert to_assigned == {world.jonas["email"]}
    assert to_unassigned == {world.anna["email"], world.jonas["email"]}  # agents, not the manager
    for e in world.outbox():
        assert e["status"] == "sent" and e["type"] == "ticket.unsnoozed"
    # delivered for real through SMTP
    mails = world.mails_to(world.jonas["email"])
    subjects = sorted(m["Subject"] for m in mails)
    assert subjects == sorted([f"Back from snooze: assigned {world.tag}",
                               f"Back from snooze: unassigned {world.tag}"])
    assert world.mails_to(world.petra["email"]) == []


def customer_writes(world, oid):
    """What the platform does when the customer replies."""
    t = datetime.now(timezone.utc)
    world.db["conversation-conversation"].update_one(
        {"_id": oid}, {"$set": {"last_customer_message_at": t, "updated_at": t}})


def test_customer_reply_wakes_early_unless_rules_say_no(world, tmp_path):
    replied = world.ticket(NOW + timedelta(days=2), snooze_at=NOW - timedelta(hours=3),
                           last_customer=NOW - timedelta(minutes=20), assignee=world.anna)
    quiet = world.ticket(NOW + timedelta(days=2), snooze_at=NOW - timedelta(hours=3),
                         last_customer=NOW - timedelta(hours=4), assignee=world.anna)
    later = world.ticket(NOW + timedelta(days=2), snooze_at=NOW - timedelta(hours=3),
                         last_customer=NOW - timedelta(hours=4), assignee=world.anna)

    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    notify = rules / "notify.lua"
    notify.write_text(notify.read_text().replace("wake_on_customer_message = true",
                                                 "wake_on_customer_message = false"))
    cp = world.once(QM_SUPPORT_RULES_DIR=str(rules))
    assert cp.returncode == 0, cp.stderr
    assert world.conv(replied)["status"] == "snoozed"

    # The shipped rules wake on a reply newer than the snooze, not an older one.
    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    assert world.conv(replied)["status"] == "open"
    assert world.conv(quiet)["status"] == "snoozed"
    assert "customer replied" in world.outbox(replied)[0]["text"]

    # A reply arriving between ticks wakes the ticket on the next one.
    assert world.conv(later)["status"] == "snoozed"
    customer_writes(world, later)
    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    assert world.conv(later)["status"] == "open"
    assert world.conv(quiet)["status"] == "snoozed"


FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def test_a_fast_clock_never_moves_the_checkpoint_past_what_was_read(world):
    """Issue 20 (SPEC §3, clocks): the changed-tickets checkpoint derives from
    the updated_at values read, not from the local clock. An instance whose
    clock runs an hour fast once wrote "now + 1 h" and every reply written in
    that hour was skipped until its snooze ended."""
    from conftest import supportd_preload
    preload = supportd_preload()
    if not preload or not FAKETIME_LIB.exists():
        pytest.skip("needs LD_PRELOAD (not the static binary) and libfaketime")
    later = world.ticket(NOW + timedelta(days=2), snooze_at=NOW - timedelta(hours=3),
                         last_customer=NOW - timedelta(hours=4), assignee=world.anna)
    fast = world.once(LD_PRELOAD=f"{preload}:{FAKETIME_LIB}", FAKETIME="+1h",
                      FAKETIME_DONT_FAKE_MONOTONIC="1", FAKETIME_NO_CACHE="1")
    assert fast.returncode == 0, fast.stderr
    assert world.conv(later)["status"] == "snoozed"
    stored = int(world.sd.redis.get(world.sd.key("snooze:changed_since")).split()[0])
    real_now = int(time.time() * 1000)
    assert stored <= real_now, f"checkpoint {stored - real_now} ms in the future"
    customer_writes(world, later)  # by the platform, on a correct clock
    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    assert world.conv(later)["status"] == "open", "the reply was skipped"


def test_tick_twice_changes_and_sends_nothing_twice(world):
    ids = [world.ticket(NOW - timedelta(minutes=i + 1), assignee=world.anna) for i in range(5)]
    first = world.once()
    assert first.returncode == 0
    snapshot = {oid: world.conv(oid)["updated_at"] for oid in ids}
    second = world.once()
    assert second.returncode == 0
    counts = tick_end(second)["counts"]
    assert counts["woken"] == 0 and counts["notifications"] == 0 and counts["outbox_sent"] == 0
    assert {oid: world.conv(oid)["updated_at"] for oid in ids} == snapshot
    assert len(world.outbox()) == 5
    assert len(world.mails_to(world.anna["email"])) == 5


def test_agent_change_between_read_and_write_is_not_overwritten(world, tmp_path):
    seams = tmp_path / "seams"
    seams.mkdir()
    resnoozed = world.ticket(NOW - timedelta(minutes=5), assignee=world.anna)
    other = world.ticket(NOW - timedelta(minutes=5), assignee=world.anna)
    (seams / "snooze_before_write.arm").touch()
    d = world.start_once("paused", QM_SUPPORT_TEST_SEAMS=str(seams))
    wait_until(lambda: (seams / "snooze_before_write.reached").exists(), 20, what="the seam")
    # The agent re-snoozes the ticket meanwhile (the platform bumps updated_at).
    new_until = NOW + timedelta(days=7)
    world.db["conversation-conversation"].update_one(
        {"_id": resnoozed}, {"$set": {"snooze.until": new_until, "updated_at": datetime.now(timezone.utc)}})
    (seams / "snooze_before_write.go").touch()
    assert d.wait_exit(30) == 0, d.tail()
    c = world.conv(resnoozed)
    assert c["status"] == "snoozed" and c["snooze"]["until"].replace(tzinfo=timezone.utc) == new_until
    assert world.outbox(resnoozed) == [] and str(resnoozed) not in world.queue()
    assert world.conv(other)["status"] == "open"
    end = d.events("tick.end")[-1]
    assert end["counts"]["conflicts"] == 1 and end["counts"]["woken"] == 1


def test_kill_9_mid_batch_then_next_tick_finishes(world, tmp_path):
    seams = tmp_path / "seams"
    seams.mkdir()
    ids = [world.ticket(NOW - timedelta(minutes=i + 1), assignee=world.anna) for i in range(20)]
    (seams / "snooze_before_finish.arm").touch()
    d = world.start_once("doomed", QM_SUPPORT_TEST_SEAMS=str(seams), QM_SUPPORT_LEASE_TTL=1)
    wait_until(lambda: (seams / "snooze_before_finish.reached").exists(), 30, what="the seam")
    # The wake-up is written, queue and outbox are not: die here.
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    assert all(world.conv(oid)["status"] == "open" for oid in ids)
    assert world.queue() == {} and world.outbox() == []
    time.sleep(1.2)  # the dead instance's lease expires

    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    assert set(world.queue()) == {str(oid) for oid in ids}
    assert len(world.outbox()) == 20 and all(e["status"] == "sent" for e in world.outbox())
    assert all("supportd_unsnooze" not in world.conv(oid) and "supportd_unsnooze_pending" not in world.conv(oid) for oid in ids)
    assert len(world.mails_to(world.anna["email"])) == 20
    assert world.once().returncode == 0
    assert len(world.mails_to(world.anna["email"])) == 20


def test_paused_instance_that_lost_its_lease_changes_nothing_twice(world, tmp_path):
    """A process paused past its lease (Kleppmann's case): another instance
    takes over and does the work; when the first resumes, its stale writes
    are refused and nothing is sent twice."""
    seams = tmp_path / "seams"
    seams.mkdir()
    ids = [world.ticket(NOW - timedelta(minutes=i + 1), assignee=world.anna) for i in range(3)]
    (seams / "snooze_before_write.arm").touch()
    a = world.start_once("paused", QM_SUPPORT_TEST_SEAMS=str(seams), QM_SUPPORT_LEASE_TTL=1)
    wait_until(lambda: (seams / "snooze_before_write.reached").exists(), 20, what="the seam")
    a.proc.send_signal(signal.SIGSTOP)  # the renewer stops too: the lease expires
    try:
        wait_until(lambda: world.sd.lease("snooze") is None, 10, what="the lease to expire")
        cp = world.once()
        assert cp.returncode == 0, cp.stderr
        assert tick_end(cp)["counts"]["woken"] == 3
    finally:
        a.proc.send_signal(signal.SIGCONT)
    (seams / "snooze_before_write.go").touch()
    a.wait_exit(30)
    assert a.events("tick.end")[-1]["counts"]["conflicts"] == 3
    assert len(world.outbox()) == 3
    assert len(world.mails_to(world.anna["email"])) == 3
    assert set(world.queue()) == {str(oid) for oid in ids}


def test_two_instances_at_once(world):
    ids = [world.ticket(NOW - timedelta(minutes=i + 1), assignee=world.anna) for i in range(30)]
    procs = [world.start_once(f"i{n}") for n in range(2)]
    codes = [p.wait_exit(60) for p in procs]
    assert 0 in codes  # the other either skipped (lease held: exit 1) or found nothing due
    assert all(world.conv(oid)["status"] == "open" for oid in ids)
    assert len(world.outbox()) == 30
    assert len(world.mails_to(world.anna["email"])) == 30


def test_malformed_documents_are_handled_and_logged(world):
    missing_snooze = world.ticket(None, snooze=None)
    string_until = world.ticket(None, snooze={"until": "next monday", "at": NOW - timedelta(days=1)})
    bad_priority = world.ticket(NOW - timedelta(minutes=1), priority="normal", original_priority="rush")
    ghost_room = world.ticket(NOW - timedelta(minutes=1), room_id=ObjectId())
    fine = world.ticket(NOW - timedelta(minutes=1), assignee=world.anna)
    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    for oid in (missing_snooze, string_until, bad_priority, ghost_room, fine):
        assert world.conv(oid)["status"] == "open", oid
    assert world.conv(bad_priority)["priority"] == "normal"
    assert world.outbox(ghost_room) == []  # no room, no recipients
    bad = [json.loads(l) for l in cp.stderr.splitlines() if "snooze.bad_document" in l]
    named = {b["conversation_id"] for b in bad}
    assert {str(missing_snooze), str(string_until), str(bad_priority), str(ghost_room)} <= named
    assert tick_end(cp)["counts"]["bad_documents"] >= 4
    assert len(world.outbox(fine)) == 1


def test_redis_down_during_the_tick_then_next_tick_completes(world, tmp_path, redis_restart_guard):
    seams = tmp_path / "seams"
    seams.mkdir()
    ids = [world.ticket(NOW - timedelta(minutes=i + 1), assignee=world.anna) for i in range(4)]
    (seams / "snooze_before_finish.arm").touch()
    d = world.start_once("cut", QM_SUPPORT_TEST_SEAMS=str(seams), QM_SUPPORT_LEASE_TTL=2)
    wait_until(lambda: (seams / "snooze_before_finish.reached").exists(), 20, what="the seam")
    services_script("stop-redis")
    (seams / "snooze_before_finish.go").touch()
    assert d.wait_exit(60) == 1  # the tick fails cleanly
    assert d.alive() is False and d.proc.returncode == 1
    services_script("start-redis")
    wait_until(lambda: world.sd.redis.ping(), 20, what="Redis")
    time.sleep(2.2)  # the lease of the failed tick may still be there
    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    assert set(world.queue()) == {str(oid) for oid in ids}
    assert len(world.outbox()) == 4 and len(world.mails_to(world.anna["email"])) == 4


def test_database_restart_under_a_running_daemon(world):
    """FerretDB goes away under `supportd run`: ticks fail (logged), the
    process stays up, and once the database is back the due work is done."""
    d = world.sd.start("run", QM_SUPPORT_SNOOZE="true", QM_SUPPORT_SNOOZE_CRON="* * * * * *",
                       **world.env())
    d.wait_for("tick.end", outcome="ok")
    services_script("restart-ferretdb", timeout=120)
    # Work that became due while the database was away or just back.
    oid = world.ticket(datetime.now(timezone.utc) - timedelta(seconds=1), assignee=world.anna)
    wait_until(lambda: world.conv(oid)["status"] == "open", 30, what="the ticket to wake")
    assert d.alive()
    wait_until(lambda: len(world.mails_to(world.anna["email"])) == 1, 20, what="the email")
    assert d.terminate_and_wait() == 0


def test_a_batch_larger_than_ferretdbs_connection_pool(world):
    """520 due tickets: one bulk of 500 conditional wake-ups, then 20. A bulk
    of that many update_one statements deadlocks FerretDB 1.24 (it keeps a
    PostgreSQL connection per statement, pool 50); supportd's must not."""
    quiet_room = ObjectId()
    world.db["conversation-room"].insert_one({"_id": quiet_room, "name": "Quiet", "members": []})
    docs = []
    for i in range(520):
        docs.append({"_id": ObjectId(), "room_id": quiet_room, "subject": f"bulk {i}",
                     "channel": "email", "status": "snoozed", "priority": "normal",
                     "assignee_id": None, "contact": {"name": "C"},
                     "created_at": NOW - timedelta(days=2), "updated_at": NOW - timedelta(days=1),
                     "snooze": {"until": NOW - timedelta(minutes=i + 1), "original_status": "open",
                                "original_priority": "low", "at": NOW - timedelta(days=1)}})
    world.db["conversation-conversation"].insert_many(docs)
    cp = world.sd.cli("once", "snooze", "--now", NOW_ISO, timeout=180, **world.env())
    assert cp.returncode == 0, cp.stderr[-3000:]
    counts = tick_end(cp)["counts"]
    assert counts["woken"] == 520 and counts["queued"] == 520
    assert world.db["conversation-conversation"].count_documents({"status": "snoozed"}) == 0
    assert world.sd.redis.zcard(world.sd.key(f"queue:{quiet_room}")) == 520
    # and the server still answers
    assert world.db.command("ping")["ok"] == 1


def test_counters_add_up(world, tmp_path):
    """tick.end's counters (README: counters): every ticket read is due,
    replied, malformed, not due or failed; every planned wake-up is woken or
    a conflict."""
    due = [world.ticket(NOW - timedelta(minutes=i + 1), assignee=world.anna) for i in range(2)]
    replied = world.ticket(NOW + timedelta(days=2), snooze_at=NOW - timedelta(hours=3),
                           last_customer=NOW - timedelta(minutes=20), assignee=world.anna)
    malformed = world.ticket(None, snooze=None)
    quiet = world.ticket(NOW + timedelta(days=2))
    broken = world.ticket(NOW + timedelta(days=2), snooze_at=NOW - timedelta(hours=3),
                          last_customer=NOW - timedelta(minutes=20), subject="BROKEN")
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    queue = rules / "queue.lua"
    queue.write_text(queue.read_text().replace(
        "  local rank = M.priority_rank",
        '  if conversation.subject == "BROKEN" then error("no score for this one") end\n'
        "  local rank = M.priority_rank"))
    cp = world.once(QM_SUPPORT_RULES_DIR=str(rules))
    assert cp.returncode == 0, cp.stderr
    c = tick_end(cp)["counts"]
    assert (c["read"], c["due"], c["replied"], c["malformed"], c["not_due"], c["failed"]) == \
        (6, 2, 1, 1, 1, 1), c
    assert c["read"] == c["due"] + c["replied"] + c["malformed"] + c["not_due"] + c["failed"]
    assert c["woken"] + c["conflicts"] == c["due"] + c["replied"] + c["malformed"] == 4, c
    assert c["queued"] == 4 and "found" not in c
    for oid in (*due, replied, malformed):
        assert world.conv(oid)["status"] == "open"
    assert world.conv(quiet)["status"] == "snoozed" and world.conv(broken)["status"] == "snoozed"
    failed = [json.loads(l) for l in cp.stderr.splitlines() if "snooze.decide_failed" in l]
    assert failed and failed[0]["conversation_id"] == str(broken)
    assert "queue.score" in failed[0]["msg"] and "no score for this one" in failed[0]["msg"]


def test_outbox_entries_of_woken_tickets_are_aligned_for_libbson(world):
    """The outbox entries a wake-up carries are handed to libbson as bson_t, which
    libbson declares 128-byte aligned: never from a malloc'ed array (16-byte aligned
    under glibc's and musl's malloc; shims/bson_align_check.c aborts the process)."""
    woken = [world.ticket(NOW - timedelta(minutes=5)) for _ in range(3)]
    cp = world.once(**unaligned_heap())
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert len(world.outbox()) == 2 * len(woken)


def test_a_ticket_waking_to_many_agents_notifies_each(world):
    """An unassigned ticket goes to every agent of its room, however many (a regression:
    a batch kept at most 8 entries per woken ticket and dropped the rest)."""
    agents = [{"user_id": ObjectId(), "name": f"A{i}", "role": "agent",
               "email": f"a{i}-{world.tag}@acme.example"} for i in range(12)]
    world.db["conversation-room"].update_one({"_id": world.room_id},
                                             {"$push": {"members": {"$each": agents}}})
    t = world.ticket(NOW - timedelta(minutes=5))
    cp = world.once()
    assert cp.returncode == 0, cp.stderr[-3000:]
    to = sorted(e["recipient"]["email"] for e in world.outbox(t))
    assert to == sorted([world.anna["email"], world.jonas["email"]] + [a["email"] for a in agents])
