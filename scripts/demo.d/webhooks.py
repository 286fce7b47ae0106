"""Appends signed delivery webhooks for the demo's messages to the
`status-events` stream, as the platform's webhook endpoint would (SPEC §2):
Twilio callbacks signed with twilio's RequestValidator, a SendGrid event
batch signed with ECDSA P-256, one late (out-of-order) event, one duplicate
and one forged callback. Prints the SendGrid public key to verify with.

usage: webhooks.py MONGO_URL DATABASE REDIS_HOST REDIS_PORT PREFIX TWILIO_TOKEN
"""
import base64
import json
import sys
import time
from urllib.parse import urlencode

import redis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pymongo import MongoClient
from twilio.request_validator import RequestValidator

url, db_name, rhost, rport, prefix, token = sys.argv[1:7]
db = MongoClient(url)[db_name]
r = redis.Redis(host=rhost, port=int(rport))
stream = prefix + "status-events"
hook = "https://hooks.acme.example/twilio"
v = RequestValidator(token)
key = ec.generate_private_key(ec.SECP256R1())
public = base64.b64encode(key.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
now = int(time.time())


def twilio(sid, status, forged=False, **extra):
    p = {"AccountSid": "AC" + "d" * 32, "MessageSid": sid, "MessageStatus": status,
         "ApiVersion": "2010-04-01", **extra}
    sig = (RequestValidator("guessed-token") if forged else v).compute_signature(hook, p)
    r.xadd(stream, {"provider": "twilio", "body": urlencode(p), "url": hook, "signature": sig,
                    "timestamp": "", "received_at": str(now * 1000)})


pending = {"status": "sent"}
sms = [m["provider_message_id"] for m in db["conversation-message"].find({**pending, "provider": "twilio"})]
mail = [m["provider_message_id"] for m in db["conversation-message"].find({**pending, "provider": "sendgrid"})]
if sms:
    twilio(sms[0], "delivered")
    twilio(sms[0], "sent")          # late: arrives after delivered, recorded only
    twilio(sms[0], "delivered")     # Twilio's retry: a duplicate
    twilio(sms[0], "read", forged=True)  # not signed by Twilio: rejected
for sid in sms[1:2]:
    twilio(sid, "undelivered", ErrorCode="30006")  # landline: never retried (retry.lua)
events = []
for i, mid in enumerate(mail[:3]):
    events.append({"email": "customer@example.org", "timestamp": now - 60, "event": "delivered",
                   "sg_event_id": f"demo-delivered-{i}", "sg_message_id": f"{mid}.filter0001.1.0"})
    if i == 0:
        events.append({"email": "customer@example.org", "timestamp": now - 30, "event": "open",
                       "sg_event_id": "demo-open-0", "sg_message_id": f"{mid}.filter0001.1.0"})
if events:
    payload = json.dumps(events) + "\r\n"
    ts = str(now)
    sig = base64.b64encode(key.sign((ts + payload).encode(), ec.ECDSA(hashes.SHA256()))).decode()
    r.xadd(stream, {"provider": "sendgrid", "body": payload, "url": "", "signature": sig,
                    "timestamp": ts, "received_at": str(now * 1000)})
print(public)
