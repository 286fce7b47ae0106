"""The release binary resolves IANA zones from its own embedded data: in an
empty root (a chroot with only the binary and the rules, no
/usr/share/zoneinfo), a Europe/Berlin deadline across the spring DST change
comes out right. Runs against the static binary only (scripts/test's second
pass), as root (chroot)."""
from __future__ import annotations

import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pymongo
import pytest
from bson import ObjectId

import tls_helpers

UTC = timezone.utc


@pytest.fixture
def empty_root(sd, tmp_path):
    root = tls_helpers.empty_root(sd, tmp_path)
    assert not (root / "usr").exists()
    return root


def chroot(sd, root: Path, *args, **env):
    full = sd.env(QM_SUPPORT_RULES_DIR="/rules", **env)
    full = {k: v for k, v in full.items() if k != "LD_PRELOAD"}
    # 127.0.0.1, not localhost: there is no /etc/hosts in there
    full["MONGO_DB_URL"] = full["MONGO_DB_URL"].replace("localhost", "127.0.0.1")
    full["REDIS_HOST"] = full["REDIS_HOST"].replace("localhost", "127.0.0.1")
    return subprocess.run(["chroot", str(root), "/supportd", *args], env=full,
                          capture_output=True, text=True, timeout=60)


def test_berlin_deadline_in_an_empty_root(sd, empty_root):
    cp = chroot(sd, empty_root, "version")
    assert cp.returncode == 0 and "time zones: embedded tzdata" in cp.stdout, cp.stdout + cp.stderr

    db = pymongo.MongoClient(sd.mongo_url, tz_aware=True)[sd.db_name]
    hours = {d: [{"from": "09:00", "to": "17:00"}] for d in ("mon", "tue", "wed", "thu", "fri")}
    room = ObjectId()
    db["conversation-room"].insert_one({"_id": room, "name": "Berlin", "timezone": "Europe/Berlin",
                                        "business_hours": hours, "holidays": None, "members": [],
                                        "email_from": "desk@acme.example"})
    install = datetime(2026, 3, 27, 15, 0, tzinfo=UTC)
    cp = chroot(sd, empty_root, "once", "notification", "--now", install.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert cp.returncode == 0, cp.stderr
    created = datetime(2026, 3, 27, 15, 30, tzinfo=UTC)  # Friday 16:30 CET
    t = db["conversation-conversation"].insert_one({
        "_id": ObjectId(), "room_id": room, "subject": f"s {uuid.uuid4().hex[:6]}",
        "channel": "email", "status": "open", "priority": "high", "assignee_id": None,
        "contact": {"name": "Lena"}, "created_at": created, "updated_at": created,
        "last_customer_message_at": created, "escalation_level": 0}).inserted_id
    cp = chroot(sd, empty_root, "once", "notification", "--now",
                (created + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert cp.returncode == 0, cp.stderr
    assert "unknown_timezone" not in cp.stderr
    sla = db["conversation-conversation"].find_one({"_id": t})["sla"]
    # 30 minutes on Friday, clocks forward on Sunday, 30 on Monday: 09:30 CEST
    assert sla["first_response_due"] == datetime(2026, 3, 30, 7, 30, tzinfo=UTC), sla
