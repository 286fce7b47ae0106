"""Redis as the managed services run it: TLS only, an ACL user, the default user
off (scripts/services' secure Redis), configured by REDIS_URL or by the split
variables. Refusals (unknown CA, wrong host name, expired certificate, wrong
password) name the variable to check and never print a secret; a TLS Redis
restarted under a running daemon is reconnected to. Every test runs twice:
with the binary under test, and (static build only) from an empty root, where
there is no CA store, no /etc/hosts and nothing else but the files named."""
from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import parse_ts, services_script, wait_until
from tls_helpers import (Runner, free_port, make_ca, make_cert, secure_services, stop,
                         wait_port)


@pytest.fixture
def secure(services):
    return secure_services(services)


@pytest.fixture(params=["binary", "empty-root"])
def run(request, sd, tmp_path):
    # Redis is named by each test: REDIS_HOST/REDIS_PORT of the plain test Redis are dropped
    return Runner(sd, tmp_path, request.param == "empty-root",
                  defaults={"REDIS_HOST": None, "REDIS_PORT": None})


def url(secure, *, user=None, password=None, host="127.0.0.1", port=None, db=0, scheme="rediss"):
    user = secure.redis_user if user is None else user
    password = secure.redis_password if password is None else password
    return f"{scheme}://{user}:{password}@{host}:{port or secure.redis_port}/{db}"


def assert_no_secret(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text, f"a secret reached the output:\n{text}"


def probe_ok(secure, sd) -> bool:
    return secure.redis().hgetall(sd.key("job:probe")).get("last_result") == "ok"


def test_tick_over_rediss_with_an_acl_user(sd, secure, run):
    cp = run.cli("once", "probe", REDIS_URL=url(secure), REDIS_TLS_CA_FILE=secure.ca)
    assert cp.returncode == 0, cp.stderr
    assert probe_ok(secure, sd)
    assert not sd.redis.exists(sd.key("job:probe"))  # not the plain test Redis
    assert_no_secret(cp.stdout + cp.stderr, secure.redis_password)


def test_tick_with_the_split_variables(sd, secure, run):
    cp = run.cli("once", "probe", REDIS_HOST="127.0.0.1", REDIS_PORT=secure.redis_port,
                 REDIS_USERNAME=secure.redis_user, REDIS_PASSWORD=secure.redis_password,
                 REDIS_TLS="true", REDIS_TLS_CA_FILE=secure.ca, REDIS_DB="3")
    assert cp.returncode == 0, cp.stderr
    assert secure.redis(db=3).hgetall(sd.key("job:probe")).get("last_result") == "ok"
    assert_no_secret(cp.stdout + cp.stderr, secure.redis_password)


def test_client_certificate_is_sent(sd, secure, run, tmp_path):
    """The server verifies a client certificate when one is sent: the services'
    client certificate passes, one from a CA it does not know is refused."""
    client = Path(secure.tls_dir)
    cp = run.cli("once", "probe", REDIS_URL=url(secure), REDIS_TLS_CA_FILE=secure.ca,
                 REDIS_TLS_CERT_FILE=client / "client.crt", REDIS_TLS_KEY_FILE=client / "client.key")
    assert cp.returncode == 0, cp.stderr
    stranger_ca = make_ca(tmp_path / "stranger", "stranger CA")
    stranger = make_cert(tmp_path / "stranger", stranger_ca, "stranger", san="DNS:stranger",
                         usage="clientAuth")
    cp = run.cli("once", "probe", REDIS_URL=url(secure), REDIS_TLS_CA_FILE=secure.ca,
                 REDIS_TLS_CERT_FILE=stranger.crt, REDIS_TLS_KEY_FILE=stranger.key)
    assert cp.returncode == 1, cp.stderr
    # TLS 1.3: the server's refusal arrives after the client's handshake is done
    assert "refuse the client certificate? see REDIS_TLS_CERT_FILE" in cp.stderr, cp.stderr


def test_wrong_ca_is_refused(sd, secure, run, tmp_path):
    other = make_ca(tmp_path / "other", "other CA")
    cp = run.cli("once", "probe", REDIS_URL=url(secure), REDIS_TLS_CA_FILE=other.crt)
    assert cp.returncode == 1, cp.stderr
    # OpenSSL's reason depends on whether the server sends its CA along
    assert ("certificate was refused: unable to get local issuer certificate" in cp.stderr
            or "certificate was refused: self-signed certificate in certificate chain"
            in cp.stderr), cp.stderr
    assert "check REDIS_TLS_CA_FILE" in cp.stderr, cp.stderr
    assert_no_secret(cp.stdout + cp.stderr, secure.redis_password)


def test_no_ca_file_means_the_system_bundle(sd, secure, run):
    """Without REDIS_TLS_CA_FILE the system's CAs are trusted (none of which
    signed the test CA): refused, never accepted unverified. In the empty root
    there is no bundle at all: also refused."""
    cp = run.cli("once", "probe", REDIS_URL=url(secure))
    assert cp.returncode == 1, cp.stderr
    assert "TLS handshake failed" in cp.stderr, cp.stderr
    assert not secure.redis().exists(sd.key("job:probe"))


@pytest.fixture
def bad_cert_redis(tmp_path):
    """Starts a TLS-only redis-server with a certificate from a test CA; yields
    a function (san, days) -> (ca, port)."""
    procs = []

    def start(san: str, days: int):
        d = tmp_path / f"bad{len(procs)}"
        ca = make_ca(d, "bad-cert CA")
        cert = make_cert(d, ca, "redis.bad.example", san=san, days=days)
        port = free_port()
        log = d / "redis.log"
        with open(log, "wb") as f:
            p = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port),
                                  "--bind", "127.0.0.1", "--tls-cert-file", str(cert.crt),
                                  "--tls-key-file", str(cert.key), "--tls-ca-cert-file", str(ca.crt),
                                  "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
                                  "--dir", str(d)], stdin=subprocess.DEVNULL, stdout=f, stderr=f)
        procs.append(p)
        wait_port(port, p, log)
        return ca, port

    yield start
    for p in procs:
        stop(p)


def test_wrong_host_name_is_refused(sd, secure, run, bad_cert_redis):
    ca, port = bad_cert_redis("DNS:redis.other.example", 2)
    cp = run.cli("once", "probe", REDIS_URL=f"rediss://127.0.0.1:{port}", REDIS_TLS_CA_FILE=ca.crt)
    assert cp.returncode == 1, cp.stderr
    assert "certificate was refused: IP address mismatch (check REDIS_URL)" in cp.stderr, cp.stderr
    cp = run.cli("once", "probe", REDIS_HOST="127.0.0.1", REDIS_PORT=port, REDIS_TLS="true",
                 REDIS_TLS_CA_FILE=ca.crt)
    assert cp.returncode == 1, cp.stderr
    assert "IP address mismatch (check REDIS_HOST)" in cp.stderr, cp.stderr


def test_expired_certificate_is_refused(sd, secure, run, bad_cert_redis):
    ca, port = bad_cert_redis("IP:127.0.0.1", -1)
    cp = run.cli("once", "probe", REDIS_URL=f"rediss://127.0.0.1:{port}", REDIS_TLS_CA_FILE=ca.crt)
    assert cp.returncode == 1, cp.stderr
    assert "certificate was refused: certificate has expired" in cp.stderr, cp.stderr
    assert "REDIS_TLS_CA_FILE" in cp.stderr, cp.stderr


def test_wrong_password_is_a_clear_error_without_the_secret(sd, secure, run):
    wrong = "Wr0ng" + uuid.uuid4().hex
    cp = run.cli("once", "probe", REDIS_URL=url(secure, password=wrong), REDIS_TLS_CA_FILE=secure.ca)
    assert cp.returncode == 1, cp.stderr
    assert "AUTH failed: WRONGPASS" in cp.stderr, cp.stderr
    assert "check the user and password in REDIS_URL" in cp.stderr, cp.stderr
    assert_no_secret(cp.stdout + cp.stderr, wrong, secure.redis_password)
    cp = run.cli("once", "probe", REDIS_HOST="127.0.0.1", REDIS_PORT=secure.redis_port,
                 REDIS_USERNAME=secure.redis_user, REDIS_PASSWORD=wrong, REDIS_TLS="true",
                 REDIS_TLS_CA_FILE=secure.ca)
    assert cp.returncode == 1, cp.stderr
    assert "check REDIS_USERNAME and REDIS_PASSWORD" in cp.stderr, cp.stderr
    assert_no_secret(cp.stdout + cp.stderr, wrong, secure.redis_password)


def test_url_and_split_variables_together_is_a_configuration_error(sd, secure, run):
    cp = run.cli("once", "probe", REDIS_URL=url(secure), REDIS_HOST="127.0.0.1")
    assert cp.returncode == 2, cp.stderr
    assert "REDIS_URL: cannot be combined with REDIS_HOST" in cp.stderr, cp.stderr
    assert_no_secret(cp.stdout + cp.stderr, secure.redis_password)


@pytest.fixture
def redis_tls_guard(secure):
    yield
    try:
        secure.redis().ping()
    except Exception:
        services_script("start-redis-tls")


def test_tls_redis_restarted_under_a_running_daemon(sd, secure, run, redis_tls_guard):
    d = run.start(REDIS_URL=url(secure), REDIS_TLS_CA_FILE=secure.ca, QM_SUPPORT_PROBE="true",
                  QM_SUPPORT_PROBE_CRON="* * * * * *", QM_SUPPORT_PROBE_HOLD_MS="0")
    d.wait_for("tick.end", where=lambda e: e.get("outcome") == "ok", timeout=20)
    services_script("restart-redis-tls")
    restarted_at = time.time()
    n = d.count()
    back = d.wait_for("tick.end", after=n, where=lambda e: e.get("outcome") == "ok", timeout=20)
    assert parse_ts(back["ts"]) >= restarted_at - 1.0
    assert d.alive()
    # Redis came back empty (no persistence): the health hash is written anew over TLS
    wait_until(lambda: probe_ok(secure, sd), 10, what="health hash rewritten after the restart")
    assert d.terminate_and_wait() == 0, d.tail()
    assert_no_secret(d.stderr() + d.stdout(), secure.redis_password)


def test_every_connection_uses_the_tls_settings(sd, secure, run):
    """Not only the jobs' connection: the HTTP server's threads (/readyz pings
    Redis on its own connection) and `supportd status` connect over TLS with
    the ACL user too."""
    import requests

    port = free_port()
    env = dict(REDIS_URL=url(secure), REDIS_TLS_CA_FILE=secure.ca, QM_SUPPORT_PROBE="true",
               QM_SUPPORT_PROBE_CRON="* * * * * *", QM_SUPPORT_HTTP_LISTEN=f"127.0.0.1:{port}")
    d = run.start(**env)
    d.wait_for("tick.end", where=lambda e: e.get("outcome") == "ok", timeout=20)
    r = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    assert r.status_code == 200 and "redis: ok" in r.text.splitlines(), r.text
    cp = run.cli("status", REDIS_URL=url(secure), REDIS_TLS_CA_FILE=secure.ca,
                 QM_SUPPORT_PROBE="true", QM_SUPPORT_PROBE_CRON="* * * * * *")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "probe" in cp.stdout, cp.stdout
    assert d.terminate_and_wait() == 0, d.tail()
    assert_no_secret(d.stderr() + cp.stdout + cp.stderr, secure.redis_password)
