"""The communication-check part of the demo: the seeded channels against the
provider fake (tests/fakes/provider_fake.py), in three acts — a low Twilio
balance and an unverified SendGrid domain beside a healthy SMTP channel; a
revoked SendGrid key; then a recovery that resolves every alert. Prints the
alerts after each act; the managers' mail lands in Mailpit.

usage: commcheck.py SUPPORTD_BIN MONGO_URL DATABASE
(the environment carries the rest of supportd's configuration)
"""
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[2]
bin_, url, db_name = sys.argv[1:4]
db = MongoClient(url, tz_aware=True)[db_name]

SID, TOKEN, KEY = "AC" + "d" * 32, "demo-twilio-token", "SG.demo-sendgrid-key"
fake = subprocess.Popen([sys.executable, str(ROOT / "tests/fakes/provider_fake.py")],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
base = f"http://127.0.0.1:{int(fake.stdout.readline().split()[1])}"


def control(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(req, timeout=10).read()


def domain(valid):
    return {"id": 42, "domain": "acme.example", "subdomain": "em42", "valid": valid, "default": False,
            "dns": {"mail_cname": {"valid": True, "type": "cname", "host": "em42.acme.example",
                                   "data": "u42.wl.sendgrid.net"},
                    "dkim1": {"valid": valid, "type": "cname", "host": "s1._domainkey.acme.example",
                              "data": "s1.domainkey.u42.wl.sendgrid.net"},
                    "dkim2": {"valid": True, "type": "cname", "host": "s2._domainkey.acme.example",
                              "data": "s2.domainkey.u42.wl.sendgrid.net"}}}


# The channels' webhooks point at the fake (it answers 404: an answer is what counts).
for ch in db["conversation-channel"].find():
    if ch.get("webhook_url"):
        db["conversation-channel"].update_one(
            {"_id": ch["_id"]}, {"$set": {"webhook_url": f"{base}/hooks/{ch['provider']}"}})
sms = db["conversation-channel"].find_one({"provider": "twilio"})
number = {"sid": "PN" + "1" * 32, "phone_number": sms["phone_number"], "status": "in-use",
          "capabilities": {"sms": True, "mms": False, "voice": True, "fax": False},
          "sms_url": f"{base}/hooks/twilio", "sms_application_sid": None}
control("/_fake/reset", {"twilio_sid": SID, "twilio_token": TOKEN, "sendgrid_key": KEY,
                         "balance": "12.40", "numbers": [number], "domains": [domain(False)]})

env = dict(os.environ, TWILIO_API_BASE=base, SENDGRID_API_BASE=base, TWILIO_ACCOUNT_SID=SID,
           TWILIO_AUTH_TOKEN=TOKEN, SENDGRID_API_KEY=KEY, LOG_LEVEL="warn")


def tick(title):
    print(f"\n  -- {title}")
    cp = subprocess.run([bin_, "once", "communication-check"], env=env, capture_output=True,
                        text=True, timeout=120)
    for line in cp.stderr.splitlines():
        print("    " + line)
    if cp.returncode != 0:
        sys.exit(f"supportd once communication-check exited {cp.returncode}")
    for a in db["conversation-alert"].find().sort("first_seen_at", 1):
        ch = db["conversation-channel"].find_one({"_id": a["channel_id"]}) or {}
        label = ch.get("phone_number") or ch.get("domain") or ch.get("from_email") or "?"
        print(f"    alert {a['status']:8} {a['severity']:8} {a['check']:17} {label:15} "
              f"x{a['occurrences']}  {a['message'][:90]}")


try:
    tick("act 1: Twilio balance 12.40 USD (warning below 20), acme.example's dkim1 record "
         "missing; the SMTP channel is healthy")
    control("/_fake/state", {"sendgrid_key": "SG.a-new-key-someone-made"})
    tick("act 2: the SendGrid key supportd uses was revoked")
    control("/_fake/state", {"sendgrid_key": KEY, "balance": "75.00", "domains": [domain(True)]})
    tick("act 3: recovery — key restored, balance topped up, DNS fixed")
    n = db["conversation-notification"].count_documents({"type": "channel.alert"})
    print(f"\n  {n} channel.alert mail(s) to the rooms' managers (see Mailpit)")
finally:
    fake.terminate()
    fake.wait(timeout=10)
