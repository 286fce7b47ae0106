"""MongoDB as production runs it: TLS with a private CA, a client certificate,
SCRAM users with authSource, replicaSet and mongodb+srv:// in MONGO_DB_URL.

The server is scripts/services' secure FerretDB (TLS only, client certificates
required, SCRAM users from --test-enable-new-auth, the user in "admin"). Every
failure must name MONGO_DB_URL and say what to check, and no password may reach
the output. Each test runs twice: with the binary under test and, for the
static build, from an empty root."""
from __future__ import annotations

import json

import subprocess
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from bson import ObjectId

from conftest import REPO
from tls_helpers import Runner, free_port, make_ca, make_cert, secure_services, stop, wait_port

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
NOW_ISO = "2026-03-02T09:00:00Z"
FAST = {"serverSelectionTimeoutMS": "1500"}  # failures need not wait 5 s


@pytest.fixture
def secure(services):
    return secure_services(services)


@pytest.fixture(params=["binary", "empty-root"])
def run(request, sd, tmp_path):
    """The binary under test, then the static one from an empty root (no CA
    store, no /etc: the files the URL names are all it has)."""
    return Runner(sd, tmp_path, request.param == "empty-root")


@pytest.fixture
def world(secure):
    """A database on the secure FerretDB with one room and one snoozed ticket
    that is due at NOW; dropped afterwards."""
    client = secure.pymongo(tz_aware=True)
    name = f"tls_{uuid.uuid4().hex[:12]}"
    db = client[name]
    room = ObjectId()
    db["conversation-room"].insert_one({
        "_id": room, "name": "Berlin", "timezone": "Europe/Berlin", "business_hours": None,
        "members": [], "email_from": "support@acme.example"})
    ticket = ObjectId()
    db["conversation-conversation"].insert_one({
        "_id": ticket, "room_id": room, "subject": "over TLS", "channel": "email",
        "status": "snoozed", "priority": "normal", "assignee_id": None,
        "contact": {"name": "Lena", "email": "lena@example.org", "phone": None},
        "created_at": NOW - timedelta(days=3), "updated_at": NOW - timedelta(days=1),
        "last_customer_message_at": NOW - timedelta(days=3), "escalation_level": 0,
        "snooze": {"until": NOW - timedelta(minutes=5), "original_priority": "normal",
                   "original_status": "open", "by": ObjectId(), "at": NOW - timedelta(days=1)}})
    yield name, db, ticket
    client.drop_database(name)
    client.close()


def assert_no_secret(cp, *secrets):
    out = cp.stdout + cp.stderr
    for s in secrets:
        assert s not in out, f"a secret reached the output:\n{out}"


def test_snooze_tick_over_tls_with_scram_and_client_certificate(sd, secure, world, run):
    name, db, ticket = world
    cp = run.cli("once", "snooze", "--now", NOW_ISO,
                MONGO_DB_URL=secure.mongo_url(name, authSource="admin"))
    assert cp.returncode == 0, cp.stderr
    assert db["conversation-conversation"].find_one({"_id": ticket})["status"] == "open"
    assert_no_secret(cp, secure.mongo_password)


def test_auth_source_is_honoured(sd, secure, world, run):
    """The user lives in "admin": without authSource the driver authenticates
    against the URL's database and the server refuses."""
    name, db, ticket = world
    cp = run.cli("once", "snooze", "--now", NOW_ISO, MONGO_DB_URL=secure.mongo_url(name, **FAST))
    assert cp.returncode != 0
    assert "MONGO_DB_URL" in cp.stderr and "authentication failed" in cp.stderr, cp.stderr
    assert f"authSource {name}" in cp.stderr, cp.stderr
    assert db["conversation-conversation"].find_one({"_id": ticket})["status"] == "snoozed"
    assert_no_secret(cp, secure.mongo_password)


def test_wrong_password_is_a_clear_error_without_the_secret(sd, secure, world, run):
    name, db, ticket = world
    wrong = "Wr0ng-" + uuid.uuid4().hex
    cp = run.cli("once", "snooze", "--now", NOW_ISO,
                MONGO_DB_URL=secure.mongo_url(name, password=wrong, authSource="admin", **FAST))
    assert cp.returncode != 0
    assert "MONGO_DB_URL" in cp.stderr, cp.stderr
    assert "authentication failed (check the user name, password and authSource)" in cp.stderr
    assert r'user \"supportd\"' in cp.stderr, cp.stderr  # JSON-escaped quotes
    assert_no_secret(cp, wrong, secure.mongo_password)
    assert db["conversation-conversation"].find_one({"_id": ticket})["status"] == "snoozed"


def test_wrong_ca_is_refused(sd, secure, world, tmp_path, run):
    name, db, ticket = world
    other = make_ca(tmp_path / "other", "another CA")
    cp = run.cli("once", "snooze", "--now", NOW_ISO,
                MONGO_DB_URL=secure.mongo_url(name, ca=other.crt, authSource="admin", **FAST))
    assert cp.returncode != 0
    assert "MONGO_DB_URL" in cp.stderr and "cannot connect" in cp.stderr, cp.stderr
    assert "certificate verify failed" in cp.stderr, cp.stderr
    assert_no_secret(cp, secure.mongo_password)
    assert db["conversation-conversation"].find_one({"_id": ticket})["status"] == "snoozed"


def test_tls_insecure_is_accepted_but_never_silently(sd, secure, world, tmp_path, run):
    """Issue 22: tlsInsecure (and its two halves) in MONGO_DB_URL work, as mongoc
    defines them, but each start says in a warning that verification is off."""
    name, db, ticket = world
    other = make_ca(tmp_path / "other", "another CA")
    url = secure.mongo_url(name, ca=other.crt, authSource="admin", **FAST)
    cp = run.cli("once", "snooze", "--now", NOW_ISO, MONGO_DB_URL=url + "&tlsInsecure=true")
    assert cp.returncode == 0, cp.stderr
    warns = [json.loads(l) for l in cp.stderr.splitlines()
             if l.startswith("{") and '"config.tls_unverified"' in l]
    assert warns and warns[0]["level"] == "warn" and warns[0]["option"].lower() == "tlsinsecure", \
        cp.stderr
    assert "not verified" in warns[0]["msg"]
    assert_no_secret(cp, secure.mongo_password)
    cp = run.cli("once", "snooze", "--now", NOW_ISO, MONGO_DB_URL=url)
    assert cp.returncode != 0 and "config.tls_unverified" not in cp.stderr


def test_client_certificate_is_passed_through(sd, secure, world, run):
    """The server requires a client certificate: without tlsCertificateKeyFile
    the handshake is refused (the success case is the first test)."""
    name, db, ticket = world
    cp = run.cli("once", "snooze", "--now", NOW_ISO,
                MONGO_DB_URL=secure.mongo_url(name, client_pem=None, authSource="admin", **FAST))
    assert cp.returncode != 0
    assert "MONGO_DB_URL" in cp.stderr and "cannot connect" in cp.stderr, cp.stderr
    assert_no_secret(cp, secure.mongo_password)


@pytest.fixture
def wrong_name_ferretdb(services, tmp_path):
    """A TLS FerretDB whose certificate (from a CA the client trusts) is for
    another host name. The handshake fails before any query, so it never
    touches the PostgreSQL database it is given."""
    ca = make_ca(tmp_path / "wrongname", "wrong-name CA")
    cert = make_cert(tmp_path / "wrongname", ca, "db.other.example", san="DNS:db.other.example")
    port = free_port()
    log = tmp_path / "ferretdb-wrongname.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([
            str(REPO / ".cache" / "bin" / "ferretdb"), "--handler=postgresql",
            f"--postgresql-url={services['POSTGRES_URL']}", "--listen-addr=",
            f"--listen-tls=127.0.0.1:{port}", f"--listen-tls-cert-file={cert.crt}",
            f"--listen-tls-key-file={cert.key}", "--debug-addr=-", "--state-dir=-",
            "--telemetry=disable", "--log-level=error"],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    try:
        wait_port(port, proc, log)
        yield ca, port
    finally:
        stop(proc)


def test_wrong_host_name_is_refused(sd, wrong_name_ferretdb, run):
    ca, port = wrong_name_ferretdb
    url = (f"mongodb://127.0.0.1:{port}/tls_wrongname?tls=true&tlsCAFile={ca.crt}"
           "&serverSelectionTimeoutMS=1500")
    cp = run.cli("once", "snooze", "--now", NOW_ISO, MONGO_DB_URL=url)
    assert cp.returncode != 0
    assert "MONGO_DB_URL" in cp.stderr and "cannot connect" in cp.stderr, cp.stderr
    # OpenSSL's words for a certificate that does not cover the host: "IP address mismatch"
    assert "mismatch" in cp.stderr, cp.stderr


def test_replica_set_is_honoured(sd, secure, world, run):
    """FerretDB 1.24 here runs without --repl-set-name (ferretdb.md), so it is a
    standalone server: asking for replicaSet=rs0 must fail naming the option,
    not silently talk to a server outside the set."""
    name, db, ticket = world
    cp = run.cli("once", "snooze", "--now", NOW_ISO,
                MONGO_DB_URL=secure.mongo_url(name, authSource="admin", replicaSet="rs0", **FAST))
    assert cp.returncode != 0
    assert "MONGO_DB_URL" in cp.stderr and "replicaSet rs0" in cp.stderr, cp.stderr
    assert db["conversation-conversation"].find_one({"_id": ticket})["status"] == "snoozed"


def test_srv_url_without_dns_is_a_clear_error(sd, run):
    """mongodb+srv:// is resolved through DNS (there is none for .invalid): the
    error names the variable and the SRV record, not the password."""
    secret = "s3cret-" + uuid.uuid4().hex[:8]
    cp = run.cli("once", "snooze", MONGO_DB_URL=f"mongodb+srv://ops:{secret}@cluster0.example.invalid/support")
    assert cp.returncode == 2, cp.stderr
    assert "MONGO_DB_URL" in cp.stderr and "_mongodb._tcp.cluster0.example.invalid" in cp.stderr
    assert_no_secret(cp, secret)
    # A port is not allowed with mongodb+srv (the SRV record carries the ports).
    cp = run.cli("once", "snooze", MONGO_DB_URL=f"mongodb+srv://ops:{secret}@cluster0.example.invalid:27017/support")
    assert cp.returncode == 2, cp.stderr
    assert cp.stderr.startswith("supportd: configuration error: MONGO_DB_URL"), cp.stderr
    assert_no_secret(cp, secret)
