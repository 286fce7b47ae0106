"""Outbox delivery with QM_SUPPORT_EMAIL_PROVIDER=smtp through the real Mailpit
(SMTP_URL / MAILPIT_API_URL from the services): the message arrives once,
with Message-ID (= provider_message_id), Date, a UTF-8 subject decoded back
exactly, both MIME parts, and dot-stuffing done right."""

from __future__ import annotations

import email.utils
import json
import urllib.parse
import urllib.request
import uuid

import pytest

from fakes_fixtures import *  # noqa: F401,F403  (provider_fake, providers)


def mailpit(services, path: str):
    base = services.get("MAILPIT_API_URL")
    if not base:
        pytest.fail("MAILPIT_API_URL is not set: run scripts/services up", pytrace=False)
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return json.loads(r.read())


def messages_to(services, addr: str) -> list[dict]:
    q = urllib.parse.quote(f'to:"{addr}"')
    return mailpit(services, f"/api/v1/search?query={q}")["messages"]


@pytest.fixture
def smtp_env(services, providers):
    if not services.get("SMTP_URL"):
        pytest.fail("SMTP_URL is not set: run scripts/services up", pytrace=False)
    # Mailpit accepts any login: this exercises AUTH (and its redaction).
    return {"QM_SUPPORT_EMAIL_PROVIDER": "smtp", "SMTP_URL": services["SMTP_URL"],
            "SMTP_USER": "it-user"}


def test_entry_delivered_once_through_mailpit(services, providers, smtp_env):
    addr = f"it-{uuid.uuid4().hex[:12]}@example.org"
    subject = "Grüße aus Köln — Ticket #42 ✓ " + "ä" * 40  # long: several encoded-words
    text = "Hello Jürgen,\n.a line starting with a dot\n.\n..two dots\nBye"
    html = "<p>Hello J&uuml;rgen,</p>\n.<p>dot</p>"
    e = providers.entry("email", subject=subject, text=text, html=html,
                        recipient={"role": "agent", "name": "Jürgen Agent", "email": addr})
    cp = providers.run(**smtp_env)
    assert cp.returncode == 0, cp.stderr
    doc = providers.get(e)
    assert doc["status"] == "sent" and doc["provider"] == "smtp", doc
    mid = doc["provider_message_id"]
    assert mid and "@example.com" in mid

    found = messages_to(services, addr)
    assert len(found) == 1, found
    summary = found[0]
    assert summary["Subject"] == subject
    assert summary["MessageID"] == mid
    assert summary["To"] == [{"Name": "Jürgen Agent", "Address": addr}]
    assert summary["From"]["Address"] == "support@example.com"

    msg = mailpit(services, f"/api/v1/message/{summary['ID']}")
    # Line breaks travel as CRLF; the text itself, leading dots included, survives.
    assert msg["Text"].replace("\r\n", "\n").rstrip("\n") == text
    assert msg["HTML"].replace("\r\n", "\n").rstrip("\n") == html
    headers = mailpit(services, f"/api/v1/message/{summary['ID']}/headers")
    assert headers["Message-Id"] == [f"<{mid}>"]
    date = email.utils.parsedate_to_datetime(headers["Date"][0])
    assert date.tzinfo is not None
    assert headers["Subject"][0].startswith("=?UTF-8?B?")  # RFC 2047 on the wire
    assert any("multipart/" in v for v in headers["Content-Type"])

    # Nothing is sent twice.
    cp = providers.run(**smtp_env)
    assert cp.returncode == 0, cp.stderr
    assert len(messages_to(services, addr)) == 1


def test_smtp_text_only_and_html_only(services, providers, smtp_env):
    a = f"it-{uuid.uuid4().hex[:12]}@example.org"
    b = f"it-{uuid.uuid4().hex[:12]}@example.org"
    providers.entry("email", recipient={"role": "agent", "email": a}, html=None,
                    text="only text")
    providers.entry("email", recipient={"role": "agent", "email": b}, text=None,
                    html="<b>only html</b>")
    cp = providers.run(**smtp_env)
    assert cp.returncode == 0, cp.stderr
    ma = mailpit(services, f"/api/v1/message/{messages_to(services, a)[0]['ID']}")
    mb = mailpit(services, f"/api/v1/message/{messages_to(services, b)[0]['ID']}")
    assert ma["Text"].strip() == "only text" and ma["HTML"] == ""
    assert "<b>only html</b>" in mb["HTML"]

