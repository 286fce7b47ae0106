"""Fixtures for tests that make supportd talk to providers: the fake Twilio +
SendGrid server (tests/fakes/provider_fake.py), the provider environment with
per-test secrets, outbox entries inserted by hand, and the secret-leak check.

Import into a test module with `from fakes_fixtures import *` (the `sd`
fixture itself comes from conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from bson import ObjectId

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "fakes" / "provider_fake.py"
OUTBOX = "conversation-notification"

__all__ = ["provider_fake", "providers", "Fake", "Providers", "utcnow", "OUTBOX"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Fake:
    """Client of the fake's control API."""

    def __init__(self, base: str):
        self.base = base

    def _call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def reset(self, **state):
        return self._call("POST", "/_fake/reset", state or None)

    def fault(self, **f):
        return self._call("POST", "/_fake/faults", f)

    def state(self, **s):
        return self._call("POST", "/_fake/state", s)

    def message(self, **m):
        return self._call("POST", "/_fake/message", m)

    def requests(self, path: str = "") -> list[dict]:
        return self._call("GET", "/_fake/requests?path=" + path)

    def sent(self) -> dict:
        return self._call("GET", "/_fake/sent")


@pytest.fixture(scope="module")
def provider_fake():
    """The fake server, one per test module."""
    proc = subprocess.Popen([sys.executable, str(FAKE)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        pytest.fail(f"provider fake did not start: {line!r}", pytrace=False)
    fake = Fake(f"http://127.0.0.1:{int(line.split()[1])}")
    yield fake
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


class Providers:
    """One test's provider setup: fresh secrets the fake accepts, the
    environment that points supportd at the fake, and helpers."""

    def __init__(self, sd, fake: Fake):
        self.sd, self.fake = sd, fake
        u = uuid.uuid4().hex
        self.twilio_sid = "AC" + u[:32]
        self.secrets = {
            "TWILIO_AUTH_TOKEN": f"it-twilio-token-{u[:12]}",
            "SENDGRID_API_KEY": f"SG.it-sendgrid-key-{u[:12]}",
            "SMTP_PASSWORD": f"it-smtp-password-{u[:12]}",
        }
        fake.reset(twilio_sid=self.twilio_sid, twilio_token=self.secrets["TWILIO_AUTH_TOKEN"],
                   sendgrid_key=self.secrets["SENDGRID_API_KEY"])
        self.outputs: list[str] = []
        self.watch: list[str] = []  # more values that must never be printed

    def env(self, **overrides) -> dict:
        e = {
            "TWILIO_API_BASE": self.fake.base,
            "SENDGRID_API_BASE": self.fake.base,
            "TWILIO_ACCOUNT_SID": self.twilio_sid,
            "QM_SUPPORT_EMAIL_FROM": "support@example.com",
            "QM_SUPPORT_HTTP_TIMEOUT_MS": "2000",
            **self.secrets,
        }
        e.update(overrides)
        return e

    def run(self, *args: str, **overrides):
        """`supportd once outbox [args]` to completion; output kept for the
        secret check."""
        cp = self.sd.cli("once", "outbox", *args, timeout=90, **self.env(**overrides))
        self.outputs.append(cp.stdout + cp.stderr)
        return cp

    def start(self, name: str, **overrides):
        d = self.sd.start("once", "outbox", name=name, **self.env(**overrides))
        return d

    @property
    def coll(self):
        return self.sd.mongo_client[self.sd.db_name][OUTBOX]

    def entry(self, via: str = "email", key: str | None = None, **fields) -> dict:
        """Inserts one pending, due outbox entry by hand; returns it."""
        now = utcnow()
        doc = {"_id": ObjectId(), "key": key or f"test:{uuid.uuid4().hex}",
               "type": "ticket.created", "via": via, "status": "pending", "attempts": 0,
               "next_attempt_at": now - timedelta(seconds=1), "created_at": now,
               "updated_at": now}
        if via == "email":
            doc.update(recipient={"role": "agent", "user_id": "u1", "name": "Ann Agent",
                                  "email": "ann@example.org"},
                       subject="Ticket #42: new reply", text="Hello Ann,\n.a reply\n",
                       html="<p>Hello Ann,</p>")
        else:
            doc.update(recipient={"role": "customer", "phone": "+15551234567"},
                       from_="+15557654321", text="Your ticket #42 was updated.",
                       status_callback="https://hooks.example.com/twilio")
            doc["from"] = doc.pop("from_")
        doc.update(fields)
        self.coll.insert_one(doc)
        return doc

    def get(self, doc: dict) -> dict:
        return self.coll.find_one({"_id": doc["_id"]})

    def assert_no_secrets(self, *texts: str):
        values = [*self.secrets.items(), *(("a watched secret", v) for v in self.watch)]
        for text in (*self.outputs, *texts):
            for name, value in values:
                assert value not in text, f"{name} appears in supportd's output:\n{text[-3000:]}"


@pytest.fixture
def providers(sd, provider_fake):
    p = Providers(sd, provider_fake)
    yield p
    # Every test: no secret in anything supportd printed.
    p.assert_no_secrets()
