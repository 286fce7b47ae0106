"""The platform's writes to a conversation survive supportd's writes to it.

FerretDB 1.24 on PostgreSQL runs an update as read-modify-write: it SELECTs the
document, applies the operators in Go, then writes the whole document back with
`UPDATE <table> SET _jsonb = $1 WHERE _jsonb->'_id' = $2`
(internal/backends/postgresql/collection.go, UpdateAll), with no compare-and-swap.
A platform write landing between the two is overwritten by supportd's copy
(/work/shared/reference/ferretdb.md, Summary).

The interleaving is made deterministic through PostgreSQL: a psql session locks
the conversation's row (SELECT ... FOR UPDATE). FerretDB's read does not wait for
that lock, its UPDATE does. Once supportd's UPDATE of the row waits for the lock,
or supportd has exited without writing the conversation, the platform's write is
made in the locking transaction and committed.

A tick that changes SPEC §2's view of the conversation (the first decision of a
new ticket, a deadline moved, an escalation) must still write it, and can still
revert a platform write landing inside that update: only the ticks that have
nothing of that view to write are made safe.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import DEFAULT_TIMEOUT, wait_until
from test_notification import T0, installed, ms, world  # noqa: F401  (world: the fixture)
from fakes_fixtures import *  # noqa: F401,F403

CONV = "conversation-conversation"
LOCK_WAIT = 60.0  # for supportd to reach its write of the conversation, or to finish


def psql_bin() -> str:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "psql").exists():
            return str(d / "psql")
    return shutil.which("psql") or pytest.fail("psql not found", pytrace=False)


def literal(value) -> str:
    """A value as FerretDB 1.24 stores it in _jsonb: a string as a JSON string, a
    date as its milliseconds (the type lives in the document's "$s" schema)."""
    if isinstance(value, str):
        return "to_jsonb('" + value.replace("'", "''") + "'::text)"
    if isinstance(value, datetime):
        return f"to_jsonb({ms(value)}::bigint)"
    raise TypeError(f"no _jsonb encoding for {value!r}")


def schema_type(value) -> str:
    return "string" if isinstance(value, str) else "date"


class Psql:
    """One psql session kept open, so that a transaction spans several calls."""

    MARK = "@@psql-done@@"

    def __init__(self, url: str, stderr_path: Path):
        self.stderr_path = stderr_path
        self._err = open(stderr_path, "w")
        self.proc = subprocess.Popen([psql_bin(), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, text=True, bufsize=1)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _gone(self, sql: str) -> AssertionError:
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = "still running"
        return AssertionError(f"psql exited ({rc}) on {sql!r}:\n{self.stderr_path.read_text()}")

    def run(self, sql: str, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
        """The rows (lines, columns split by |) of one statement."""
        try:
            self.proc.stdin.write(sql.rstrip().rstrip(";") + ";\n\\echo " + self.MARK + "\n")
            self.proc.stdin.flush()
        except OSError:
            raise self._gone(sql) from None
        out, deadline = [], time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"psql: no answer to {sql!r} within {timeout:.0f}s") from None
            if line is None:
                raise self._gone(sql)
            if line == self.MARK:
                return out
            out.append(line)

    def close(self):
        """Ends the session; a transaction still open is rolled back."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("ROLLBACK;\n\\q\n")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._err.close()


@pytest.fixture
def pg(services, tmp_path):
    """Opens psql sessions on FerretDB's PostgreSQL; all are rolled back and closed
    in teardown (before the `sd` fixture drops the database, which the row lock
    would block)."""
    url = services.get("POSTGRES_URL") or os.environ.get("POSTGRES_URL")
    if not url:
        pytest.fail("POSTGRES_URL unknown: restart the services (scripts/services down; up) so that "
                    ".services.env names FerretDB's PostgreSQL", pytrace=False)
    sessions: list[Psql] = []

    def session() -> Psql:
        s = Psql(url, tmp_path / f"psql{len(sessions)}.stderr")
        sessions.append(s)
        return s
    yield session
    for s in sessions:
        s.close()


def mailpit_subjects(sd, to: str) -> list[str]:
    q = urllib.request.quote(f'to:"{to}"')
    with urllib.request.urlopen(f"{sd.services['MAILPIT_API_URL']}/api/v1/search?query={q}",
                                timeout=10) as r:
        return [m["Subject"] for m in json.load(r)["messages"]]


def smtp(world) -> dict:
    return {"QM_SUPPORT_EMAIL_PROVIDER": "smtp", "SMTP_URL": world.sd.services["SMTP_URL"]}


def platform_write_inside_tick(world, pg, oid, at: datetime, write: dict, name: str, **env):
    """Runs `supportd once notification --now at` while a psql session holds the
    row lock of conversation `oid`; when supportd's UPDATE of that row waits for
    the lock, or supportd has exited, makes the platform's write (field -> new
    string or date) in the locking transaction and commits. Returns (the daemon,
    its exit code, whether supportd's UPDATE had waited for the lock)."""
    holder, monitor = pg(), pg()
    db = world.sd.db_name
    table = monitor.run(f"SELECT _jsonb->>'table' FROM \"{db}\"._ferretdb_database_metadata "
                        f"WHERE _jsonb->>'_id' = '{CONV}'")
    assert len(table) == 1, f"no FerretDB table for {db}.{CONV}: {table}"
    table = table[0]
    target = f'"{db}"."{table}"'
    where = f"WHERE _jsonb->'_id' = to_jsonb('{oid}'::text)"  # an ObjectId is stored as its hex
    types = ", ".join(f"_jsonb #>> '{{$s,p,{f},t}}'" for f in write)
    holder_pid = holder.run("SELECT pg_backend_pid()")[0]
    holder.run("BEGIN")
    try:
        locked = holder.run(f"SELECT {types} FROM {target} {where} FOR UPDATE")
        # the platform's new values are of the types the document's schema records
        assert locked == ["|".join(schema_type(v) for v in write.values())], (locked, write)
        d = world.start(at, name, **env)

        def waiting():
            rows = monitor.run("SELECT pid, translate(query, E'\\n', ' ') FROM pg_stat_activity "
                               f"WHERE {holder_pid} = ANY(pg_blocking_pids(pid))")
            for r in rows:
                assert r.split("|", 1)[1].lstrip().startswith("UPDATE") and table in r, (
                    f"a backend waits for the platform's row lock with another statement: {r}")
            return bool(rows)
        try:
            blocked = wait_until(lambda: waiting() or (not d.alive() and "exited"), LOCK_WAIT, 0.02,
                                 "supportd's UPDATE of the conversation to wait for the platform's "
                                 "row lock, or supportd to exit")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- {name} stderr ---\n{d.tail()}") from None
        sets = "_jsonb"
        for f, v in write.items():
            sets = f"jsonb_set({sets}, '{{{f}}}', {literal(v)})"
        assert holder.run(f"WITH w AS (UPDATE {target} SET _jsonb = {sets} {where} RETURNING 1) "
                          "SELECT count(*) FROM w") == ["1"]
        holder.run("COMMIT")
    except BaseException:
        holder.close()  # rolls back: a blocked supportd goes on, and teardown can drop the database
        raise
    rc = d.wait_exit(90)
    world.p.outputs.append(d.stdout() + d.stderr())
    return d, rc, blocked is True


def test_a_platform_write_landing_inside_a_warning_ticks_update_is_kept(world, pg):
    """A tick that only warns of the SLA has nothing of SPEC §2's view to write
    (sla.policy/first_response_due/resolution_due, escalation_level): the
    platform's write made while that tick runs stays."""
    installed(world)
    t = world.ticket(T0, priority="urgent", assignee_id=world.anna["user_id"],
                     first_response_at=T0, last_agent_message_at=T0)  # resolution due in 240
    world.tick(T0 + timedelta(minutes=1), **smtp(world))
    assert world.conv(t)["sla"]["resolution_due"] == T0 + timedelta(minutes=240)
    assert world.outbox(t, "ticket.sla_warning") == []

    at = T0 + timedelta(minutes=226)  # inside the 15 minutes' warning window, not breached
    subject = f"Printer fixed? {world.tag}"
    write = {"status": "pending", "subject": subject, "updated_at": at}
    d, rc, blocked = platform_write_inside_tick(world, pg, t, at, write, "warning-tick", **smtp(world))
    assert rc == 0, d.tail()
    conv = world.conv(t)  # FerretDB reads the document the platform wrote
    got = {f: conv[f] for f in write}
    assert got == write, (
        "the platform's write was reverted: supportd's update of the conversation "
        f"{'waited for the platform row lock, then wrote back the copy it had read' if blocked else 'ran'}"
        f"; conversation now {got}")
    assert len(world.outbox(t, "ticket.sla_warning")) == 1
    warned = [s for s in mailpit_subjects(world.sd, world.anna["email"]) if s.startswith("SLA warning")]
    assert len(warned) == 1, warned
