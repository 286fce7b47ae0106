"""The notification job's story, tick by tick, on the demo database.

A new SMS ticket in the Berlin room (business hours Mon-Fri 09:00-17:00,
Europe/Berlin) on the next Monday: created, assigned, two customer messages,
an agent's answer, the SLA warning, the breach with its escalation, and the
resolution, which the customer gets by SMS (through the Twilio fake, started
here). Each step is the platform's write, then `supportd once notification
--now <that minute>`; the mails land in Mailpit.

usage: notification.py SUPPORTD MONGO_URL DATABASE MAILPIT_API_URL
"""
import json
import os
import subprocess
import sys
import urllib.request
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from bson import ObjectId
from pymongo import MongoClient

bin_, url, db_name, mailpit = sys.argv[1:5]
db = MongoClient(url, tz_aware=True)[db_name]
root = Path(__file__).resolve().parents[2]
berlin = db["conversation-room"].find_one({"name": "Berlin Support"})
anna = next(m for m in berlin["members"] if m["name"].startswith("Anna"))
petra = next(m for m in berlin["members"] if m["role"] == "manager")

fake = subprocess.Popen([sys.executable, str(root / "tests/fakes/provider_fake.py")],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
base = f"http://127.0.0.1:{int(fake.stdout.readline().split()[1])}"
env = dict(os.environ, TWILIO_API_BASE=base, TWILIO_ACCOUNT_SID="ACfake00000000000000000000000000",
           TWILIO_AUTH_TOKEN="fake-twilio-token-0000", LOG_LEVEL="warn")

tz = ZoneInfo("Europe/Berlin")
today = datetime.now(tz).date()
monday = today + timedelta(days=(7 - today.weekday()) % 7 or 7)
at = lambda hh, mm: datetime.combine(monday, time(hh, mm), tz).astimezone(timezone.utc)

def mailpit_count():
    with urllib.request.urlopen(mailpit + "/api/v1/messages?limit=1", timeout=10) as r:
        return json.load(r)["total"]

def tick(hh, mm, what):
    before = mailpit_count()
    now = at(hh, mm).strftime("%Y-%m-%dT%H:%M:%SZ")
    cp = subprocess.run([bin_, "once", "notification", "--now", now], env=env,
                        capture_output=True, text=True)
    if cp.returncode != 0:
        sys.exit(f"tick failed:\n{cp.stderr}")
    print(f"  {hh:02d}:{mm:02d} Berlin  {what}")
    with urllib.request.urlopen(mailpit + "/api/v1/messages?limit=50", timeout=10) as r:
        msgs = json.load(r)["messages"][: mailpit_count() - before]
    for m in reversed(msgs):
        print(f"      mail to {m['To'][0]['Address']:24} {m['Subject']}")

conv = db["conversation-conversation"]
oid = ObjectId()
print(f"  Monday {monday}, room Berlin Support (Mon-Fri 09:00-17:00 Europe/Berlin)")
conv.insert_one({"_id": oid, "room_id": berlin["_id"], "subject": "Parcel & invoice missing",
                 "channel": "sms", "status": "open", "priority": "urgent", "assignee_id": None,
                 "contact": {"name": "Lena Vogel", "phone": "+4915112345678"},
                 "created_at": at(9, 0), "updated_at": at(9, 0), "first_response_at": None,
                 "last_customer_message_at": at(9, 0), "last_agent_message_at": None,
                 "escalation_level": 0})
tick(9, 1, "new urgent ticket")
conv.update_one({"_id": oid}, {"$set": {"assignee_id": anna["user_id"], "assigned_by": petra["user_id"],
                                        "updated_at": at(9, 2)}})
tick(9, 3, "Petra assigns it to Anna")
for m in (4, 5):
    db["conversation-message"].insert_one({"_id": ObjectId(), "conversation_id": oid,
                                           "room_id": berlin["_id"], "direction": "inbound",
                                           "channel": "sms", "body": "hello?", "created_at": at(9, m)})
conv.update_one({"_id": oid}, {"$set": {"last_customer_message_at": at(9, 5), "updated_at": at(9, 5)}})
tick(9, 6, "the customer wrote twice (one mail)")
conv.update_one({"_id": oid}, {"$set": {"first_response_at": at(9, 10),
                                        "last_agent_message_at": at(9, 10), "updated_at": at(9, 10)}})
tick(9, 11, "Anna answers; resolution due 13:00 (240 business minutes)")
sla = conv.find_one({"_id": oid})["sla"]
next_due = db["conversation-notify-state"].find_one({"_id": oid})["sla"]["next_due"]
print(f"      sla: resolution_due {sla['resolution_due'].astimezone(tz):%H:%M} Berlin, "
      f"next_due {next_due.astimezone(tz):%H:%M}")
tick(12, 46, "inside the warning window")
tick(13, 1, "deadline passed")
print(f"      escalation_level {conv.find_one({'_id': oid})['escalation_level']}")
conv.update_one({"_id": oid}, {"$set": {"status": "resolved", "resolved_at": at(13, 30),
                                        "updated_at": at(13, 30)}})
tick(13, 31, "resolved: the customer is told by SMS")
with urllib.request.urlopen(base + "/_fake/sent", timeout=10) as r:
    for s in json.load(r)["twilio"]:
        print(f"      SMS to {s['to']} from {s['from']}: {s['body'][:70]!r}...")
fake.terminate()
