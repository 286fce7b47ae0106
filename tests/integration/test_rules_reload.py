"""Hot reload under a running daemon: a template edit changes the next email,
a broken file leaves the last good rules in use (the error names file:line),
fixing it is picked up, and SIGHUP reloads on demand."""
from __future__ import annotations

import json
import shutil
import signal
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

import pymongo
import pytest
from bson import ObjectId

from conftest import REPO, wait_until


@pytest.fixture
def setup(sd, tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("fixtures"))
    client = pymongo.MongoClient(sd.mongo_url, tz_aware=True)
    db = client[sd.db_name]
    tag = uuid.uuid4().hex[:10]
    agent = {"user_id": ObjectId(), "name": "Anna", "email": f"anna-{tag}@acme.example", "role": "agent"}
    room = ObjectId()
    db["conversation-room"].insert_one({"_id": room, "name": "Berlin", "members": [agent],
                                        "email_from": "support@acme.example"})
    yield sd, db, rules, room, agent
    client.close()


def due_ticket(db, room, agent, subject):
    now = datetime.now(timezone.utc)
    db["conversation-conversation"].insert_one({
        "_id": ObjectId(), "room_id": room, "subject": subject, "channel": "email",
        "status": "snoozed", "priority": "normal", "assignee_id": agent["user_id"],
        "contact": {"name": "Lena", "email": "lena@example.org"}, "created_at": now,
        "updated_at": now, "snooze": {"until": now - timedelta(seconds=1),
                                      "original_status": "open", "at": now - timedelta(hours=1)}})


def subjects(sd, address):
    api = sd.services["MAILPIT_API_URL"]
    q = urllib.request.quote(f'to:"{address}"')
    with urllib.request.urlopen(f"{api}/api/v1/search?query={q}&limit=100", timeout=10) as r:
        return {m["Subject"] for m in json.load(r)["messages"]}


def test_template_edit_break_fix_and_sighup(setup):
    sd, db, rules, room, agent = setup
    d = sd.start("run", QM_SUPPORT_SNOOZE="true", QM_SUPPORT_SNOOZE_CRON="* * * * * *",
                 QM_SUPPORT_RULES_DIR=str(rules), QM_SUPPORT_EMAIL_PROVIDER="smtp",
                 SMTP_URL=sd.services["SMTP_URL"])
    d.wait_for("job.scheduled")
    templates = rules / "templates.lua"
    original = templates.read_text()

    due_ticket(db, room, agent, "first")
    wait_until(lambda: "Back from snooze: first" in subjects(sd, agent["email"]), 20,
               what="the first email")

    templates.write_text(original.replace('"Back from snooze: {{', '"Awake again: {{'))
    d.wait_for("rules.reloaded")
    due_ticket(db, room, agent, "second")
    wait_until(lambda: "Awake again: second" in subjects(sd, agent["email"]), 20,
               what="the email with the edited subject")

    broken = original.replace('"Back from snooze: {{', '"Awake again: {{') + "\nlocal = 1\n"
    templates.write_text(broken)
    failed = d.wait_for("rules.reload_failed")
    line = len(broken.splitlines())
    assert f"templates.lua:{line}:" in failed["error"], failed
    due_ticket(db, room, agent, "third")
    wait_until(lambda: "Awake again: third" in subjects(sd, agent["email"]), 20,
               what="the last good template to stay in use")

    before = len(d.events("rules.reload_failed"))
    d.signal(signal.SIGHUP)
    wait_until(lambda: len(d.events("rules.reload_failed")) > before, 10,
               what="SIGHUP to retry the broken rules")
    assert d.events("signal.hup")

    templates.write_text(original.replace('"Back from snooze: {{', '"Fixed: {{'))
    wait_until(lambda: len(d.events("rules.reloaded")) >= 2, 10, what="the fix to load")
    due_ticket(db, room, agent, "fourth")
    wait_until(lambda: "Fixed: fourth" in subjects(sd, agent["email"]), 20,
               what="the fixed template")
    assert d.alive()
    assert d.terminate_and_wait() == 0
