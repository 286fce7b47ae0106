"""`dry-run --preview OUT` and Mailpit's web UI, looked at in a real browser
(headless Chromium, tests/integration/browser.py): the preview index and a
planned mail show their subjects and recipients, customer-supplied markup
renders as text, SMS plans carry their segment count, a bad OUT is a usage
error; a planned mail sent by supportd through Mailpit shows in Mailpit's UI.

UPDATE_SCREENSHOT=1 copies the mail screenshot to tests/fixtures/preview-mail.png (the
README's picture)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from browser import Dom, assert_not_blank, chromium
from conftest import REPO, supportd_preload
from fakes_fixtures import *  # noqa: F401,F403  (provider_fake, providers)
from test_dry_run import BIN

def run(*args, rules=REPO / "rules", cwd=None):
    """supportd with no reachable database or Redis (dry-run touches neither)."""
    env = {"PATH": os.environ["PATH"], "QM_SUPPORT_RULES_DIR": str(rules),
           "MONGO_DB_URL": "mongodb://127.0.0.1:1/none", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "1"}
    if supportd_preload():
        env["LD_PRELOAD"] = supportd_preload()
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=cwd)


SHIPPED = REPO / "rules" / "fixtures"
NOW = "2026-03-02T09:00:00Z"
HOSTILE = '<script>alert(1)</script> "><img src=x onerror=alert(2)> & Co'


def emails_of(plan: dict) -> list[dict]:
    """Every planned outbox entry of every job, wherever the job keeps it."""
    found = []

    def walk(o):
        if isinstance(o, dict):
            if isinstance(o.get("key"), str) and isinstance(o.get("via"), str):
                found.append(o)
                return
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    for job in plan["jobs"].values():
        walk(job)
    return found


def preview(out: Path, fixtures: Path = SHIPPED, rules: Path = REPO / "rules", cwd=None):
    cp = run("dry-run", "--fixtures", str(fixtures), "--preview", str(out), rules=rules, cwd=cwd)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout), cp


def snoozed_fixtures(d: Path, convs: list[dict]) -> Path:
    """A fixture set: one room (two agents, a manager) and snoozed tickets,
    each due, with the given fields."""
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"now": NOW}))
    room = {"_id": {"$oid": "65e2f0000000000000000001"}, "name": "Berlin Support",
            "members": [{"user_id": {"$oid": "65e2f0000000000000000011"}, "name": "Anna Weber",
                         "email": "anna@acme.example", "role": "agent"}],
            "email_from": "support@acme.example"}
    (d / "conversation-room.json").write_text(json.dumps([room]))
    docs = []
    for i, fields in enumerate(convs):
        doc = {"_id": {"$oid": f"65e2f0000000000000000{300 + i}"},
               "room_id": {"$oid": "65e2f0000000000000000001"}, "subject": "Ticket",
               "channel": "email", "status": "snoozed", "priority": "normal",
               "assignee_id": {"$oid": "65e2f0000000000000000011"},
               "contact": {"name": "Eva Wolf", "email": "eva@example.org", "phone": None},
               "created_at": {"$date": "2026-02-28T09:00:00Z"},
               "updated_at": {"$date": "2026-02-28T09:00:00Z"},
               "snooze": {"until": {"$date": "2026-03-02T08:00:00Z"}, "original_status": "open",
                          "original_priority": "high", "at": {"$date": "2026-03-01T09:00:00Z"}}}
        doc.update(fields)
        docs.append(doc)
    (d / "conversation-conversation.json").write_text(json.dumps(docs))
    return d


def test_preview_index_and_one_mail_in_a_browser(tmp_path):
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    out.mkdir()
    cwd.mkdir()
    before = sorted(p.name for p in SHIPPED.iterdir())
    plan, cp = preview(out, cwd=cwd)
    mails = [e for e in emails_of(plan) if e["via"] == "email"]
    jobs = {j for j, body in plan["jobs"].items() if emails_of({"jobs": {j: body}})}
    assert len(mails) >= 2 and {"snooze", "communication-check"} <= jobs
    assert f"preview of {len(mails)} email(s)" in cp.stderr
    # Only OUT is written: one file per mail and the index; fixtures untouched.
    files = sorted(p.name for p in out.iterdir())
    assert files == ["index.html"] + [f"mail-{i:03d}.html" for i in range(1, len(mails) + 1)]
    assert sorted(p.name for p in SHIPPED.iterdir()) == before and not any(cwd.iterdir())

    index = Dom(chromium((out / "index.html").as_uri()))
    links = [a["href"] for a in index.elements("a")]
    assert sorted(links) == files[1:]
    for m in mails:
        assert m["subject"] in index.text and m["recipient"]["email"] in index.text
        assert m["key"] in index.text
    # grouped by job, then type: the headings, in the plan's job order
    page = (out / "index.html").read_text()
    assert re.findall(r"<h2>(.*?)</h2>", page) == [j for j in plan["jobs"] if j in jobs]
    index_shot = tmp_path / "index.png"
    chromium((out / "index.html").as_uri(), screenshot=index_shot)
    assert_not_blank(index_shot)

    # The mail the index links first: the one whose outbox key its row names.
    row = re.search(r'<a href="mail-001.html">.*?</a></td><td><code>(.*?)</code>', page)
    m = next(m for m in mails if m["key"] == html.unescape(row.group(1)))
    first = (out / "mail-001.html").as_uri()
    dom = Dom(chromium(first))
    for value in (m["subject"], m["recipient"]["email"], m["recipient"]["name"], m["from"],
                  m["type"], m["key"], "snooze" if "snooze" in m["key"] else m["type"]):
        assert value in dom.text, value
    # the HTML part as rendered, and the text part below it
    assert Dom(m["html"]).text in dom.text
    assert " ".join(m["text"].split()) in dom.text
    shot = tmp_path / "mail.png"
    chromium(first, screenshot=shot, size="800,520")
    assert_not_blank(shot)
    if os.environ.get("UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, REPO / "tests" / "fixtures" / "preview-mail.png")


def test_blank_page_fails_the_screenshot_check(tmp_path):
    # The check above would catch a page that rendered nothing.
    page = tmp_path / "blank.html"
    page.write_text("<!doctype html><body style='background:#fff'></body>")
    shot = tmp_path / "blank.png"
    chromium(page.as_uri(), screenshot=shot, size="400,300")
    with pytest.raises(AssertionError, match="looks blank"):
        assert_not_blank(shot)


def test_hostile_subject_renders_as_text(tmp_path):
    fx = snoozed_fixtures(tmp_path / "fx", [{"subject": HOSTILE,
                                             "contact": {"name": '"><b>Eve</b>', "email": "e@x.org"}}])
    out = tmp_path / "out"
    out.mkdir()
    plan, _ = preview(out, fx)
    (m,) = emails_of(plan)
    assert HOSTILE in m["subject"]
    for page in ("mail-001.html", "index.html"):
        dom = Dom(chromium((out / page).as_uri()))
        # the markup is text: no element came of it, and it reads as typed
        assert not dom.elements("script") and not dom.elements("img") and not dom.elements("b")
        assert not any("onerror" in attrs for _, attrs in dom.tags)
        assert HOSTILE in dom.text, dom.text
    assert '"><b>Eve</b>' in Dom(chromium((out / "mail-001.html").as_uri())).text


def gsm_segments(text: str) -> tuple[int, str]:
    """The expected count, computed independently of supportd's code."""
    basic = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
             "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
    ext = "\f^{}\\[~]|€"
    if all(c in basic or c in ext for c in text):
        units = [2 if c in ext else 1 for c in text]
        single, part, enc = 160, 153, "GSM-7"
    else:
        units = [2 if ord(c) > 0xFFFF else 1 for c in text]
        single, part, enc = 70, 67, "UCS-2"
    if sum(units) <= single:
        return 1, enc
    n, used = 1, 0
    for u in units:
        if used + u > part:
            n, used = n + 1, 0
        used += u
    return n, enc


def test_sms_plans_in_the_index_with_segment_counts(tmp_path):
    # Rules where the woken ticket's customer is told by SMS, the text being
    # the subject alone, so each text is exactly what the test chose.
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("fixtures"))
    for name, extra in (("notify.lua", 'M.routes["ticket.unsnoozed"] = "customer"\n'),
                        ("templates.lua", 'T["ticket.unsnoozed"].text = "{{conversation.subject}}"\n')):
        src = (rules / name).read_text()
        assert src.rstrip().endswith("return M")
        (rules / name).write_text(src.rstrip()[:-len("return M")] + extra + "M.tests = {}\nreturn M\n")
    texts = ["a" * 160, "a" * 161, "€" * 80, "[" * 81 + "x", "Grüße ✓" + "b" * 63,
             "✓" * 71, "😀" * 35, "😀" * 36, "ok " * 200]
    fx = snoozed_fixtures(tmp_path / "fx", [
        {"subject": t, "channel": "sms", "contact": {"name": "Eva", "phone": f"+49176{i:07d}"}}
        for i, t in enumerate(texts)])
    out = tmp_path / "out"
    out.mkdir()
    plan, cp = preview(out, fx, rules)
    sms = [e for e in emails_of(plan) if e["via"] == "sms"]
    assert sorted(e["text"] for e in sms) == sorted(texts)
    assert "0 email(s) and %d SMS" % len(texts) in cp.stderr
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]  # no mail files for SMS
    page = (out / "index.html").read_text()
    rows = re.findall(r"<tr><td>sms</td><td>(.*?)</td><td><pre>(.*?)</pre>"
                      r"<div class=\"segments\">(\d+) segments? \((GSM-7|UCS-2)\)</div>", page, re.S)
    assert len(rows) == len(texts)
    for _to, text, n, enc in rows:
        t = html.unescape(text)
        assert t in texts
        assert (int(n), enc) == gsm_segments(t), t
    # the carriers' boundaries, so the test's own counter is checked too
    assert [gsm_segments(t) for t in texts[:4]] == [(1, "GSM-7"), (2, "GSM-7"), (1, "GSM-7"),
                                                    (2, "GSM-7")]
    assert [gsm_segments(t) for t in texts[5:8]] == [(2, "UCS-2"), (1, "UCS-2"), (2, "UCS-2")]


def test_missing_or_unwritable_preview_folder_is_a_usage_error(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    # /proc/self: a folder nobody can create files in, root included
    for out, why in ((tmp_path / "missing", "No such file"), (a_file, "not a directory"),
                     (Path("/proc/self"), "not writable")):
        cp = run("dry-run", "--fixtures", str(SHIPPED), "--preview", str(out))
        assert cp.returncode == 2, (out, cp.stderr)
        assert f"--preview {out}" in cp.stderr and why in cp.stderr, cp.stderr
        assert cp.stdout == ""
    assert not (tmp_path / "missing").exists()
    cp = run("dry-run", "--fixtures", str(SHIPPED), "--preview")
    assert cp.returncode == 2 and "--preview needs a value" in cp.stderr


def test_preview_files_are_private_and_never_follow_links(tmp_path):
    """Issue 22: the preview holds customer data: files are 0600 whatever the
    umask, and a symbolic link planted under a preview file's name is replaced,
    never written through."""
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (out / "index.html").symlink_to(victim)
    (out / "mail-001.html").symlink_to(victim)
    old = os.umask(0o022)
    try:
        cp = run("dry-run", "--fixtures", str(SHIPPED), "--preview", str(out))
    finally:
        os.umask(old)
    assert cp.returncode == 0, cp.stderr
    assert victim.read_text() == "untouched"
    files = list(out.iterdir())
    assert files and (out / "index.html") in files
    for f in files:
        assert not f.is_symlink(), f
        mode = f.stat().st_mode & 0o777
        assert mode == 0o600, f"{f.name} has mode {mode:o}"
    # Re-running into the same folder replaces the files.
    cp = run("dry-run", "--fixtures", str(SHIPPED), "--preview", str(out))
    assert cp.returncode == 0, cp.stderr


# ---------------------------------------------------------------- Mailpit's UI ----

def mailpit(services, path: str):
    with urllib.request.urlopen(services["MAILPIT_API_URL"] + path, timeout=10) as r:
        return json.loads(r.read())


def test_mailpit_ui_shows_a_planned_mail_sent_through_it(tmp_path, services, providers):
    if not services.get("SMTP_URL") or not services.get("MAILPIT_API_URL"):
        pytest.fail("SMTP_URL/MAILPIT_API_URL not set: run scripts/services up", pytrace=False)
    out = tmp_path / "out"
    out.mkdir()
    plan, _ = preview(out)
    m = next(e for e in emails_of(plan) if e["via"] == "email")
    addr = f"it-{uuid.uuid4().hex[:12]}@example.org"  # finds this test's message
    providers.entry("email", type=m["type"], subject=m["subject"], text=m["text"], html=m["html"],
                    recipient={**m["recipient"], "email": addr})
    cp = providers.run(QM_SUPPORT_EMAIL_PROVIDER="smtp", SMTP_URL=services["SMTP_URL"])
    assert cp.returncode == 0, cp.stderr
    q = urllib.parse.quote(f'to:"{addr}"')
    (summary,) = mailpit(services, f"/api/v1/search?query={q}")["messages"]
    # as previewed: the same HTML part arrives
    sent = mailpit(services, f"/api/v1/message/{summary['ID']}")
    assert sent["HTML"].replace("\r\n", "\n").rstrip("\n") == m["html"]

    page = f"{services['MAILPIT_API_URL']}/view/{summary['ID']}"
    dom = Dom(chromium(page, budget_ms=5000))
    assert m["subject"] in dom.text and addr in dom.text, dom.text[:2000]
    assert "Mailpit" in dom.text  # the web UI itself, not the placeholder of a UI-less build
    shot = tmp_path / "mailpit.png"
    chromium(page, screenshot=shot, size="1100,700", budget_ms=5000)
    assert_not_blank(shot)
