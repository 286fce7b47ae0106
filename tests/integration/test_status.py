"""`supportd status`: the table, the liveness exit code, the lease holder."""

import re
import signal
from datetime import datetime, timezone

from conftest import now_ms

HEADER = ("JOB", "ENABLED", "SCHEDULE", "LAST RUN", "RESULT", "NEXT RUN", "LEASE HOLDER")


def _row(stdout: str, job: str) -> str:
    rows = [l for l in stdout.splitlines() if l.split() and l.split()[0] == job]
    assert len(rows) == 1, f"no single row for {job}:\n{stdout}"
    return rows[0]


def _iso_prefix(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def test_status_after_successful_once(sd):
    cp = sd.cli("once", "probe")
    assert cp.returncode == 0, cp.stderr
    h = sd.health()

    st = sd.cli("status", QM_SUPPORT_PROBE="true")
    assert st.returncode == 0, (st.stdout, st.stderr)
    header = st.stdout.splitlines()[0]
    for col in HEADER:
        assert col in header, header
    row = _row(st.stdout, "probe")
    assert re.search(r"\byes\b", row) and re.search(r"\bok\b", row), row
    assert _iso_prefix(int(h["last_start"])) in row, (row, h)
    assert "UNHEALTHY" not in st.stdout, st.stdout
    # the four product jobs are listed, disabled
    for job in ("snooze", "message-status", "notification", "communication-check"):
        assert re.search(r"\bno\b", _row(st.stdout, job)), st.stdout


def test_status_unhealthy_when_last_success_is_old(sd):
    old = now_ms() - 3600_000
    sd.redis.hset(sd.key("job:probe"), mapping={
        "last_start": old, "last_end": old + 5, "last_success": old + 5,
        "last_result": "ok", "last_error": "", "runs": 1, "failures": 0})
    st = sd.cli("status", QM_SUPPORT_PROBE="true")  # default */1 * * * *: 2 min window
    assert st.returncode == 1, (st.stdout, st.stderr)
    assert "UNHEALTHY" in st.stdout, st.stdout
    assert _iso_prefix(old) in _row(st.stdout, "probe")

    # The same hash is fine for a disabled job (status does not judge it) ...
    st = sd.cli("status")
    assert st.returncode == 0, (st.stdout, st.stderr)
    assert "UNHEALTHY" not in st.stdout

    # ... and a recent success is healthy.
    recent = now_ms() - 10_000
    sd.redis.hset(sd.key("job:probe"), mapping={
        "last_start": recent, "last_end": recent + 5, "last_success": recent + 5})
    st = sd.cli("status", QM_SUPPORT_PROBE="true")
    assert st.returncode == 0, (st.stdout, st.stderr)
    assert "UNHEALTHY" not in st.stdout


def test_status_shows_last_error(sd):
    t = now_ms() - 5_000
    sd.redis.hset(sd.key("job:probe"), mapping={
        "last_start": t, "last_end": t + 5, "last_success": t - 20_000,
        "last_result": "error", "last_error": "mongodb ping: boom-xyz", "runs": 2, "failures": 1})
    st = sd.cli("status", QM_SUPPORT_PROBE="true")
    assert st.returncode == 0, (st.stdout, st.stderr)
    assert re.search(r"\berror\b", _row(st.stdout, "probe")), st.stdout
    assert "boom-xyz" in st.stdout, st.stdout


def test_status_shows_lease_holder(sd):
    cp = sd.cli("once", "probe")  # a recent success: status is healthy meanwhile
    assert cp.returncode == 0, cp.stderr

    d = sd.probe_daemon(cron="* * * * * *", hold_ms=60000)
    start = d.wait_for("tick.start", job="probe")
    holder = sd.instance_of(d)
    assert start.get("instance") == holder

    st = sd.cli("status", QM_SUPPORT_PROBE="true")
    assert st.returncode == 0, (st.stdout, st.stderr)
    row = _row(st.stdout, "probe")
    assert row.split()[-1] == holder, f"lease holder {holder} not shown:\n{st.stdout}"
    assert re.search(r"\brunning\b", row), row

    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0, d.tail()
    st = sd.cli("status", QM_SUPPORT_PROBE="true")
    row = _row(st.stdout, "probe")
    assert holder not in row, f"lease still shown after shutdown:\n{st.stdout}"
    assert row.split()[-1] == "-", row


def test_status_redis_unreachable(sd):
    st = sd.cli("status", REDIS_PORT="1", timeout=20)
    assert st.returncode == 1, (st.stdout, st.stderr)
    assert "redis" in st.stderr.lower(), st.stderr
