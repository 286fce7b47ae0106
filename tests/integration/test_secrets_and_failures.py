"""Secrets never appear in logs or errors (SPEC §1), and a tick whose database
is away fails cleanly (exit 1, a tick.end error line, no crash)."""

import signal
from urllib.parse import urlsplit

import pytest

from conftest import parse_log_lines

MONGO_PW = "S3cretPassw0rd"
OTHER_SECRETS = {
    "TWILIO_AUTH_TOKEN": "twTok9f8e7d6c5b4aQq",
    "SENDGRID_API_KEY": "SG.sgKey1a2b3c4d5e6fWw",
    "SMTP_PASSWORD": "smtpPwZx81Qw72Ee",
    "REDIS_PASSWORD": "redisPwLk55Mn66Rr",
}


def _assert_no_secret(text: str, secrets) -> None:
    low = text.lower()
    for s in secrets:
        assert s.lower() not in low, f"secret {s!r} appears in the output:\n{text}"


def _ferret_hostport(sd) -> str:
    return urlsplit(sd.mongo_url).netloc


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_secrets_not_logged_when_mongo_unreachable(sd, log_format):
    url = f"mongodb://user:{MONGO_PW}@127.0.0.1:1/{sd.db_name}?serverSelectionTimeoutMS=500"
    cp = sd.cli("once", "probe", MONGO_DB_URL=url, LOG_LEVEL="debug", LOG_FORMAT=log_format,
                SMTP_URL="smtp://127.0.0.1:1", **OTHER_SECRETS)
    assert cp.returncode == 1, (cp.returncode, cp.stderr)
    _assert_no_secret(cp.stdout + cp.stderr, [MONGO_PW, *OTHER_SECRETS.values()])


def test_secret_not_logged_when_mongo_rejects_auth(sd):
    """FerretDB (no auth configured) rejects the credentials: the failure is
    reported without the password."""
    url = f"mongodb://user:{MONGO_PW}@{_ferret_hostport(sd)}/{sd.db_name}?serverSelectionTimeoutMS=2000"
    cp = sd.cli("once", "probe", MONGO_DB_URL=url, LOG_LEVEL="debug", **OTHER_SECRETS)
    assert cp.returncode != 0 or "tick.end" in cp.stderr, cp.stderr
    _assert_no_secret(cp.stdout + cp.stderr, [MONGO_PW, *OTHER_SECRETS.values()])


def test_percent_encoded_password_not_logged(sd):
    raw, decoded = "S3cret%21Passw0rd", "S3cret!Passw0rd"
    url = f"mongodb://user:{raw}@127.0.0.1:1/{sd.db_name}?serverSelectionTimeoutMS=500"
    cp = sd.cli("once", "probe", MONGO_DB_URL=url, LOG_LEVEL="debug")
    assert cp.returncode == 1, cp.stderr
    _assert_no_secret(cp.stdout + cp.stderr, [raw, decoded])


def test_redis_password_not_logged_on_auth_error(sd):
    """Redis has no password: AUTH fails, every tick fails; the password the
    daemon sent is not in its logs (once and run)."""
    cp = sd.cli("once", "probe", LOG_LEVEL="debug", **OTHER_SECRETS)
    assert cp.returncode == 1, cp.stderr
    assert "tick.end" in cp.stderr, cp.stderr
    _assert_no_secret(cp.stdout + cp.stderr, OTHER_SECRETS.values())

    d = sd.probe_daemon(cron="* * * * * *", LOG_LEVEL="debug", **OTHER_SECRETS)
    d.wait_for("tick.end", job="probe", timeout=10)
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0, d.tail()
    _assert_no_secret(d.stderr() + d.stdout(), OTHER_SECRETS.values())
    # nor in what other instances can read (health hash)
    _assert_no_secret(repr(sd.health()), OTHER_SECRETS.values())


@pytest.mark.parametrize("url", [
    "mongodb://user:S3cretPassw0rd@/db",                              # empty host
    "mongodb://user:S3cretPassw0rd@host:notaport/db",                 # bad port
    "mongodb://user:S3cretPassw0rd@host/db?serverSelectionTimeoutMS=abc",
    "mongo://user:S3cretPassw0rd@host/db",                            # bad scheme
    "mongodb://user:S3cret%zzPassw0rd@host/db",                       # bad % escape
    "mongodb://user:S3cret@Passw0rd@127.0.0.1:1/db",                  # '@' not escaped
], ids=["empty-host", "bad-port", "bad-option", "bad-scheme", "bad-escape", "unescaped-at"])
def test_malformed_mongo_url_is_usage_error_without_password(sd, url):
    cp = sd.cli("once", "probe", MONGO_DB_URL=url, timeout=20)
    out = cp.stdout + cp.stderr
    # the password, and its distinctive halves (a bad URL may be split anywhere)
    _assert_no_secret(out, ["S3cretPassw0rd", "S3cret%zzPassw0rd", "Passw0rd"])
    assert cp.returncode == 2, (cp.returncode, out)
    assert "MONGO_DB_URL" in cp.stderr, cp.stderr


def test_once_with_mongo_away_fails_cleanly(sd):
    url = f"mongodb://127.0.0.1:1/{sd.db_name}?serverSelectionTimeoutMS=500"
    cp = sd.cli("once", "probe", MONGO_DB_URL=url, timeout=30)
    assert cp.returncode == 1, (cp.returncode, cp.stderr)
    events, other = parse_log_lines(cp.stderr)
    ends = [e for e in events if e.get("event") == "tick.end"]
    assert len(ends) == 1, f"expected one tick.end line:\n{cp.stderr}"
    assert ends[0].get("job") == "probe" and ends[0].get("level") == "error", ends[0]
    assert ends[0].get("outcome") == "error", ends[0]
    # the failure is recorded where status and other instances see it
    h = sd.health()
    assert h.get("last_result") == "error" and h.get("last_error"), h
    assert sd.lease() is None


def test_run_with_mongo_away_keeps_running(sd):
    url = f"mongodb://127.0.0.1:1/{sd.db_name}?serverSelectionTimeoutMS=500"
    d = sd.probe_daemon(cron="* * * * * *", MONGO_DB_URL=url)
    end = d.wait_for("tick.end", job="probe", timeout=20)
    assert end.get("outcome") == "error" and end.get("level") == "error", end
    assert d.alive()
    assert sd.health().get("last_result") == "error"
    assert d.terminate_and_wait() == 0, d.tail()
