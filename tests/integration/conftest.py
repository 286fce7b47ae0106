"""Integration-test harness for supportd: real FerretDB (MongoDB wire) and Redis.

Environment:
  SUPPORTD_BIN         the binary (default <repo>/zig-out/sanitize/bin/supportd, the
                       AddressSanitizer build of `zig build -Dsanitize=true`)
  SUPPORTD_LD_PRELOAD  added to the child's environment as LD_PRELOAD (the test
                       build uses AddressSanitizer through the system libasan);
                       when neither is set, gcc's libasan for the default binary,
                       then the libbson alignment check (shims/bson_align_check.c)
  ASAN_OPTIONS         passed through when set
Services come from <repo>/.services.env (written by `scripts/services up`), or
from MONGO_DB_URL / REDIS_HOST / REDIS_PORT already in the environment.

Every test gets its own Redis key prefix and MongoDB database (the `sd`
fixture), dropped afterwards; every process a test starts is killed in
teardown.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

import pymongo
import pytest
import redis

REPO = Path(__file__).resolve().parents[2]
# `zig build -Dsanitize=true` installs here; zig-out/bin/supportd is the plain build.
SANITIZED_BIN = REPO / "zig-out" / "sanitize" / "bin" / "supportd"


def supportd_bin() -> str:
    """The binary under test: SUPPORTD_BIN, else the sanitized development build."""
    return os.environ.get("SUPPORTD_BIN") or str(SANITIZED_BIN)


_asan_runtime: list[str] = []
_seams: dict[str, bool] = {}


def has_test_seams(binary: str) -> bool:
    """Whether the binary reads QM_SUPPORT_TEST_SEAMS (development builds do;
    the static release build has them compiled out)."""
    if binary not in _seams:
        _seams[binary] = b"QM_SUPPORT_TEST_SEAMS" in Path(binary).read_bytes()
    return _seams[binary]


def supportd_preload() -> str | None:
    """LD_PRELOAD for the binary under test: SUPPORTD_LD_PRELOAD; when SUPPORTD_BIN is
    not set either, the default binary is the sanitized build, which needs gcc's libasan
    loaded first. Then, for any binary, the libbson alignment check (a static binary
    ignores LD_PRELOAD)."""
    if os.environ.get("SUPPORTD_LD_PRELOAD"):
        base = os.environ["SUPPORTD_LD_PRELOAD"]
    elif os.environ.get("SUPPORTD_BIN"):
        base = ""
    else:
        if not _asan_runtime:
            _asan_runtime.append(subprocess.run(["gcc", "-print-file-name=libasan.so"],
                                                capture_output=True, text=True,
                                                check=True).stdout.strip())
        base = _asan_runtime[0]
    return " ".join(p for p in (base, bson_align_check()) if p)


def unaligned_heap() -> dict:
    """Environment overrides under which ASan's heap gives blocks only 16-byte alignment, as
    glibc's and musl's malloc do: ASan's redzones grow with the block, which puts larger
    blocks on 128-byte boundaries by accident, where the alignment check below cannot see a
    bson_t array that is misaligned under any other allocator."""
    opts = [o for o in os.environ.get("ASAN_OPTIONS", "").split(":") if o]
    return {"ASAN_OPTIONS": ":".join(opts + ["max_redzone=16"])}


_shim_built: list[str] = []
BSON_ALIGN_SHIM = REPO / "tests" / "integration" / "shims" / "bson_align_check.c"


def bson_align_check() -> str:
    """The libbson alignment check (shims/bson_align_check.c), built with gcc on first use:
    preloaded after libasan, it aborts the process when supportd's code hands libbson a
    bson_t that is not aligned as libbson declares (which UBSan cannot see)."""
    out = REPO / "zig-out" / "test-shims" / "libbson_align_check.so"
    if _shim_built:
        return _shim_built[0]
    if not out.is_file() or out.stat().st_mtime < BSON_ALIGN_SHIM.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        cflags = subprocess.run(["pkg-config", "--cflags", "libbson-1.0"], capture_output=True,
                                text=True, check=True).stdout.split()
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wall", "-Werror", *cflags, "-o", str(tmp),
                        str(BSON_ALIGN_SHIM), "-ldl"], check=True)
        tmp.replace(out)
    _shim_built.append(str(out))
    return str(out)


SERVICES_ENV = REPO / ".services.env"
SERVICE_VARS = ("MONGO_DB_URL", "REDIS_HOST", "REDIS_PORT", "SMTP_URL", "MAILPIT_API_URL",
                "POSTGRES_URL", "SECURE_TLS_DIR", "SECURE_MONGO_PORT", "SECURE_MONGO_USER",
                "SECURE_MONGO_PASSWORD", "SECURE_REDIS_PORT", "SECURE_REDIS_USER",
                "SECURE_REDIS_PASSWORD", "REDIS_SERVER")

# Variables the daemon reads; never inherited from the caller's environment so
# that a developer's shell cannot change what a test means.
_OWN_PREFIXES = ("QM_SUPPORT_", "MONGO_", "REDIS_", "TWILIO_", "SENDGRID_", "SMTP_", "MAILPIT_")
_OWN_VARS = {"LOG_LEVEL", "LOG_FORMAT", "LD_PRELOAD", "ASAN_OPTIONS"}

# Sanitizer / runtime reports that mean the process misbehaved whatever its exit code.
SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",  # UBSan
    "AddressSanitizer:DEADLYSIGNAL",
    "bson_align_check:",  # shims/bson_align_check.c
)
ASAN_NOT_FIRST = "ASan runtime does not come first"

DEFAULT_TIMEOUT = 20.0

# Seen with the ASan test build: libasan, only LD_PRELOADed, initialises after
# libp11-kit's constructor (pulled in by libcurl) has called newlocale(); ASan's
# lazy init inside it corrupts glibc's __libc_setlocale_lock, and after any
# strerror() (e.g. "Connection refused") exit() deadlocks in p11-kit's
# destructor (freelocale). The build must run __asan_init from .preinit_array
# (build.zig links gcc's libasan_preinit.o for that); an older binary hangs.
EXIT_HANG_HINT = ("; with LD_PRELOADed libasan this may be the known exit deadlock in "
                  "libp11-kit's destructor after a strerror() (see EXIT_HANG_HINT in conftest.py)"
                  if os.environ.get("SUPPORTD_LD_PRELOAD") else "")


# ---------------------------------------------------------------- helpers ----

def now_ms() -> int:
    return int(time.time() * 1000)


def parse_ts(ts: str) -> float:
    """ISO 8601 with Z (log "ts") to Unix seconds (float)."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def parse_log_lines(text: str) -> tuple[list[dict], list[str]]:
    """(JSON objects, non-JSON lines) of a stderr capture."""
    events, other = [], []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except ValueError:
                other.append(line)
                continue
            if isinstance(obj, dict):
                events.append(obj)
                continue
        other.append(line)
    return events, other


def sanitizer_reports(text: str) -> list[str]:
    return [m for m in SANITIZER_MARKERS if m in text]


def load_services() -> dict[str, str]:
    if os.environ.get("MONGO_DB_URL") and os.environ.get("REDIS_PORT"):
        vals = {k: os.environ[k] for k in SERVICE_VARS if os.environ.get(k)}
        vals.setdefault("REDIS_HOST", "127.0.0.1")
        return vals
    if not SERVICES_ENV.is_file():
        pytest.fail(f"{SERVICES_ENV} is missing: run scripts/services up", pytrace=False)
    vals = {}
    for line in SERVICES_ENV.read_text().splitlines():
        m = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            v = m.group(2).strip()
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
                v = v[1:-1]
            vals[m.group(1)] = v
    for k in ("MONGO_DB_URL", "REDIS_PORT"):
        if not vals.get(k):
            pytest.fail(f"{SERVICES_ENV} has no {k}: run scripts/services up", pytrace=False)
    vals.setdefault("REDIS_HOST", "127.0.0.1")
    return vals


def url_with_db(url: str, db: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + db, parts.query, parts.fragment))


def wait_until(pred: Callable[[], object], timeout: float, interval: float = 0.05,
               what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------- daemon ----

@dataclass
class Daemon:
    """A `supportd` process started by a test, stderr/stdout captured to files."""

    name: str
    proc: subprocess.Popen
    stderr_path: Path
    stdout_path: Path
    env: dict
    _files: list = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def events(self, event: str | None = None, **match) -> list[dict]:
        evs, _ = parse_log_lines(self.stderr())
        out = []
        for e in evs:
            if event is not None and e.get("event") != event:
                continue
            if any(e.get(k) != v for k, v in match.items()):
                continue
            out.append(e)
        return out

    def other_lines(self) -> list[str]:
        return parse_log_lines(self.stderr())[1]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, event: str, timeout: float = DEFAULT_TIMEOUT, after: int = 0,
                 where: Callable[[dict], bool] | None = None, **match) -> dict:
        """The first matching log event among all events from index `after`
        (an index into self.events() — all events, unfiltered). Fails early if
        the process exits without logging it."""
        deadline = time.monotonic() + timeout
        while True:
            evs, _ = parse_log_lines(self.stderr())
            for e in evs[after:]:
                if e.get("event") != event:
                    continue
                if any(e.get(k) != v for k, v in match.items()):
                    continue
                if where is not None and not where(e):
                    continue
                return e
            if not self.alive():
                # one more read: the last lines may have landed just now
                evs, _ = parse_log_lines(self.stderr())
                for e in evs[after:]:
                    if (e.get("event") == event
                            and all(e.get(k) == v for k, v in match.items())
                            and (where is None or where(e))):
                        return e
                raise AssertionError(
                    f"{self.name} (pid {self.pid}) exited with {self.proc.returncode} "
                    f"before logging {event} {match or ''}\n--- stderr ---\n{self.tail()}")
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.name} (pid {self.pid}): no {event} {match or ''} within "
                    f"{timeout:.1f}s\n--- stderr ---\n{self.tail()}")
            time.sleep(0.05)

    def count(self) -> int:
        """Number of JSON log events so far (for wait_for(after=...))."""
        return len(parse_log_lines(self.stderr())[0])

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def terminate_and_wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            hint = ""
            if any(e.get("event") == "shutdown" for e in self.events()):
                hint = f" although it logged shutdown: hung in exit handlers{EXIT_HANG_HINT}"
            raise AssertionError(
                f"{self.name} (pid {self.pid}) did not exit within {timeout:.1f}s{hint}\n"
                f"--- stderr ---\n{self.tail()}") from None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in self._files:
            f.close()
        self._files.clear()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.stderr().splitlines()[-n:])

    def tick_intervals(self) -> list[tuple[str, float, float]]:
        """(tick id, start ts, end ts) of every tick that logged both tick.start
        and tick.end, in order."""
        starts = {e["tick"]: parse_ts(e["ts"]) for e in self.events("tick.start")}
        out = []
        for e in self.events("tick.end"):
            t = e.get("tick")
            if t in starts:
                out.append((t, starts[t], parse_ts(e["ts"])))
        return out


# ------------------------------------------------------------- test scope ----

class Supportd:
    """Per-test isolation (Redis prefix, MongoDB database) and process helpers."""

    def __init__(self, services: dict, tmp_path: Path, rds: redis.Redis,
                 mongo: pymongo.MongoClient):
        self.services = services
        self.tmp_path = tmp_path
        self.redis = rds
        self.mongo_client = mongo
        u = uuid.uuid4().hex
        self.prefix = f"t{u}:"
        self.db_name = f"it_{u[:16]}"
        self.mongo_url = url_with_db(services["MONGO_DB_URL"], self.db_name)
        self.bin = supportd_bin()
        self.daemons: list[Daemon] = []
        self.hostname = socket.gethostname()
        self._n = 0

    # -- environment --
    def env(self, **overrides) -> dict:
        """The child's environment: the caller's minus supportd's own variables,
        plus the services, this test's prefix and database. overrides: value
        None removes the variable."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(_OWN_PREFIXES) and k not in _OWN_VARS}
        env.update({
            "MONGO_DB_URL": self.mongo_url,
            "REDIS_HOST": self.services["REDIS_HOST"],
            "REDIS_PORT": self.services["REDIS_PORT"],
            "QM_SUPPORT_REDIS_PREFIX": self.prefix,
            "QM_SUPPORT_RULES_DIR": str(REPO / "rules"),
            "LOG_LEVEL": "info",
            # The dev build links Debian's libmongoc, whose constructor (before
            # main, so before supportd routes its log) creates /dev/shm/mongoc-<pid>
            # and prints a raw warning when a process killed with that pid left one
            # behind. The release build has the counters compiled out
            # (scripts/build-static-deps: ENABLE_SHM_COUNTERS=OFF).
            "MONGOC_DISABLE_SHM": "1",
        })
        preload = supportd_preload()
        if preload:
            env["LD_PRELOAD"] = preload
        if os.environ.get("ASAN_OPTIONS"):
            env["ASAN_OPTIONS"] = os.environ["ASAN_OPTIONS"]
        for k, v in overrides.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
        if env.get("QM_SUPPORT_TEST_SEAMS") and not has_test_seams(self.bin):
            pytest.skip("the binary under test is a release build: test seams are compiled out")
        return env

    def _check_binary(self):
        if not Path(self.bin).is_file():
            pytest.fail(f"supportd binary not found at {self.bin} (build it, or set SUPPORTD_BIN)",
                        pytrace=False)

    @staticmethod
    def _check_output(text: str, what: str):
        if ASAN_NOT_FIRST in text:
            pytest.fail(f"{what}: the binary is built with AddressSanitizer; set "
                        "SUPPORTD_LD_PRELOAD to the libasan runtime "
                        "(e.g. /usr/lib/x86_64-linux-gnu/libasan.so.8)", pytrace=False)
        found = sanitizer_reports(text)
        assert not found, f"{what}: sanitizer report ({found}):\n{text[-6000:]}"

    # -- one-shot commands --
    def cli(self, *args: str, env: dict | None = None, timeout: float = 30,
            **overrides) -> subprocess.CompletedProcess:
        """Runs `supportd ARGS` to completion. env: a full environment (else
        self.env(**overrides))."""
        self._check_binary()
        full_env = env if env is not None else self.env(**overrides)
        try:
            cp = subprocess.run([self.bin, *args], env=full_env, cwd=self.tmp_path,
                                capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            raise AssertionError(
                f"supportd {' '.join(args)} did not exit within {timeout:.0f}s (killed)"
                f"{EXIT_HANG_HINT if err else ''}\n--- stderr so far ---\n{err[-4000:]}") from None
        self._check_output(cp.stderr + cp.stdout, f"supportd {' '.join(args)}")
        assert cp.returncode >= 0, (
            f"supportd {' '.join(args)} died of signal {-cp.returncode}\n{cp.stderr}")
        return cp

    # -- daemons --
    def start(self, *args: str, name: str | None = None, **overrides) -> Daemon:
        """Starts `supportd run` (or ARGS) in the background."""
        self._check_binary()
        self._n += 1
        name = name or f"supportd{self._n}"
        err_path = self.tmp_path / f"{name}.stderr"
        out_path = self.tmp_path / f"{name}.stdout"
        ferr = open(err_path, "wb")
        fout = open(out_path, "wb")
        env = self.env(**overrides)
        proc = subprocess.Popen([self.bin, *(args or ("run",))], env=env, cwd=self.tmp_path,
                                stdin=subprocess.DEVNULL, stdout=fout, stderr=ferr)
        d = Daemon(name, proc, err_path, out_path, env, [ferr, fout])
        self.daemons.append(d)
        return d

    def probe_daemon(self, name: str | None = None, cron: str = "* * * * * *",
                     hold_ms: int = 0, **overrides) -> Daemon:
        overrides.setdefault("QM_SUPPORT_PROBE", "true")
        overrides.setdefault("QM_SUPPORT_PROBE_CRON", cron)
        overrides.setdefault("QM_SUPPORT_PROBE_HOLD_MS", hold_ms)
        return self.start("run", name=name, **overrides)

    # -- Redis keys of this test --
    def key(self, suffix: str) -> str:
        return self.prefix + suffix

    def health(self, job: str = "probe") -> dict:
        return self.redis.hgetall(self.key(f"job:{job}"))

    def lease(self, job: str = "probe") -> str | None:
        return self.redis.get(self.key(f"lease:{job}"))

    def instance_of(self, d: Daemon) -> str:
        return f"{self.hostname}:{d.pid}"

    # -- teardown --
    def cleanup(self) -> list[str]:
        problems = []
        for d in self.daemons:
            was_alive = d.alive()
            d.kill()
            try:
                text = d.stderr()
            except OSError:
                text = ""
            found = sanitizer_reports(text)
            if found:
                problems.append(f"{d.name} (pid {d.pid}{', killed in teardown' if was_alive else ''})"
                                f": sanitizer report {found}:\n{text[-4000:]}")
        try:
            keys = list(self.redis.scan_iter(match=self.prefix + "*", count=1000))
            if keys:
                self.redis.delete(*keys)
        except redis.RedisError:
            pass  # a test may leave Redis restarting; its keys are gone then anyway
        try:
            self.mongo_client.drop_database(self.db_name)
        except pymongo.errors.PyMongoError:
            pass
        return problems


# --------------------------------------------------------------- fixtures ----

@pytest.fixture(scope="session")
def services() -> dict:
    return load_services()


@pytest.fixture(scope="session")
def redis_client(services) -> redis.Redis:
    r = redis.Redis(host=services["REDIS_HOST"], port=int(services["REDIS_PORT"]),
                    decode_responses=True, socket_timeout=5, socket_connect_timeout=5)
    try:
        r.ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis at {services['REDIS_HOST']}:{services['REDIS_PORT']} is not "
                    f"reachable ({e}): run scripts/services up", pytrace=False)
    yield r
    r.close()


@pytest.fixture(scope="session")
def mongo_client(services) -> pymongo.MongoClient:
    c = pymongo.MongoClient(services["MONGO_DB_URL"], serverSelectionTimeoutMS=5000)
    try:
        c.admin.command("ping")
    except pymongo.errors.PyMongoError as e:
        pytest.fail(f"MongoDB/FerretDB at {services['MONGO_DB_URL']} is not reachable ({e}): "
                    "run scripts/services up", pytrace=False)
    yield c
    c.close()


@pytest.fixture
def sd(services, redis_client, mongo_client, tmp_path):
    """Per-test supportd harness: own Redis prefix and MongoDB database."""
    h = Supportd(services, tmp_path, redis_client, mongo_client)
    yield h
    problems = h.cleanup()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def redis_restart_guard(services, redis_client):
    """Makes sure Redis is up again after a test that stops it."""
    yield
    script = REPO / "scripts" / "services"
    try:
        redis_client.ping()
        return
    except redis.RedisError:
        pass
    subprocess.run([str(script), "start-redis"], cwd=REPO, capture_output=True, timeout=60,
                   stdin=subprocess.DEVNULL, start_new_session=True)
    wait_until(lambda: _ping(redis_client), 30, 0.2, "Redis to come back")


def _ping(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False


def services_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cp = subprocess.run([str(REPO / "scripts" / "services"), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        stdin=subprocess.DEVNULL,
                        # Redis is started from here: keep it out of pytest's
                        # process group so a Ctrl-C of the run does not kill it.
                        start_new_session=True)
    assert cp.returncode == 0, f"scripts/services {' '.join(args)} failed:\n{cp.stdout}\n{cp.stderr}"
    return cp


def intervals_overlap(a: Iterable[tuple[str, float, float]],
                      b: Iterable[tuple[str, float, float]]) -> list[tuple]:
    """Pairs of [start, end] intervals, one from each list, that overlap
    (touching ends do not count)."""
    bad = []
    b = list(b)
    for ta, sa, ea in a:
        for tb, sb, eb in b:
            if sa < eb and sb < ea:
                bad.append(((ta, sa, ea), (tb, sb, eb)))
    return bad
