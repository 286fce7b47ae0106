"""Shared helpers for scripts/bench: services, a private FerretDB and Redis,
measured child processes, command counting.

The benchmarks use the PostgreSQL and Mailpit that `scripts/services up`
started, but a FerretDB and a redis-server of their own (same binaries;
FerretDB on a PostgreSQL database of its own, `ferretdb_bench`): the
benchmarks load FerretDB far harder than the tests do, and a FerretDB 1.24 can
wedge for good (see BENCH_NOTES in snooze.py), which must not take the shared
test services down with it; and the integration tests stop and restart the
shared Redis, which must not drop a benchmark's lease and queues mid-tick.
--shared-services uses the shared FerretDB and Redis instead.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pymongo
from pymongo import monitoring

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
SERVICES_ENV = REPO / ".services.env"
SERVICES_STATE = REPO / ".services" / "state"
FERRETDB_BIN = CACHE / "bin" / "ferretdb"
BENCH_PG_DB = "ferretdb_bench"
# The index-served test database (scripts/services.d/gin-indexes.sql).
GIN_SQL = REPO / "scripts" / "services.d" / "gin-indexes.sql"
# FerretDB 1.x defaults to 50; lower here so that the bench instance and the
# shared one fit in PostgreSQL's default max_connections (100) together.
POOL_MAX_CONNS = 40


def say(*a, **kw):
    print(*a, **kw, flush=True)


def warn(*a):
    print(*a, file=sys.stderr, flush=True)


def die(msg: str, code: int = 1):
    warn(f"error: {msg}")
    sys.exit(code)


def read_kv(path: Path) -> dict[str, str]:
    vals = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            v = m.group(2).strip()
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
                v = v[1:-1]
            vals[m.group(1)] = v
    return vals


def load_services() -> dict[str, str]:
    if not SERVICES_ENV.is_file() or not SERVICES_STATE.is_file():
        die(f"{SERVICES_ENV} missing: run scripts/services up")
    env = read_kv(SERVICES_ENV)
    env.update({f"STATE_{k}": v for k, v in read_kv(SERVICES_STATE).items()})
    for k in ("MONGO_DB_URL", "REDIS_PORT", "STATE_PG_PORT"):
        if not env.get(k):
            die(f"{k} unknown: run scripts/services up")
    env.setdefault("REDIS_HOST", "127.0.0.1")
    return env


def url_with_db(url: str, db: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + db, p.query, p.fragment))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def psql_path() -> str:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "psql").exists():
            return str(d / "psql")
    p = shutil.which("psql")
    if not p:
        die("psql not found (PostgreSQL client)")
    return p


class Postgres:
    """The services' PostgreSQL, for the bench's own database and VACUUM."""

    def __init__(self, port: str):
        self.port = port
        self.psql = psql_path()

    def run(self, db: str, sql: str, timeout: float = 600) -> str:
        cp = subprocess.run([self.psql, "-X", "-q", "-At", "-h", "127.0.0.1", "-p", str(self.port),
                             "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql],
                            capture_output=True, text=True, timeout=timeout)
        if cp.returncode != 0:
            raise RuntimeError(f"psql ({db}): {sql}: {cp.stderr.strip()}")
        return cp.stdout

    def ensure_db(self, db: str):
        if self.run("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{db}'").strip() != "1":
            self.run("postgres", f"CREATE DATABASE {db} ENCODING 'UTF8' LC_COLLATE 'C' "
                                 f"LC_CTYPE 'C' TEMPLATE template0")

    def vacuum(self, db: str, schema: str):
        tables = self.run(db, "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) "
                              f"FROM pg_tables WHERE schemaname = '{schema}'").split()
        if tables:
            self.run(db, "VACUUM (ANALYZE) " + ", ".join(tables))

    def gin(self, db: str, on: bool, schemas=()):
        """The index-served database on (the GIN twins of FerretDB's indexes:
        event trigger, and the twins of the indexes in `schemas` now) or off
        (trigger and twins dropped: FerretDB as it sets itself up)."""
        if on:
            cp = subprocess.run([self.psql, "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port),
                                 "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-f", str(GIN_SQL)],
                                capture_output=True, text=True, timeout=600,
                                env=dict(os.environ, PGOPTIONS="-c client_min_messages=warning"))
            if cp.returncode != 0:
                raise RuntimeError(f"psql ({db}) -f {GIN_SQL}: {cp.stderr.strip()}")
            for s in schemas:
                self.run(db, f"SELECT public.supportd_gin_for_schema('{s}')")
            return
        self.run(db, "DROP EVENT TRIGGER IF EXISTS supportd_gin")
        for s in schemas:
            names = self.run(db, f"SELECT indexname FROM pg_indexes WHERE schemaname = '{s}' "
                                 "AND indexdef LIKE '% USING gin %'").split()
            if names:
                self.run(db, "DROP INDEX " + ", ".join(f'"{s}"."{n}"' for n in names))

    def connections(self, db: str) -> int:
        return int(self.run("postgres", "SELECT count(*) FROM pg_stat_activity "
                                        f"WHERE datname = '{db}'").strip() or 0)


def ping(url: str, timeout_s: float) -> bool:
    """True when FerretDB answers a ping. FerretDB 1.x takes a PostgreSQL
    connection from its pool for a ping, so a wedged pool fails it."""
    ms = int(timeout_s * 1000)
    try:
        c = pymongo.MongoClient(url, directConnection=True, serverSelectionTimeoutMS=ms,
                                connectTimeoutMS=ms, socketTimeoutMS=ms)
        try:
            c.admin.command("ping")
            return True
        finally:
            c.close()
    except Exception:
        return False


class PrivateFerretDB:
    """A FerretDB process started (and stopped, by its pid) by the bench."""

    def __init__(self, pg: Postgres, log_dir: Path):
        self.pg = pg
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self):
        if not FERRETDB_BIN.exists():
            die(f"{FERRETDB_BIN} missing: run scripts/setup")
        self.pg.ensure_db(BENCH_PG_DB)
        self.port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / "ferretdb.log", "ab")
        self.proc = subprocess.Popen(
            [str(FERRETDB_BIN), "--handler=postgresql",
             f"--postgresql-url=postgres://postgres@127.0.0.1:{self.pg.port}/{BENCH_PG_DB}"
             f"?pool_max_conns={POOL_MAX_CONNS}&plan_cache_mode=force_custom_plan",
             f"--listen-addr=127.0.0.1:{self.port}", "--debug-addr=-", "--state-dir=-",
             "--telemetry=disable", "--log-level=error"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.log_dir)
        log.close()
        deadline = time.monotonic() + 60
        while not ping(self.url, 1.5):
            if self.proc.poll() is not None:
                die(f"private FerretDB exited at startup (log: {self.log_dir / 'ferretdb.log'})")
            if time.monotonic() > deadline:
                self.stop()
                die("private FerretDB did not answer within 60 s")
            time.sleep(0.2)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self):
        self.stop()
        self.restarts += 1
        self.start()


class PrivateRedis:
    """A redis-server started (and stopped, by its pid) by the bench: the
    integration tests stop and restart the shared one (scripts/services
    stop-redis), which would drop a running tick's lease and queues."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self):
        binary = shutil.which("redis-server")
        if not binary:
            die("redis-server not found (scripts/setup installs it)")
        self.port = free_port()
        d = self.log_dir / "redis"
        d.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / "redis.log", "ab")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--daemonize", "no",
                                      "--dir", str(d)],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        import redis
        deadline = time.monotonic() + 30
        while True:
            try:
                if redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping():
                    return
            except Exception:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                die(f"private redis-server did not start (log: {self.log_dir / 'redis.log'})")
            time.sleep(0.1)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a pymongo client sends (like mongoc's APM
    command-started callback that supportd counts)."""

    def __init__(self):
        self.n = 0
        self.by_name: dict[str, int] = {}

    def started(self, event):
        self.n += 1
        self.by_name[event.command_name] = self.by_name.get(event.command_name, 0) + 1

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass

    def reset(self):
        self.n = 0
        self.by_name = {}


class Watchdog:
    """Pings FerretDB while something runs; `wedged` turns true after
    `misses` pings in a row fail to answer within `timeout_s`."""

    def __init__(self, url: str, every_s: float = 5, timeout_s: float = 10, misses: int = 2):
        self.url, self.every_s, self.timeout_s, self.misses = url, every_s, timeout_s, misses
        self.wedged = threading.Event()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        missed = 0
        while not self._stop.wait(self.every_s):
            if ping(self.url, self.timeout_s):
                missed = 0
            else:
                missed += 1
                if missed >= self.misses:
                    self.wedged.set()
                    return

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(self.timeout_s + 5)


def vm_hwm_kb(pid: int) -> int:
    """The process's peak RSS so far (VmHWM: its own address space's high-water mark since
    exec), 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(argv: list[str], env: dict, cwd: Path, stderr_path: Path, timeout_s: float,
                 abort: threading.Event | None = None) -> dict:
    """Runs a child to completion and returns its exit code, wall time, its own CPU
    (os.wait4: this child only) and its peak RSS. The peak is VmHWM sampled while it runs,
    not ru_maxrss: Linux carries the forking parent's RSS into the child's ru_maxrss across
    exec, so a child of this (large) Python process reported the benchmark's own memory —
    every "peak RSS" in the README before 2026-12 was that. Kills it (by pid) on timeout or
    when `abort` is set."""
    with open(stderr_path, "wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    killed = None
    hwm = 0
    while True:
        hwm = max(hwm, vm_hwm_kb(proc.pid))
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.monotonic() - t0 > timeout_s:
            killed = "timeout"
        elif abort is not None and abort.is_set():
            killed = "ferretdb-wedged"
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
            pid, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
            "maxrss_kb": hwm, "killed": killed}


def log_events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        s = line.strip()
        if s.startswith("{"):
            try:
                out.append(json.loads(s))
            except ValueError:
                pass
    return out
