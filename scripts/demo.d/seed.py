"""Seeds a small, realistic support data set into a MongoDB database.

Two rooms with agents and managers, conversations in every status (including
snoozes that are due, long overdue, and in the future), their messages, and
the rooms' SMS and email channels. Times are relative to now so the demo shows
the same picture whenever it runs.

usage: seed.py MONGO_URL DATABASE
"""
import sys
from datetime import datetime, timedelta, timezone

from bson import ObjectId
from pymongo import MongoClient

url, db_name = sys.argv[1], sys.argv[2]
db = MongoClient(url)[db_name]
for name in db.list_collection_names():
    db.drop_collection(name)

now = datetime.now(timezone.utc).replace(microsecond=0)
ago = lambda **kw: now - timedelta(**kw)

def member(name, role):
    first = name.split()[0].lower()
    return {"user_id": ObjectId(), "name": name, "email": f"{first}@acme.example", "role": role}

# SPEC §2 writes business hours as nested arrays ([["09:00","17:00"]]); FerretDB
# 1.x rejects nested arrays, so on it they are written as {from, to} objects
# (README, Compatibility).
berlin = {"_id": ObjectId(), "name": "Berlin Support", "timezone": "Europe/Berlin",
          "business_hours": {d: [{"from": "09:00", "to": "17:00"}]
                             for d in ("mon", "tue", "wed", "thu", "fri")},
          "members": [member("Anna Weber", "agent"), member("Jonas Klein", "agent"),
                      member("Petra Hoffmann", "manager")],
          "email_from": "support@acme.example", "sla_policy": "default"}
newyork = {"_id": ObjectId(), "name": "New York Sales", "timezone": "America/New_York",
           "business_hours": None,
           "members": [member("Maria Lopez", "agent"), member("Sam Carter", "manager")],
           "email_from": "sales@acme.example", "sla_policy": "default"}
db["conversation-room"].insert_many([berlin, newyork])

def conv(room, subject, status, priority, channel, contact, created, assignee=None, snooze=None, **extra):
    doc = {"_id": ObjectId(), "room_id": room["_id"], "subject": subject, "channel": channel,
           "status": status, "priority": priority,
           "assignee_id": assignee["user_id"] if assignee else None, "contact": contact,
           "created_at": created, "updated_at": extra.pop("updated_at", created),
           "first_response_at": None, "resolved_at": None,
           "last_customer_message_at": created, "last_agent_message_at": None,
           "escalation_level": 0}
    if snooze:
        doc["snooze"] = snooze
    doc.update(extra)
    return doc

anna, jonas, maria = berlin["members"][0], berlin["members"][1], newyork["members"][0]
c = lambda n, e, p: {"name": n, "email": e, "phone": p}
convs = [
    conv(berlin, "Invoice 2291 charged twice", "open", "high", "email",
         c("Lena Fischer", "lena@example.org", "+4915112345678"), ago(hours=2), anna),
    conv(berlin, "Cannot reset my password", "pending", "normal", "chat",
         c("Tom Becker", "tom@example.org", None), ago(hours=5), jonas),
    conv(berlin, "Delivery still not here", "snoozed", "normal", "sms",
         c("Eva Wolf", None, "+4917612345678"), ago(days=2), anna,
         snooze={"until": ago(minutes=3), "original_priority": "high",
                 "original_status": "open", "by": anna["user_id"], "at": ago(days=1)}),
    conv(berlin, "Refund for order 7781", "snoozed", "low", "email",
         c("Karl Braun", "karl@example.org", None), ago(days=14), None,
         snooze={"until": ago(days=10), "original_priority": "urgent",
                 "original_status": "pending", "by": jonas["user_id"], "at": ago(days=12)}),
    conv(berlin, "Question about the API limits", "snoozed", "normal", "email",
         c("Mia Schulz", "mia@example.org", None), ago(days=1), jonas,
         snooze={"until": now + timedelta(days=2), "original_priority": "normal",
                 "original_status": "open", "by": jonas["user_id"], "at": ago(hours=3)},
         last_customer_message_at=ago(minutes=20)),
    conv(berlin, "Change of billing address", "resolved", "low", "email",
         c("Paul Neumann", "paul@example.org", None), ago(days=3), anna,
         resolved_at=ago(days=1), first_response_at=ago(days=3, hours=-1)),
    conv(newyork, "Quote for 50 seats", "open", "urgent", "email",
         c("Olivia Smith", "olivia@example.com", "+12125550123"), ago(minutes=40)),
    conv(newyork, "Trial extension", "snoozed", "normal", "sms",
         c("Noah Brown", None, "+13475550199"), ago(days=4), maria,
         snooze={"until": now + timedelta(hours=6), "original_priority": "normal",
                 "original_status": "open", "by": maria["user_id"], "at": ago(hours=1)}),
    conv(newyork, "Contract signed, thanks", "closed", "normal", "email",
         c("Emma Davis", "emma@example.com", None), ago(days=9), maria,
         resolved_at=ago(days=8)),
]
db["conversation-conversation"].insert_many(convs)

messages = []
for cv in convs:
    if cv["channel"] == "chat":
        continue
    sms = cv["channel"] == "sms"
    sent = cv["created_at"] + timedelta(minutes=5)
    status = "delivered" if cv["status"] in ("resolved", "closed") else "sent"
    messages.append({
        "_id": ObjectId(), "conversation_id": cv["_id"], "room_id": cv["room_id"],
        "direction": "outbound", "channel": cv["channel"],
        "provider": "twilio" if sms else "sendgrid",
        "provider_message_id": ("SM" if sms else "") + ObjectId().binary.hex()[:24],
        "to": cv["contact"]["phone"] if sms else cv["contact"]["email"],
        "from": "+4930555000" if sms else "support@acme.example",
        "subject": None if sms else "Re: " + cv["subject"],
        "body": "Thanks for reaching out, we are on it.", "status": status,
        "status_history": [{"status": "queued", "at": sent, "source": "send"},
                           {"status": "sent", "at": sent, "source": "webhook"}],
        "error": None, "attempts": 1, "next_retry_at": None, "final": status == "delivered",
        "sent_at": sent, "delivered_at": None, "read_at": None, "failed_at": None,
        "created_at": sent, "updated_at": sent})
db["conversation-message"].insert_many(messages)

db["conversation-channel"].insert_many([
    {"_id": ObjectId(), "room_id": berlin["_id"], "type": "sms", "provider": "twilio",
     "phone_number": "+4930555000", "account_sid": None, "from_email": None, "domain": None,
     "webhook_url": "https://hooks.acme.example/twilio", "active": True},
    {"_id": ObjectId(), "room_id": berlin["_id"], "type": "email", "provider": "sendgrid",
     "phone_number": None, "from_email": "support@acme.example", "domain": "acme.example",
     "webhook_url": "https://hooks.acme.example/sendgrid", "active": True},
    {"_id": ObjectId(), "room_id": newyork["_id"], "type": "email", "provider": "smtp",
     "phone_number": None, "from_email": "sales@acme.example", "domain": "acme.example",
     "webhook_url": None, "active": True},
])
print(f"seeded {db_name}: 2 rooms, {len(convs)} conversations, {len(messages)} messages, 3 channels")
