"""scripts/supportd.service (issue 24): the unit verifies, the README records
its `systemd-analyze security` exposure score, and its system-call filter
(@system-service minus @privileged and @resources) admits every call the
static release binary makes in `once` jobs and in `run` with the HTTP
listener, over TLS (the secure Redis and FerretDB) and with host names
resolved (localhost).

systemd cannot boot here, so the filter is checked the other way round: the
binary runs under `strace -f -c` and the names of the calls it made must all
be in the set systemd-analyze expands the filter to."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import REPO, wait_until
from test_http import free_port
from tls_helpers import is_static, secure_services

UNIT = REPO / "scripts" / "supportd.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                reason="systemd-analyze not installed (Debian package systemd)")

# What musl's resolver calls for a name not in /etc/hosts (src/network/res_msend.c,
# lookup_name.c): the test cannot send a DNS query from here, so these are checked
# against the filter by name.
RESOLVER_CALLS = {"socket", "bind", "connect", "sendto", "sendmsg", "recvfrom", "poll",
                  "setsockopt", "close", "clock_gettime", "open", "openat", "read", "fcntl"}


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60)


def group(name: str, _cache: dict = {}) -> set[str]:  # noqa: B006 (a memo)
    """The system calls of a systemd syscall group, nested groups expanded."""
    if name not in _cache:
        out = analyze("syscall-filter", name)
        assert out.returncode == 0, out.stderr
        calls: set[str] = set()
        for line in out.stdout.splitlines()[1:]:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            calls |= group(line) if line.startswith("@") else {line}
        _cache[name] = calls
    return _cache[name]


def unit_filter() -> set[str]:
    """The calls the unit's SystemCallFilter= lines allow (an allow list, then
    ~deny lines), read from the unit itself."""
    allowed: set[str] | None = None
    for value in re.findall(r"^SystemCallFilter=(.*)$", UNIT.read_text(), re.M):
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.lstrip("~").split():
            names |= group(item) if item.startswith("@") else {item}
        if deny:
            assert allowed is not None, "a ~deny filter before the allow list"
            allowed -= names
        else:
            allowed = names if allowed is None else allowed | names
    assert allowed, "the unit has no SystemCallFilter= allow list"
    return allowed


def test_unit_verifies_and_the_readme_records_its_exposure(tmp_path):
    # verify wants ExecStart= to exist: the same unit with the binary at hand
    unit = tmp_path / "supportd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/supportd", shutil.which("true")))
    v = analyze("verify", "--man=no", str(unit))
    assert v.returncode == 0 and not v.stderr.strip() and not v.stdout.strip(), v.stdout + v.stderr

    s = analyze("security", "--offline=true", str(UNIT))
    m = re.search(r"Overall exposure level for supportd\.service: ([0-9.]+) (\w+)", s.stdout)
    assert m, s.stdout + s.stderr
    score = f"{m.group(1)} {m.group(2)}"
    readme = (REPO / "README.md").read_text()
    assert f"exposure level {score}" in readme, f"README does not record the score {score}"
    assert f"security --offline=true scripts/supportd.service`: {score}" in UNIT.read_text(), \
        f"the unit's comment does not record the score {score}"


def strace_calls(out: Path) -> set[str]:
    """The call names of `strace -c`'s table."""
    calls = set()
    for line in out.read_text().splitlines():
        cols = line.split()
        if cols and re.fullmatch(r"[0-9.]+", cols[0]) and len(cols) >= 5 and cols[-1] != "total":
            calls.add(cols[-1])
    return calls


def test_the_release_binary_stays_inside_the_unit_syscall_filter(sd, tmp_path):
    if not is_static(sd.bin):
        pytest.skip("the unit runs the static release binary (scripts/test runs this against "
                    "it); the sanitized build's ASan runtime makes calls of its own")
    strace = shutil.which("strace")
    assert strace, "strace not installed (scripts/setup installs it)"
    allowed = unit_filter()
    assert RESOLVER_CALLS <= allowed, f"resolver calls outside the filter: {RESOLVER_CALLS - allowed}"
    sec = secure_services(sd.services)
    used: set[str] = set()

    def traced(name: str, *args: str) -> list[str]:
        out = tmp_path / f"{name}.strace"
        used_here = [strace, "-f", "-qq", "-c", "-o", str(out), sd.bin, *args]
        return used_here, out

    # `once` jobs against the plain services, the host names resolved
    for job in ("snooze", "notification", "message-status"):
        cmd, out = traced(job, "once", job)
        env = sd.env(REDIS_HOST="localhost",
                     MONGO_DB_URL=sd.mongo_url.replace("127.0.0.1", "localhost"))
        cp = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
        assert cp.returncode == 0, f"once {job}:\n{cp.stderr[-3000:]}"
        used |= strace_calls(out)

    # `run` with the HTTP listener, over TLS to both servers with their users
    port = free_port()
    cmd, out = traced("run", "run")
    env = sd.env(
        MONGO_DB_URL=sec.mongo_url(sd.db_name, host="localhost", authSource="admin"),
        REDIS_URL=f"rediss://{sec.redis_user}:{sec.redis_password}@localhost:{sec.redis_port}",
        REDIS_TLS_CA_FILE=sec.ca, REDIS_HOST=None, REDIS_PORT=None,
        QM_SUPPORT_HTTP_LISTEN=f"127.0.0.1:{port}", QM_SUPPORT_PUBLIC_URL="https://hooks.example.com",
        QM_SUPPORT_PROBE="true", QM_SUPPORT_PROBE_CRON="* * * * * *")
    log = open(tmp_path / "run.stderr", "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"

        def ready():
            try:
                return requests.get(base + "/readyz", timeout=5).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, 60, 0.25, "supportd run to be ready over TLS")
        wait_until(lambda: requests.get(base + "/healthz", timeout=5).status_code == 200, 30, 0.25,
                   "a probe tick over TLS")
        r = requests.get(base + "/metrics", timeout=10)
        assert r.status_code == 200 and "process_open_fds" in r.text
        assert requests.post(base + "/webhooks/twilio/status", data=b"x=1",
                             timeout=10).status_code in (400, 401, 403, 404, 503)
    finally:
        # SIGTERM to supportd itself (strace's child): strace passes on its exit status
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for pid in children:
            os.kill(int(pid), signal.SIGTERM)
        rc = proc.wait(timeout=90)
        log.close()
    assert children and rc == 0, (tmp_path / "run.stderr").read_text()[-3000:]
    used |= strace_calls(out)

    assert {"socket", "connect"} <= used, f"strace saw no network calls: {sorted(used)}"
    outside = sorted(used - allowed)
    assert not outside, f"calls outside the unit's SystemCallFilter: {outside}"
