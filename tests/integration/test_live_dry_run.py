"""`supportd dry-run --live`: the jobs' own collect and decide on the live database,
read-only. What it plans is what the next tick at the same --now does (the same outbox
keys), it writes nothing anywhere (every document, index and Redis key compared before
and after), and `--against` shows what a rule change would add, remove and change."""
from __future__ import annotations

import json
import shutil
import uuid
from datetime import timedelta

import pytest
import redis
from bson import ObjectId

from conftest import REPO
from fakes_fixtures import *  # noqa: F401,F403
from test_notification import T0, World, installed, iso
from tls_helpers import secure_services


@pytest.fixture
def world(sd, providers):
    w = World(sd, providers)
    yield w
    w.client.close()


def snoozed(world, until, *, assignee=None):
    doc = {"_id": ObjectId(), "room_id": world.room_id, "subject": f"snoozed {uuid.uuid4().hex[:6]}",
           "channel": "email", "status": "snoozed", "priority": "low",
           "assignee_id": assignee["user_id"] if assignee else None,
           "contact": {"name": "Lena", "email": f"lena-{world.tag}@example.org", "phone": None},
           "created_at": T0 - timedelta(days=3), "updated_at": T0 - timedelta(days=1),
           "last_customer_message_at": T0 - timedelta(days=3), "escalation_level": 0,
           "snooze": {"until": until, "original_priority": "high", "original_status": "open",
                      "by": world.anna["user_id"], "at": T0 - timedelta(days=1)}}
    world.db["conversation-conversation"].insert_one(doc)
    return doc["_id"]


def busy_day(world):
    """A database with something for every planned job: new, assigned, answered-by-
    the-customer and urgent tickets past their deadlines, and snoozes due and not."""
    installed(world)
    t = world.ticket(T0 - timedelta(minutes=50), assignee_id=world.anna["user_id"])
    world.tick(T0 - timedelta(minutes=40))
    world.customer_writes(t, T0 - timedelta(minutes=10))
    world.ticket(T0)  # new
    world.ticket(T0, assignee_id=world.jonas["user_id"], assigned_at=T0,
                 assigned_by=world.anna["user_id"])
    world.ticket(T0 - timedelta(hours=3), priority="urgent", assignee_id=world.anna["user_id"])
    snoozed(world, T0 - timedelta(minutes=5), assignee=world.anna)
    snoozed(world, T0 + timedelta(hours=5), assignee=world.anna)


ENABLED = {"QM_SUPPORT_SNOOZE": "true", "QM_SUPPORT_NOTIFICATION": "true"}


def live(world, *args, now=T0, env=None, check=True):
    cp = world.sd.cli("dry-run", "--live", "--now", iso(now), *args, timeout=90,
                      **world.env(**{**ENABLED, **(env or {})}))
    if check:
        assert cp.returncode == 0, cp.stderr
    return cp


def planned_keys(plan, job=None):
    keys = []
    for name, j in plan["jobs"].items():
        if job and name != job:
            continue
        for a in j["actions"]:
            keys += [n["key"] for n in a.get("notifications", [])]
    return keys


def outbox_keys(world):
    return {e["key"] for e in world.db["conversation-notification"].find({}, {"key": 1})}


# ---- what it plans is what the next tick does ----------------------------------

@pytest.mark.parametrize("job", ["notification", "snooze"])
def test_the_plan_is_what_the_next_tick_then_does(world, job):
    busy_day(world)
    before = outbox_keys(world)
    plan = json.loads(live(world, "--job", job).stdout)
    keys = planned_keys(plan)
    assert plan["live"] is True and list(plan["jobs"]) == [job]
    assert keys and len(keys) == len(set(keys))
    cp = world.sd.cli("once", job, "--now", iso(T0), timeout=90, **world.env())
    assert cp.returncode == 0, cp.stderr
    assert outbox_keys(world) - before == set(keys)


def test_both_jobs_are_planned_by_default_with_text_and_preview(world, tmp_path):
    busy_day(world)
    plan = json.loads(live(world).stdout)
    assert list(plan["jobs"]) == ["snooze", "notification"]
    assert [a["target"] for a in plan["jobs"]["snooze"]["actions"]]  # the due snooze
    assert [s["reason"] for s in plan["jobs"]["snooze"]["skipped"]]  # the one not due
    types = {k.split(":")[0] for k in planned_keys(plan)}
    assert {"ticket.unsnoozed", "ticket.created", "ticket.assigned",
            "ticket.customer_message"} <= types
    text = live(world, "--format", "text").stdout
    assert "snooze:" in text and "notification:" in text and "notify " in text
    out = tmp_path / "preview"
    out.mkdir()
    cp = live(world, "--preview", str(out))
    assert "preview of" in cp.stderr
    assert len(list(out.glob("mail-*.html"))) == len(planned_keys(json.loads(cp.stdout)))


def test_limit_caps_the_conversations_read(world):
    installed(world)
    for i in range(3):
        world.ticket(T0 - timedelta(minutes=i))
    full = json.loads(live(world, "--job", "notification").stdout)["jobs"]["notification"]
    assert full["read"] >= 3 and full["limited"] is False
    cp = live(world, "--job", "notification", "--limit", "1")
    capped = json.loads(cp.stdout)["jobs"]["notification"]
    # the jobs read in batches: the cap stops after the batch that reaches it
    assert capped["read"] >= 1 and capped["limited"] is True
    assert "item(s) read" in cp.stderr and "--limit reached" in cp.stderr


def test_conversations_read_for_their_due_deadlines_count_towards_the_limit(world):
    """The due phase (records whose deadline has come, their conversations unchanged
    since the checkpoint) reads conversations too: they count as read, and --limit
    bounds them."""
    installed(world)
    due = [world.ticket(T0, priority="urgent", assignee_id=world.anna["user_id"],
                        first_response_at=T0, last_agent_message_at=T0)  # warning at T0+225
           for _ in range(3)]
    world.tick(T0 + timedelta(minutes=1))
    world.ticket(T0 + timedelta(minutes=200))  # the checkpoint moves past them
    world.tick(T0 + timedelta(minutes=201))
    now = T0 + timedelta(minutes=226)
    full = json.loads(live(world, "--job", "notification", now=now).stdout)["jobs"]["notification"]
    warned = {a["target"] for a in full["actions"]
              if any(n["key"].startswith("ticket.sla_warning:") for n in a.get("notifications", []))}
    assert warned == {str(t) for t in due}, full
    assert full["read"] >= len(due) and full["limited"] is False, full
    capped = json.loads(live(world, "--job", "notification", "--limit", "1",
                             now=now).stdout)["jobs"]["notification"]
    assert capped["limited"] is True, capped


# ---- it writes nothing ---------------------------------------------------------

def snapshot(world):
    db = world.db
    out = {}
    for name in sorted(db.list_collection_names()):
        out[name] = {
            "docs": sorted((json.dumps(d, default=str, sort_keys=True) for d in db[name].find()),
                           key=str),
            "indexes": sorted(json.dumps(i, default=str, sort_keys=True)
                              for i in db[name].list_indexes()),
        }
    r = world.sd.redis
    keys = sorted(r.scan_iter(match=world.sd.prefix + "*", count=1000))
    out["redis"] = {k: (r.type(k), r.dump(k), r.pttl(k) > 0) for k in keys}
    return out


def candidate_rules(tmp_path, *, urgent_first_response=5, created_subject=None):
    d = tmp_path / f"rules-{uuid.uuid4().hex[:6]}"
    shutil.copytree(REPO / "rules", d)
    sla = (d / "sla.lua").read_text()
    sla = sla.replace("urgent = { first_response = 30,",
                      f"urgent = {{ first_response = {urgent_first_response},")
    sla = sla.replace("{ first_response = 30, resolution = 240, warn_before = 15 }",
                      f"{{ first_response = {urgent_first_response}, resolution = 240, "
                      "warn_before = 15 }")
    (d / "sla.lua").write_text(sla)
    if created_subject:
        t = (d / "templates.lua").read_text()
        t = t.replace('subject = "New ticket: {{conversation.subject}}"',
                      f'subject = "{created_subject}: {{{{conversation.subject}}}}"')
        (d / "templates.lua").write_text(t)
    return d


def test_a_live_dry_run_writes_no_document_index_or_redis_key(world, tmp_path):
    busy_day(world)
    before = snapshot(world)
    assert before["redis"], "the setup left Redis keys to compare"
    live(world)
    live(world, "--format", "text", "--rules", str(candidate_rules(tmp_path)),
         "--against", str(REPO / "rules"))
    live(world, "--job", "notification", "--limit", "1")
    assert snapshot(world) == before


def test_a_fresh_database_is_planned_without_creating_anything(world):
    """No checkpoint yet (a first install): the plan records nothing and mails nobody, and
    does not mark the first install begun as a tick would."""
    world.ticket(T0)
    before = snapshot(world)
    plan = json.loads(live(world).stdout)
    assert planned_keys(plan) == []
    assert snapshot(world) == before


def test_a_read_only_redis_user_is_enough(world, services, tmp_path):
    secure = secure_services(services)
    admin = secure.redis()
    user, password = f"ro-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    # read commands only, on every key: no write, no admin
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "resetchannels",
                          "-@all", "+@read", "+@connection")
    try:
        busy_day(world)
        ro = redis.Redis(host="127.0.0.1", port=secure.redis_port, ssl=True,
                         ssl_ca_certs=str(secure.ca), username=user, password=password)
        with pytest.raises(redis.exceptions.NoPermissionError):
            ro.set(world.sd.key("probe-write"), "1")
        env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": secure.redis_port,
               "REDIS_USERNAME": user, "REDIS_PASSWORD": password, "REDIS_TLS": "true",
               "REDIS_TLS_CA_FILE": secure.ca}
        plan = json.loads(live(world, env=env).stdout)
        assert planned_keys(plan, "notification")
        some = world.db["conversation-conversation"].find_one({"status": "open"})["_id"]
        cp = world.sd.cli("explain", str(some), "--now", iso(T0), timeout=90,
                          **world.env(**{**ENABLED, **env}))
        assert cp.returncode == 0 and "decisions:" in cp.stdout, cp.stderr
    finally:
        admin.execute_command("ACL", "DELUSER", user)


# ---- what a rule change would do -----------------------------------------------

def test_against_shows_what_a_rule_change_adds_removes_and_changes(world, tmp_path):
    installed(world)
    urgent = world.ticket(T0 - timedelta(minutes=20), priority="urgent",
                          assignee_id=world.anna["user_id"])
    calm = world.ticket(T0 - timedelta(minutes=20), priority="low")
    world.tick(T0 - timedelta(minutes=19))  # both created mails sent: old news
    fresh = world.ticket(T0)  # its ticket.created mail is still to come
    cand = candidate_rules(tmp_path, urgent_first_response=5, created_subject="Neu")
    before = snapshot(world)
    plan = json.loads(live(world, "--rules", str(cand), "--against", str(REPO / "rules")).stdout)
    assert snapshot(world) == before
    diff = plan["diff"]
    assert plan["against"] != plan["rules"]
    added = {(e["type"], e["conversation_id"]["$oid"]) for e in diff["added"]}
    removed = {(e["type"], e["conversation_id"]["$oid"]) for e in diff["removed"]}
    # urgent first response 30 → 5 min: 20 minutes in, breached and escalated, not warned
    assert ("ticket.sla_breached", str(urgent)) in added
    assert ("ticket.escalated", str(urgent)) in added
    assert ("ticket.sla_warning", str(urgent)) in removed
    assert not any(oid == str(calm) for _, oid in added | removed)
    changed = {c["key"]: c for c in diff["changed"]}
    created = [c for c in changed.values() if c["type"] == "ticket.created"]
    # the fresh ticket's mail to each agent: same key, same recipient, new subject
    assert len(created) == 2 and {c["key"].split(":")[1] for c in created} == {str(fresh)}
    assert all(c["fields"] == ["subject"] for c in created)
    assert all(c["rules"]["subject"].startswith("Neu: ") for c in created)
    assert all(c["against"]["subject"].startswith("New ticket: ") for c in created)
    n = diff["counts"]["notification"]
    assert n["ticket.sla_breached"]["added"] >= 1 and n["ticket.created"]["changed"] == len(created)
    text = live(world, "--format", "text", "--rules", str(cand), "--against",
                str(REPO / "rules")).stdout
    assert "+1 ticket.sla_breached" in text and "+1 ticket.escalated" in text
    assert "-1 ticket.sla_warning" in text and "~2 ticket.created" in text


def test_against_a_broken_rule_set_names_it_and_plans_nothing(world, tmp_path):
    installed(world)
    bad = candidate_rules(tmp_path)
    (bad / "sla.lua").write_text("return {")
    cp = live(world, "--rules", str(bad), "--against", str(REPO / "rules"), check=False)
    assert cp.returncode == 2 and "sla.lua" in cp.stderr and cp.stdout == ""


def test_no_enabled_job_and_no_job_named_is_an_error(world):
    cp = live(world, env={"QM_SUPPORT_SNOOZE": "false", "QM_SUPPORT_NOTIFICATION": "false"},
              check=False)
    assert cp.returncode == 1 and "no job to plan" in cp.stderr


@pytest.mark.parametrize("args, message", [
    (["--against", "rules"], "--against needs --live"),
    (["--live", "--job", "message-status"], "not planned live"),
    (["--live", "--limit", "0"], "--limit must be a positive number"),
])
def test_usage_errors(sd, args, message):
    if "--live" not in args:
        args = ["--fixtures", str(REPO / "rules" / "fixtures"), *args]
    cp = sd.cli("dry-run", *args)
    assert cp.returncode == 2 and message in cp.stderr
