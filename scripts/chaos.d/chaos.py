#!/usr/bin/env python3
"""scripts/chaos: all four jobs and the HTTP door of K `supportd run` instances under a
platform-like workload and random faults, then every guarantee checked (check.py).

Deterministic for a seed: the workload's choices come from random.Random(f"{seed}:work"),
the fault schedule from random.Random(f"{seed}:faults") (made up front), the door a webhook
goes to from random.Random(f"{seed}:doors"). What supportd does in between (timing, provider
ids) is not, so two runs of one seed inject the same faults at the same offsets and make the
same workload choices until a timing-dependent branch (a platform write retried through a
restart, a revoked key skipping an e-mail reply) shifts the later ones.

The binary: --binary, else SUPPORTD_BIN, else the static release build
(zig-out/static/bin/supportd) when present, else the sanitized build with gcc's libasan
preloaded. The 64 MiB peak-RSS bound and the RSS growth check are judged only for a binary
without AddressSanitizer (its shadow memory and quarantine are most of an ASan process's RSS);
threads and fds are judged for every binary.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

import pymongo
import redis
import requests
from bson import ObjectId
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twilio.request_validator import RequestValidator

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import check  # noqa: E402

FAKE = REPO / "tests" / "fakes" / "provider_fake.py"
PUBLIC = "https://hooks.chaos.example"
TWILIO_PATH = "/webhooks/twilio/status"
SENDGRID_PATH = "/webhooks/sendgrid/events"
SG_SIG = "X-Twilio-Email-Event-Webhook-Signature"
SG_TS = "X-Twilio-Email-Event-Webhook-Timestamp"
CONVS, MSGS, ROOMS, CHANNELS = ("conversation-conversation", "conversation-message",
                                "conversation-room", "conversation-channel")
LEASE_TTL = 4            # seconds (QM_SUPPORT_LEASE_TTL): SIGSTOP lasts longer than this
HTTP_TIMEOUT_MS = 3000   # QM_SUPPORT_HTTP_TIMEOUT_MS: the "timeout" fault waits longer
JOBS_CRON = {"SNOOZE": "*/2 * * * * *", "MESSAGE_STATUS": "*/2 * * * * *",
             "NOTIFICATION": "*/2 * * * * *", "COMMUNICATION_CHECK": "*/3 * * * * *"}


def say(*a):
    print(*a, flush=True)


def now() -> datetime:
    t = datetime.now(timezone.utc)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def read_kv(path: Path) -> dict:
    vals = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            vals[m.group(1)] = m.group(2).strip().strip("'\"")
    return vals


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ fake ----

class Fake:
    def __init__(self, logdir: Path, name: str = "provider_fake"):
        self.proc = subprocess.Popen([sys.executable, str(FAKE)], stdout=subprocess.PIPE,
                                     stderr=open(logdir / f"{name}.log", "wb"),
                                     stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"provider fake did not start: {line!r}")
        self.base = f"http://127.0.0.1:{int(line.split()[1])}"

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------- instances ----

class Instance:
    """One `supportd run` slot: restarted processes keep the slot's port."""

    def __init__(self, run: "Run", idx: int):
        self.run, self.idx = run, idx
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.procs: list[dict] = []   # {pid, log, started, ended, rc, expected_exit}
        self.stopped = False          # SIGSTOPped
        self.lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> bool:
        n = len(self.procs)
        log = self.run.logdir / f"instance{self.idx}.{n}.log"
        env = self.run.instance_env(self.port)
        fh = open(log, "wb")
        self.proc = subprocess.Popen([self.run.binary, "run"], env=env, cwd=self.run.workdir,
                                     stdin=subprocess.DEVNULL, stdout=fh, stderr=fh,
                                     start_new_session=True)
        fh.close()
        rec = {"pid": self.proc.pid, "log": str(log), "started": time.time(), "ended": None,
               "rc": None, "expected_exit": False, "slot": self.idx}
        self.procs.append(rec)
        self.stopped = False
        if not wait:
            return True
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.reap()
                return False
            if b'"http.listening"' in log.read_bytes():
                return True
            time.sleep(0.1)
        return False

    def reap(self):
        if self.proc is not None and self.proc.poll() is not None and self.procs[-1]["ended"] is None:
            self.procs[-1]["ended"] = time.time()
            self.procs[-1]["rc"] = self.proc.returncode

    def signal(self, sig: int):
        if self.alive:
            os.kill(self.proc.pid, sig)

    def kill9(self):
        if self.alive:
            self.procs[-1]["expected_exit"] = True
            if self.stopped:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.reap()

    def term(self, timeout: float = 40) -> int | None:
        """SIGTERM and wait; a process that does not exit in time is a finding (kept
        running: the caller reports it), never silently killed."""
        if not self.alive:
            self.reap()
            return None
        self.procs[-1]["expected_exit"] = True
        if self.stopped:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.stopped = False
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.procs[-1]["hung_on_term"] = True
            self.proc.kill()
            self.proc.wait(timeout=30)
            rc = self.proc.returncode
        self.reap()
        return rc


# ------------------------------------------------------------------- run ----

class Run:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed
        self.work_rng = random.Random(f"{args.seed}:work")
        self.fault_rng = random.Random(f"{args.seed}:faults")
        svc = REPO / ".services.env"
        if not svc.is_file():
            raise SystemExit("scripts/chaos: .services.env missing: run scripts/services up")
        self.services = read_kv(svc)
        self.state = read_kv(REPO / ".services" / "state")
        self.binary, self.preload = self.pick_binary()
        self.asan = self.preload is not None or b"__asan_init" in Path(self.binary).read_bytes()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"supportd-chaos-{args.seed}-"))
        self.logdir = self.workdir / "logs"
        self.logdir.mkdir()
        tag = uuid.uuid4().hex[:8]
        self.db_name = f"chaos_{args.seed}_{tag}"
        self.prefix = f"chaos{tag}:"
        base = self.services["MONGO_DB_URL"].rsplit("/", 1)[0]
        self.mongo_url = f"{base}/{self.db_name}"
        self.mongo = pymongo.MongoClient(self.mongo_url, tz_aware=True,
                                         serverSelectionTimeoutMS=30000)
        self.db = self.mongo[self.db_name]
        self.redis = redis.Redis(host=self.services.get("REDIS_HOST", "127.0.0.1"),
                                 port=int(self.services["REDIS_PORT"]), decode_responses=True,
                                 socket_timeout=5, socket_connect_timeout=5)
        self.rules = self.workdir / "rules"
        self.fake = Fake(self.logdir)
        # The platform's own sends (agent replies) go through a provider account of their
        # own, so that the faults queued for supportd's requests never hit them.
        self.platform_fake = Fake(self.logdir, "platform_fake")
        u = uuid.uuid4().hex
        self.twilio_sid = "AC" + u[:32]
        self.twilio_token = f"chaos-twilio-token-{u[:12]}"
        self.sendgrid_key = f"SG.chaos-sendgrid-key-{u[:12]}"
        self.sg_private = ec.generate_private_key(ec.SECP256R1())
        der = self.sg_private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.sg_public = base64.b64encode(der).decode()
        self.validator = RequestValidator(self.twilio_token)
        self.instances = [Instance(self, i) for i in range(args.instances)]
        self.samples: dict[int, list] = {}      # pid -> [(t, rss_kb, threads, fds)]
        self.lock = threading.Lock()
        self.faults: list[dict] = []            # {kind, at, detail}
        self.items: dict[str, int] = {}
        self.events: dict[str, dict] = {}       # event id -> {mid, pmid, accepted_at, ...}
        self.forged_ids: set[str] = set()
        self.bad_stream_ids: set[str] = set()   # stream entry ids we appended as bad
        self.bad_bodies: set[str] = set()       # bodies of deliberately bad entries
        self.redis_losses: list[dict] = []      # {at, saved_at, stream_event_ids}
        self.rules_broken = threading.Event()
        self.rule_windows: list[dict] = []
        self.stop_faults = threading.Event()
        self.faults_paused = threading.Lock()
        self.start_time = time.time()

    # -- setup --
    def pick_binary(self):
        chosen = self.args.binary or os.environ.get("SUPPORTD_BIN")
        if chosen:
            chosen = str(Path(chosen).resolve())  # the instances run in the run's folder
            preload = os.environ.get("SUPPORTD_LD_PRELOAD")
            if not preload and b"__asan_init" in Path(chosen).read_bytes():
                # an ASan build needs gcc's runtime loaded first (conftest.py does the same)
                preload = subprocess.run(["gcc", "-print-file-name=libasan.so"],
                                         capture_output=True, text=True,
                                         check=True).stdout.strip()
            return chosen, preload
        static = REPO / "zig-out" / "static" / "bin" / "supportd"
        if static.is_file():
            return str(static), None
        san = REPO / "zig-out" / "sanitize" / "bin" / "supportd"
        if not san.is_file():
            raise SystemExit("scripts/chaos: no supportd binary (build it, or set SUPPORTD_BIN)")
        asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                              text=True, check=True).stdout.strip()
        return str(san), asan

    def count(self, kind: str, n: int = 1):
        with self.lock:
            self.items[kind] = self.items.get(kind, 0) + n

    def fault(self, kind: str, **detail):
        with self.lock:
            self.faults.append({"kind": kind, "at": round(time.time() - self.start_time, 1),
                                **detail})
        say(f"  [{time.time() - self.start_time:6.1f}s] fault {kind} {detail or ''}")

    def instance_env(self, port: int) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("QM_SUPPORT_", "MONGO_", "REDIS_", "TWILIO_", "SENDGRID_",
                                    "SMTP_"))
               and k not in ("LD_PRELOAD", "LOG_LEVEL", "LOG_FORMAT")}
        env.update({
            "MONGO_DB_URL": self.mongo_url,
            "REDIS_HOST": self.services.get("REDIS_HOST", "127.0.0.1"),
            "REDIS_PORT": self.services["REDIS_PORT"],
            "QM_SUPPORT_REDIS_PREFIX": self.prefix,
            "QM_SUPPORT_RULES_DIR": str(self.rules),
            "QM_SUPPORT_HTTP_LISTEN": f"127.0.0.1:{port}",
            "QM_SUPPORT_PUBLIC_URL": PUBLIC,
            "QM_SUPPORT_LEASE_TTL": str(LEASE_TTL),
            "QM_SUPPORT_HTTP_TIMEOUT_MS": str(HTTP_TIMEOUT_MS),
            "QM_SUPPORT_EMAIL_PROVIDER": "sendgrid",
            "QM_SUPPORT_EMAIL_FROM": "support@chaos.example",
            "TWILIO_API_BASE": self.fake.base, "SENDGRID_API_BASE": self.fake.base,
            "TWILIO_ACCOUNT_SID": self.twilio_sid, "TWILIO_AUTH_TOKEN": self.twilio_token,
            "SENDGRID_API_KEY": self.sendgrid_key,
            "SENDGRID_WEBHOOK_PUBLIC_KEY": self.sg_public,
            "LOG_LEVEL": "info", "LOG_FORMAT": "json", "MONGOC_DISABLE_SHM": "1",
        })
        for job, cron in JOBS_CRON.items():
            env[f"QM_SUPPORT_{job}"] = "true"
            env[f"QM_SUPPORT_{job}_CRON"] = cron
        if self.preload:
            env["LD_PRELOAD"] = self.preload
        return env

    def make_rules(self):
        """A copy of rules/ with targets a run can reach: urgent tickets are in their warning
        window at once and breach their first response after a minute; failed messages are
        re-sent after seconds."""
        shutil.copytree(REPO / "rules", self.rules, ignore=shutil.ignore_patterns("fixtures"))
        sla = (self.rules / "sla.lua").read_text()
        sla = sla.replace("urgent = { first_response = 30,  resolution = 240 }",
                          "urgent = { first_response = 1,  resolution = 3 }")
        sla = sla.replace("M.warn_before = 15 ", "M.warn_before = 1 ")
        sla = re.sub(r"M\.tests = \{.*?\n\}\n", "M.tests = {}\n", sla, flags=re.S)
        assert "first_response = 1," in sla and "M.warn_before = 1 " in sla
        (self.rules / "sla.lua").write_text(sla)
        retry = (self.rules / "retry.lua").read_text()
        # Seconds, yet longer than a timed-out send (QM_SUPPORT_HTTP_TIMEOUT_MS) plus the time
        # the fake takes to create a message after the client gave up: the look-up before a
        # re-send must be able to see it (README "Chaos run").
        retry = retry.replace("M.backoff_seconds = 60", "M.backoff_seconds = 10")
        retry = re.sub(r"M\.tests = \{.*?\n\}\n", "M.tests = {}\n", retry, flags=re.S)
        assert "M.backoff_seconds = 10" in retry
        (self.rules / "retry.lua").write_text(retry)
        cp = subprocess.run([self.binary, "rules", "check", str(self.rules)],
                            env={**os.environ, **({"LD_PRELOAD": self.preload} if self.preload else {})},
                            capture_output=True, text=True)
        if cp.returncode != 0:
            raise SystemExit(f"the chaos rules do not load:\n{cp.stdout}{cp.stderr}")

    def seed_world(self):
        self.rooms = []
        numbers, domains = [], []
        for r in range(2):
            rid = ObjectId()
            agents = [{"user_id": ObjectId(), "name": f"Agent {r}{a}",
                       "email": f"agent{r}{a}@chaos.example", "role": "agent"} for a in range(2)]
            manager = {"user_id": ObjectId(), "name": f"Manager {r}",
                       "email": f"manager{r}@chaos.example", "role": "manager"}
            self.db[ROOMS].insert_one({
                "_id": rid, "name": f"Chaos room {r}", "timezone": "UTC", "business_hours": None,
                "holidays": None, "members": agents + [manager],
                "email_from": f"support{r}@room{r}.chaos.example", "sla_policy": "default"})
            phone = f"+1555000{r:04d}"
            hook = f"{self.fake.base}/hooks/room{r}"
            sms = {"_id": ObjectId(), "room_id": rid, "type": "sms", "provider": "twilio",
                   "phone_number": phone, "account_sid": self.twilio_sid, "webhook_url": hook,
                   "active": True}
            dom = f"room{r}.chaos.example"
            email = {"_id": ObjectId(), "room_id": rid, "type": "email", "provider": "sendgrid",
                     "from_email": f"support{r}@{dom}", "domain": dom, "domain_id": 100 + r,
                     "webhook_url": hook, "active": True}
            self.db[CHANNELS].insert_many([sms, email])
            numbers.append({"sid": "PN" + uuid.uuid4().hex, "phone_number": phone,
                            "status": "in-use",
                            "capabilities": {"sms": True, "mms": False, "voice": True,
                                             "fax": False},
                            "sms_url": hook, "sms_application_sid": None})
            domains.append({"id": 100 + r, "domain": dom, "valid": True,
                            "dns": {"dkim1": {"valid": True, "type": "cname",
                                              "host": f"s1._domainkey.{dom}", "data": "s1.x"}}})
            self.rooms.append({"_id": rid, "agents": agents, "manager": manager, "phone": phone,
                               "from_email": f"support{r}@{dom}", "sms": sms["_id"],
                               "email": email["_id"], "domain": domains[-1]})
        self.fake_state = {"twilio_sid": self.twilio_sid, "twilio_token": self.twilio_token,
                           "sendgrid_key": self.sendgrid_key, "balance": "50.00",
                           "numbers": numbers, "domains": domains}
        self.fake.call("POST", "/_fake/reset", self.fake_state)
        self.platform_fake.call("POST", "/_fake/reset", self.fake_state)

    # -- sampling --
    def sampler(self, stop: threading.Event):
        while not stop.is_set():
            t = time.time()
            for inst in self.instances:
                p = inst.proc
                if p is None or p.poll() is not None:
                    continue
                try:
                    st = Path(f"/proc/{p.pid}/status").read_text()
                    rss = int(re.search(r"VmRSS:\s+(\d+)", st).group(1))
                    thr = int(re.search(r"Threads:\s+(\d+)", st).group(1))
                    fds = len(os.listdir(f"/proc/{p.pid}/fd"))
                except (OSError, AttributeError):
                    continue
                with self.lock:
                    self.samples.setdefault(p.pid, []).append((t, rss, thr, fds))
            stop.wait(max(0.0, 1.0 - (time.time() - t)))

    # -- the services --
    def services_cmd(self, *args) -> bool:
        cp = subprocess.run([str(REPO / "scripts" / "services"), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL, start_new_session=True)
        if cp.returncode != 0:
            say(f"  scripts/services {' '.join(args)} failed: {cp.stdout}{cp.stderr}")
        return cp.returncode == 0

    def redis_ok(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    def stream_event_ids(self) -> set[str]:
        """The event ids of the entries in status-events right now (what a Redis that
        loses its data takes with it)."""
        out = set()
        try:
            for _, f in self.redis.xrange(self.prefix + "status-events"):
                out |= check.entry_event_ids(f)
        except redis.RedisError:
            pass
        return out


# ------------------------------------------------------------- workload ----

class Workload:
    """The platform: tickets and their life, messages, webhooks, channel health."""

    STATUSES_TW = ["sent", "delivered", "read"]

    def __init__(self, run: Run):
        self.run = run
        self.rng = run.work_rng
        self.door_rng = random.Random(f"{run.seed}:doors")
        self.tickets: dict[ObjectId, dict] = {}
        self.messages: dict[ObjectId, dict] = {}   # outbound: {doc, provider, pmids, plan}
        self.by_pmid: dict[str, ObjectId] = {}
        self.delayed: list[tuple[float, callable]] = []
        self.sent_requests: list[tuple] = []       # (provider, target, body, headers) for replays
        self.n = 0
        self.health: dict[str, float] = {}         # flip kind -> until
        self.sg_seq = 0
        self.retry_posts: list[tuple[float, tuple]] = []

    # -- helpers --
    def pick(self, pred) -> dict | None:
        c = [t for t in self.tickets.values() if pred(t)]
        return self.rng.choice(sorted(c, key=lambda t: t["_id"])) if c else None

    @staticmethod
    def retrying(fn):
        """A platform write, retried while the database restarts (as the platform's own
        code would); an insert that landed before its answer was lost is done."""
        deadline = time.time() + 90
        while True:
            try:
                return fn()
            except pymongo.errors.DuplicateKeyError:
                return None
            except pymongo.errors.PyMongoError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def insert(self, coll: str, doc: dict):
        self.retrying(lambda: self.run.db[coll].insert_one(doc))

    def update(self, t: dict, **fields):
        fields["updated_at"] = now()
        self.retrying(lambda: self.run.db[CONVS].update_one({"_id": t["_id"]}, {"$set": fields}))

    # -- tickets --
    def create(self):
        self.n += 1
        room = self.rng.choice(self.run.rooms)
        prio = self.rng.choices(["low", "normal", "high", "urgent"], [2, 4, 2, 2])[0]
        channel = self.rng.choice(["email", "sms"])
        assignee = self.rng.choice(room["agents"]) if self.rng.random() < 0.5 else None
        t0 = now()
        cid = ObjectId()
        doc = {"_id": cid, "room_id": room["_id"], "subject": f"Chaos ticket {self.n}",
               "channel": channel, "status": "open", "priority": prio,
               "assignee_id": assignee["user_id"] if assignee else None,
               "contact": {"name": f"Customer {self.n}",
                           "email": f"customer{self.n}@example.org",
                           "phone": f"+1666{self.n:07d}"},
               "created_at": t0, "updated_at": t0, "first_response_at": None,
               "resolved_at": None, "last_customer_message_at": t0,
               "last_agent_message_at": None, "escalation_level": 0}
        if assignee:
            doc["assigned_at"] = t0
            doc["assigned_by"] = (assignee["user_id"] if self.rng.random() < 0.3
                                  else room["manager"]["user_id"])
        self.insert(CONVS, doc)
        self.tickets[cid] = {"_id": cid, "room": room, "status": "open", "priority": prio,
                             "channel": channel, "n": self.n, "snoozed": False,
                             "breacher": prio == "urgent" and self.rng.random() < 0.6,
                             "contact": doc["contact"], "subject": doc["subject"]}
        self.run.count("ticket created")
        if prio == "urgent":
            self.run.count("urgent ticket")

    def assign(self):
        t = self.pick(lambda t: t["status"] in ("open", "pending"))
        if not t:
            return
        agent = self.rng.choice(t["room"]["agents"])
        selfa = self.rng.random() < 0.3
        self.update(t, assignee_id=agent["user_id"], assigned_at=now(),
                    assigned_by=agent["user_id"] if selfa else t["room"]["manager"]["user_id"])
        self.run.count("self-assigned" if selfa else "assigned")

    def snooze(self):
        t = self.pick(lambda t: t["status"] in ("open", "pending") and not t["snoozed"]
                      and not t["breacher"])
        if not t:
            return
        at = now()
        until = at + timedelta(seconds=self.rng.randint(3, 10))
        agent = self.rng.choice(t["room"]["agents"])
        self.update(t, status="snoozed", priority="low",
                    snooze={"until": until, "original_priority": t["priority"],
                            "original_status": t["status"], "by": agent["user_id"], "at": at})
        t.update(status="snoozed", snoozed=True, snooze_until=until)
        self.run.count("snoozed")

    def customer_message(self):
        t = self.pick(lambda t: t["status"] != "closed")
        if not t:
            return
        at = now()
        self.insert(MSGS, {
            "_id": ObjectId(), "conversation_id": t["_id"], "room_id": t["room"]["_id"],
            "direction": "inbound", "channel": "sms" if t["channel"] == "sms" else "email",
            "provider": "twilio" if t["channel"] == "sms" else "sendgrid",
            "provider_message_id": None, "to": "support", "from": "customer",
            "body": f"customer message on ticket {t['n']}", "status": "delivered",
            "status_history": [], "error": None, "attempts": 0, "next_retry_at": None,
            "final": True, "created_at": at, "updated_at": at})
        self.update(t, last_customer_message_at=at)
        if t["status"] == "snoozed":
            # wakes it early (notify.lua's wake_on_customer_message)
            t["status"] = "woken"
        self.run.count("customer message")

    def agent_reply(self):
        t = self.pick(lambda t: t["status"] in ("open", "pending") and not t["breacher"])
        if not t:
            return
        sms = t["channel"] == "sms" or self.rng.random() < 0.3
        if not sms and "revoked_key" in self.health:
            return  # the platform's SendGrid key is revoked too
        mid = ObjectId()
        body = f"agent reply {mid} on ticket {t['n']}"
        room = t["room"]
        if sms:
            frm, to = room["phone"], t["contact"]["phone"]
            r = requests.post(f"{self.run.platform_fake.base}/2010-04-01/Accounts/{self.run.twilio_sid}/Messages.json",
                              data={"To": to, "From": frm, "Body": body}, timeout=10,
                              auth=(self.run.twilio_sid, self.run.twilio_token))
            if r.status_code != 201:
                return
            pmid, provider = r.json()["sid"], "twilio"
        else:
            frm, to = room["from_email"], t["contact"]["email"]
            r = requests.post(f"{self.run.platform_fake.base}/v3/mail/send", timeout=10,
                              headers={"Authorization": f"Bearer {self.run.sendgrid_key}"},
                              json={"personalizations": [{"to": [{"email": to}]}],
                                    "from": {"email": frm}, "subject": f"Re: {t['subject']} [{mid}]",
                                    "content": [{"type": "text/plain", "value": body}]})
            if r.status_code != 202:
                return
            pmid, provider = r.headers["X-Message-Id"], "sendgrid"
        at = now()
        doc = {"_id": mid, "conversation_id": t["_id"], "room_id": room["_id"],
               "direction": "outbound", "channel": "sms" if sms else "email",
               "provider": provider, "provider_message_id": pmid, "to": to, "from": frm,
               "subject": None if sms else f"Re: {t['subject']} [{mid}]", "body": body,
               "status": "sent", "status_history": [{"status": "sent", "at": at, "source": "send"}],
               "error": None, "attempts": 1, "next_retry_at": None, "final": False,
               "sent_at": at, "created_at": at, "updated_at": at}
        m = {"_id": mid, "provider": provider, "pmids": [pmid], "body": body, "done": set(),
             "failed": False, "plan": self.plan(provider)}
        self.messages[mid] = m
        self.by_pmid[pmid] = mid

        def write():
            self.insert(MSGS, doc)
            self.update(t, last_agent_message_at=at,
                        **({} if t.get("responded") else {"first_response_at": at}))
            t["responded"] = True
        if self.rng.random() < 0.25:
            # the webhook beats the platform's write of the provider id
            self.delayed.append((time.time() + self.rng.uniform(2, 6), write))
            self.webhook_for(m)
            self.run.count("late webhook (before its message)")
        else:
            write()
        self.run.count("agent reply")

    def plan(self, provider: str) -> list[str]:
        r = self.rng.random()
        if provider == "twilio":
            if r < 0.2:
                return ["sent", "failed:30003"]
            if r < 0.3:
                return ["delivered", "sent", "read"]  # out of order
            return ["sent", "delivered", "read"][: self.rng.randint(1, 3)]
        if r < 0.2:
            return ["processed", "bounce:blocked"]
        if r < 0.3:
            return ["open", "delivered", "processed"]
        return ["processed", "delivered", "open"][: self.rng.randint(1, 3)]

    def set_status(self, status: str, **extra):
        t = self.pick(lambda t: t["status"] in ({"resolved"} if status == "closed"
                                                else {"open", "pending"}))
        if not t:
            return
        if status == "resolved" and t["breacher"] and self.rng.random() < 0.8:
            return
        self.update(t, status=status, **extra)
        t["status"] = status
        t["paused"] = True  # the SLA clock stopped (check.py expects no breach then)
        self.run.count(f"ticket {status}")

    # -- webhooks --
    def discover_resends(self):
        """Re-sends supportd made (new provider ids at the fake, same body)."""
        try:
            sent = self.run.fake.call("GET", "/_fake/sent")
        except OSError:
            return
        bodies = {m["body"]: mid for mid, m in self.messages.items()}
        for x in sent["twilio"]:
            mid = bodies.get(x.get("body"))
            if mid and x["sid"] not in self.by_pmid:
                self.found_resend(mid, x["sid"])
        for x in sent["sendgrid"]:
            content = (x["json"].get("content") or [{}])[0].get("value")
            mid = bodies.get(content)
            if mid and x["message_id"] not in self.by_pmid:
                self.found_resend(mid, x["message_id"])

    def found_resend(self, mid, pmid):
        m = self.messages[mid]
        self.by_pmid[pmid] = mid
        m["pmids"].append(pmid)
        m["failed"] = False
        m["done"] = set()
        m["plan"] = (["sent", "delivered"] if m["provider"] == "twilio"
                     else ["processed", "delivered"])
        self.run.count("re-send seen at the provider")

    def twilio_request(self, sid: str, status: str, forge=False, token=None):
        params = {"AccountSid": self.run.twilio_sid, "ApiVersion": "2010-04-01",
                  "MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
                  "To": "+15551230000", "From": "+15557650000"}
        if status.startswith("failed:"):
            params["MessageStatus"] = params["SmsStatus"] = "failed"
            params["ErrorCode"] = status.split(":")[1]
        body = urlencode(params)
        v = RequestValidator(token) if token else self.run.validator
        sig = v.compute_signature(PUBLIC + TWILIO_PATH, params)
        return TWILIO_PATH, body, {"X-Twilio-Signature": sig,
                                   "Content-Type": "application/x-www-form-urlencoded"}

    def sg_event(self, pmid: str, status: str, eid: str | None = None) -> dict:
        self.sg_seq += 1
        ev = {"email": "x@example.org", "timestamp": int(time.time()),
              "sg_event_id": eid or f"chaos-{self.run.seed}-{self.sg_seq}",
              "sg_message_id": f"{pmid}.filterdrecv-{self.sg_seq}.0"}
        if status.startswith("bounce:"):
            ev.update(event="bounce", type=status.split(":")[1], reason="452 mailbox full",
                      status="4.2.2")
        else:
            ev["event"] = status
        return ev

    def sendgrid_request(self, events, ts=None, forge=False):
        ts = str(ts if ts is not None else int(time.time()))
        payload = json.dumps(events) + "\r\n"
        key = ec.generate_private_key(ec.SECP256R1()) if forge else self.run.sg_private
        sig = base64.b64encode(key.sign((ts + payload).encode(),
                                        ec.ECDSA(hashes.SHA256()))).decode()
        return SENDGRID_PATH, payload, {SG_SIG: sig, SG_TS: ts, "Content-Type": "application/json"}

    def post(self, req, expect: int, events: list[tuple[str, ObjectId, str]] | None = None,
             attempt: int = 0):
        """POSTs to a random instance's door (another one when it does not answer, as a load
        balancer would); 503 is retried later, as the providers do."""
        target, body, headers = req
        order = list(self.run.instances)
        self.door_rng.shuffle(order)  # its own stream: retries must not shift the workload's
        code = None
        for inst in order:
            if not inst.alive or inst.stopped:
                continue
            try:
                r = requests.post(inst.base + target, data=body.encode(), headers=headers,
                                  timeout=3)
                code = r.status_code
                break
            except requests.RequestException:
                continue
        if code is None or code == 503:
            if attempt < 20:
                self.retry_posts.append((time.time() + 2, (req, expect, events, attempt + 1)))
            self.run.count("webhook retried (door down or 503)")
            return
        if code != expect:
            self.run.count(f"webhook answered {code}, expected {expect}")
            check.note_door(self.run, target, code, expect, body)
        if code == 204 and events:
            t = time.time()
            for eid, mid, pmid in events:
                e = self.run.events.setdefault(eid, {"mid": mid, "pmid": pmid,
                                                     "accepted_at": t})
                e.setdefault("accepted_at", t)
        self.sent_requests.append(req)

    def webhook_for(self, m: dict):
        pmid = m["pmids"][-1]
        todo = [s for s in m["plan"] if s not in m["done"]]
        if not todo or m["failed"]:
            return False
        if len(m["pmids"]) > 1:
            # a re-send seen at the provider gets its callbacks once supportd has recorded it;
            # one it never records (an answer lost, README "Chaos run") is left to invariant 1
            doc = self.run.db[MSGS].find_one({"_id": m["_id"]}, {"provider_message_id": 1})
            if not doc or doc.get("provider_message_id") != pmid:
                return False
        status = todo[0] if self.rng.random() < 0.8 else self.rng.choice(todo)
        m["done"].add(status)
        if status.startswith(("failed", "bounce")):
            m["failed"] = True  # nothing more for this provider id (see the README)
        if m["provider"] == "twilio":
            req = self.twilio_request(pmid, status)
            st = "failed" if status.startswith("failed") else status
            evs = [(f"twilio:{pmid}:{st}", m["_id"], pmid)]
        else:
            ev = self.sg_event(pmid, status)
            if self.rng.random() < 0.15:
                # a late one: signed 2 hours ago (SendGrid retries for 24 h; within tolerance)
                ts = int(time.time()) - 7200
                ev["timestamp"] = ts
                req = self.sendgrid_request([ev], ts=ts)
                self.run.count("webhook signed 2 h ago")
            else:
                req = self.sendgrid_request([ev])
            evs = [(f"sendgrid:{ev['sg_event_id']}", m["_id"], pmid)]
        self.post(req, 204, evs)
        self.run.count(f"webhook {m['provider']}")
        if self.rng.random() < 0.2:
            self.post(req, 204, evs)  # the provider's retry of the same request
            self.run.count("webhook duplicate (same request)")
        elif m["provider"] == "twilio" and self.rng.random() < 0.15:
            self.post(self.twilio_request(pmid, st if st != "failed" else status), 204, evs)
            self.run.count("webhook duplicate (same event)")
        return True

    def webhook(self):
        live = [m for m in self.messages.values() if not m["failed"]
                and any(s not in m["done"] for s in m["plan"])]
        if live:
            self.webhook_for(self.rng.choice(sorted(live, key=lambda m: m["_id"])))
        r = self.rng.random()
        if r < 0.08:
            self.forged()
        elif r < 0.12:
            self.malformed()

    def forged(self):
        ms = sorted(self.messages.values(), key=lambda m: m["_id"])
        if not ms:
            return
        m = self.rng.choice(ms)
        pmid = m["pmids"][-1]
        if m["provider"] == "twilio":
            req = self.twilio_request(pmid, "canceled", token="not-the-token")
            eid = f"twilio:{pmid}:canceled"
        else:
            ev = self.sg_event(pmid, "dropped", eid=f"forged-{uuid.uuid4().hex}")
            req = self.sendgrid_request([ev], forge=True)
            eid = f"sendgrid:{ev['sg_event_id']}"
        self.run.forged_ids.add(eid)
        if self.rng.random() < 0.5:
            self.post(req, 403)
            self.run.count("forged webhook at the door")
        else:
            self.xadd_bad(req, "twilio" if m["provider"] == "twilio" else "sendgrid")
            self.run.count("forged entry in the stream")

    def malformed(self):
        if self.rng.random() < 0.5:
            ts = str(int(time.time()))
            payload = '[{"event": "delivered"}]\r\n'  # no sg_event_id
            sig = base64.b64encode(self.run.sg_private.sign(
                (ts + payload).encode(), ec.ECDSA(hashes.SHA256()))).decode()
            req = (SENDGRID_PATH, payload, {SG_SIG: sig, SG_TS: ts,
                                            "Content-Type": "application/json"})
            prov = "sendgrid"
        else:
            params = {"AccountSid": self.run.twilio_sid, "MessageStatus": "delivered"}
            sig = self.run.validator.compute_signature(PUBLIC + TWILIO_PATH, params)
            req = (TWILIO_PATH, urlencode(params), {"X-Twilio-Signature": sig,
                                                    "Content-Type": "application/x-www-form-urlencoded"})
            prov = "twilio"
        if self.rng.random() < 0.5:
            self.post(req, 400)
            self.run.count("malformed webhook at the door")
        else:
            self.xadd_bad(req, prov)
            self.run.count("malformed entry in the stream")

    def xadd_bad(self, req, provider: str):
        """What another appender (the platform's own endpoint) may put in the stream."""
        target, body, headers = req
        fields = {"provider": provider, "body": body, "url": PUBLIC + target,
                  "signature": headers.get("X-Twilio-Signature") or headers.get(SG_SIG, ""),
                  "timestamp": headers.get(SG_TS, ""), "received_at": str(int(time.time() * 1000))}
        try:
            eid = self.run.redis.xadd(self.run.prefix + "status-events", fields)
        except redis.RedisError:
            return
        self.run.bad_stream_ids.add(eid)
        self.run.bad_bodies.add(body)

    # -- channel health at the fakes --
    FLIPS = {
        "low_balance": ({"balance": "3.00"}, {"balance": "50.00"}),
        "account_suspended": ({"account_status": "suspended"}, {"account_status": "active"}),
        "revoked_key": ({"sendgrid_key": "SG.revoked"}, None),
        "unverified_domain": (None, None),
    }

    def flip_health(self):
        kind = self.rng.choice(sorted(self.FLIPS))
        if kind in self.health:
            return
        bad, _ = self.FLIPS[kind]
        if kind == "unverified_domain":
            doms = json.loads(json.dumps(self.run.fake_state["domains"]))
            doms[0]["valid"] = False
            doms[0]["dns"]["dkim1"]["valid"] = False
            bad = {"domains": doms}
        self.run.fake.call("POST", "/_fake/state", bad)
        self.health[kind] = time.time() + self.rng.uniform(6, 15)
        self.run.count(f"channel health: {kind}")

    def recover_health(self, force=False):
        for kind, until in list(self.health.items()):
            if force or time.time() >= until:
                _, good = self.FLIPS[kind]
                if kind == "revoked_key":
                    good = {"sendgrid_key": self.run.sendgrid_key}
                if kind == "unverified_domain":
                    good = {"domains": self.run.fake_state["domains"]}
                self.run.fake.call("POST", "/_fake/state", good)
                del self.health[kind]
                self.run.count("channel health: recovery")

    # -- the loop --
    def step(self):
        t = time.time()
        for item in [d for d in self.delayed if d[0] <= t]:
            self.delayed.remove(item)
            item[1]()
        for item in [d for d in self.retry_posts if d[0] <= t]:
            self.retry_posts.remove(item)
            self.post(*item[1])
        self.recover_health()
        actions = [(self.create, 3), (self.assign, 1.5), (self.snooze, 1.2),
                   (self.customer_message, 2), (self.agent_reply, 2.5),
                   (lambda: self.set_status("resolved", resolved_at=now()), 0.8),
                   (lambda: self.set_status("closed", closed_at=now()), 0.5),
                   (lambda: self.set_status("pending"), 0.4), (self.webhook, 5),
                   (self.flip_health, 0 if self.run.args.soak else 0.12)]
        fns, weights = zip(*actions)
        for _ in range(self.rng.randint(1, 4)):
            self.rng.choices(fns, weights)[0]()

    def settle(self):
        """End of the workload: the late writes done, every planned webhook sent."""
        for _, fn in sorted(self.delayed, key=lambda d: d[0]):
            fn()
        self.delayed.clear()
        self.recover_health(force=True)


# --------------------------------------------------------------- faults ----

FAULT_KINDS = ["kill9", "sigterm_during_delivery", "sigstop", "redis_restart_keep",
               "redis_restart_wipe", "ferretdb_restart", "postgres_restart", "provider_429",
               "provider_5xx", "provider_timeout", "provider_slower_than_lease",
               "provider_reset", "rule_edit_valid", "rule_edit_broken"]


def fault_schedule(run: Run, seconds: float) -> list[tuple[float, str]]:
    """Every kind at least once (the run is long enough: ≥ 1 minute), the rest at random,
    about one fault every 6 s, none in the first 10 s (warm-up)."""
    rng = run.fault_rng
    n = max(len(FAULT_KINDS), int((seconds - 15) / 6))
    kinds = FAULT_KINDS + [rng.choice(FAULT_KINDS) for _ in range(n - len(FAULT_KINDS))]
    rng.shuffle(kinds)
    times = sorted(rng.uniform(10, seconds - 5) for _ in kinds)
    return list(zip(times, kinds))


def provider_fault(run: Run, kind: str, rng: random.Random):
    path = rng.choice(["/Messages.json", "/v3/mail/send"])
    f = {"match": path, "method": "POST", "times": rng.randint(1, 3)}
    if kind == "provider_429":
        f.update(status=429, retry_after=1)
    elif kind == "provider_5xx":
        f.update(status=rng.choice([500, 502, 503]), accept=rng.random() < 0.5)
    elif kind == "provider_timeout":
        f.update(delay_ms=HTTP_TIMEOUT_MS + 1500)
    elif kind == "provider_slower_than_lease":
        f.update(delay_ms=min(LEASE_TTL * 1000 + 500, HTTP_TIMEOUT_MS - 300), times=2)
    elif kind == "provider_reset":
        f.update(reset=True, accept=rng.random() < 0.5)
    run.fake.call("POST", "/_fake/faults", f)
    run.fault(kind, path=path, times=f["times"],
              **{k: f[k] for k in ("status", "accept", "delay_ms") if k in f})


def rules_edit(run: Run, broken: bool, rng: random.Random):
    health = run.rules / "health.lua"
    if not broken:
        text = health.read_text()
        val = rng.choice([18, 19, 20, 21, 22])
        text2 = re.sub(r"(\n  twilio_balance_warning = )[^,]+,", rf"\g<1>{val},", text)
        health.write_text(text2)
        run.fault("rule_edit_valid", file="health.lua", twilio_balance_warning=val)
        run.rule_windows.append({"kind": "valid", "at": time.time()})
        return
    sla = run.rules / "sla.lua"
    good = sla.read_text()
    with run.faults_paused:  # no restart while the set is broken (it would exit 2)
        run.rules_broken.set()
        start = time.time()
        sla.write_text(good + "\nthis is not lua (\n")
        run.fault("rule_edit_broken", file="sla.lua")
        time.sleep(rng.uniform(4, 8))
        sla.write_text(good)
        run.rules_broken.clear()
        run.rule_windows.append({"kind": "broken", "at": start, "until": time.time()})
        time.sleep(1.0)  # let the reload of the good set land


def instance_fault(run: Run, kind: str, rng: random.Random, work_busy: callable):
    live = [i for i in run.instances if i.alive and not i.stopped]
    if len(live) < 1:
        return
    inst = rng.choice(live)
    if kind == "kill9":
        pid = inst.proc.pid
        inst.kill9()
        run.fault("kill9", instance=inst.idx, pid=pid)
        time.sleep(rng.uniform(0.5, 3))
        restart(run, inst)
    elif kind == "sigterm_during_delivery":
        # a deploy while mail is going out: slow sends queued, then work, then SIGTERM
        run.fake.call("POST", "/_fake/faults", {"match": "/v3/mail/send", "method": "POST",
                                                "delay_ms": 1500, "times": 6})
        work_busy()
        time.sleep(rng.uniform(1.0, 2.5))
        pid = inst.proc.pid
        rc = inst.term()
        run.fault("sigterm_during_delivery", instance=inst.idx, pid=pid, rc=rc)
        time.sleep(rng.uniform(0.3, 1.5))
        restart(run, inst)
    elif kind == "sigstop":
        pid = inst.proc.pid
        inst.signal(signal.SIGSTOP)
        inst.stopped = True
        secs = LEASE_TTL + rng.uniform(1.5, 4)
        run.fault("sigstop", instance=inst.idx, pid=pid, seconds=round(secs, 1))
        time.sleep(secs)
        if inst.alive:
            inst.signal(signal.SIGCONT)
        inst.stopped = False


def restart(run: Run, inst: Instance):
    while run.rules_broken.is_set():
        time.sleep(0.2)
    if not inst.start():
        say(f"  instance {inst.idx} did not come back: see {inst.procs[-1]['log']}")


def redis_restart(run: Run, keep: bool):
    rdir = Path(run.state["DATA_DIR"]) / "redis"
    dump = rdir / "dump.rdb"
    saved_at = None
    if keep:
        try:
            run.redis.save()
            saved_at = time.time()
        except redis.RedisError:
            keep = False
    else:
        dump.unlink(missing_ok=True)
    # what the restart may lose: the stream's entries (all of them when wiped; with the
    # data, the ones appended after the SAVE)
    lost = run.stream_event_ids()
    at = time.time()
    ok = run.services_cmd("restart-redis")
    dump.unlink(missing_ok=True)
    run.redis_losses.append({"at": at, "done": time.time(), "saved_at": saved_at,
                             "keep": keep, "stream_event_ids": lost})
    run.fault("redis_restart_keep" if keep else "redis_restart_wipe", ok=ok)
    deadline = time.time() + 30
    while not run.redis_ok() and time.time() < deadline:
        time.sleep(0.2)


def fault_thread(run: Run, schedule, work_busy):
    rng = run.fault_rng
    for at, kind in schedule:
        while time.time() - run.start_time < at:
            if run.stop_faults.wait(0.2):
                return
        if run.stop_faults.is_set():
            return
        try:
            if kind.startswith("provider_"):
                provider_fault(run, kind, rng)
            elif kind == "rule_edit_valid":
                rules_edit(run, False, rng)
            elif kind == "rule_edit_broken":
                rules_edit(run, True, rng)
            elif kind == "redis_restart_keep":
                redis_restart(run, True)
            elif kind == "redis_restart_wipe":
                redis_restart(run, False)
            elif kind == "ferretdb_restart":
                ok = run.services_cmd("restart-ferretdb")
                run.fault(kind, ok=ok)
            elif kind == "postgres_restart":
                ok = run.services_cmd("restart-postgres")
                run.fault(kind, ok=ok)
            else:
                with run.faults_paused:
                    instance_fault(run, kind, rng, work_busy)
        except Exception as e:  # a fault that could not be injected is reported, not fatal
            run.fault(kind, error=repr(e))


# ----------------------------------------------------------------- main ----

RESEND_IN_FLIGHT_S = 300  # src/jobs/message_status/retry.c: RESEND_CLAIM_TTL_MS


def pending_until(run: Run) -> float:
    """When the last pending outbox entry becomes deliverable again: its backoff
    (next_attempt_at) or a claim a killed deliverer left (its TTL); and when the last
    re-send whose outcome was not recorded may be looked up (README: a marker without
    `uncertain` is left alone for a claim's lifetime from its start)."""
    latest = 0.0
    for m in run.db[MSGS].find({"supportd_resend.started_at": {"$exists": True}},
                               {"supportd_resend": 1}):
        r = m.get("supportd_resend") or {}
        if not r.get("uncertain") and r.get("started_at"):
            started = r["started_at"].replace(tzinfo=timezone.utc).timestamp()
            latest = max(latest, started + RESEND_IN_FLIGHT_S)
    for e in run.db["conversation-notification"].find({"status": "pending"},
                                                      {"next_attempt_at": 1}):
        if e.get("next_attempt_at"):
            latest = max(latest, e["next_attempt_at"].timestamp())
        try:
            ttl = run.redis.pttl(f"{run.prefix}outbox:claim:{e['_id']}")
            v = run.redis.get(f"{run.prefix}outbox:claim:{e['_id']}") or ""
        except redis.RedisError:
            continue
        if v.startswith("claimed:") and ttl > 0:
            latest = max(latest, time.time() + ttl / 1000)
    return latest


def journal_until(run: Run) -> float:
    """When message-status's repair sweep will have appended the newest webhook journal
    copy again, should its entry be gone (it waits 30 s from received_at)."""
    latest = 0.0
    for j in run.db["conversation-status-inbox"].find({}, {"received_at": 1}):
        latest = max(latest, j["received_at"].replace(tzinfo=timezone.utc).timestamp() + 30)
    return latest


def drained(run: Run) -> tuple[bool, str]:
    db = run.db
    t = now()
    why = []
    n = db["conversation-status-inbox"].count_documents({})
    if n:
        why.append(f"{n} webhook journal copies not yet applied")
    n = db["conversation-notification"].count_documents({"status": "pending"})
    if n:
        why.append(f"{n} outbox entries pending")
    n = db[CONVS].count_documents({"status": "snoozed", "snooze.until": {"$lte": t}})
    if n:
        why.append(f"{n} snoozes due")
    n = db[MSGS].count_documents({"direction": "outbound", "final": False,
                                  "next_retry_at": {"$ne": None, "$lte": t}})
    if n:
        why.append(f"{n} re-sends due")
    try:
        s = run.prefix + "status-events"
        if run.redis.exists(s):
            groups = run.redis.xinfo_groups(s)
            for g in groups:
                if g["pending"] or (g.get("lag") or 0):
                    why.append(f"stream group {g['name']}: {g['pending']} pending, "
                               f"lag {g.get('lag')}")
    except redis.RedisError as e:
        why.append(f"redis: {e}")
    return (not why), "; ".join(why)


def deliver_after_stop(run: Run, stop_began: float) -> int:
    """A tick the SIGTERM caught is let finish, and mail it enqueued then (an SLA warning
    that fell due during the stop, say) waits for the next start, as after a deploy. When
    every pending outbox entry is of that kind, one `supportd once snooze` stands in for
    that start (every job's tick delivers the outbox), and the checker judges them like
    the rest. An entry pending since before the stop is left to the checker. Returns how
    many were delivered so."""
    try:
        pending = list(run.db["conversation-notification"].find({"status": "pending"},
                                                               {"created_at": 1}))
    except pymongo.errors.PyMongoError:
        return 0
    began = datetime.fromtimestamp(stop_began - 1, timezone.utc)  # the client is tz_aware
    if not pending or any(e.get("created_at") is None or e["created_at"] < began
                          for e in pending):
        return 0
    say(f"after the stop: {len(pending)} outbox entries enqueued by ticks the stop let "
        "finish; `once snooze` delivers them, as the next start would")
    with open(run.logdir / "after_stop.log", "wb") as fh:
        subprocess.run([run.binary, "once", "snooze"], env=run.instance_env(free_port()),
                       cwd=run.workdir, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh,
                       timeout=120)
    return len(pending)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--soak", action="store_true",
                    help="no faults: all jobs, the workload and webhooks at a steady rate")
    ap.add_argument("--binary", help="supportd to run (default: see the module docstring)")
    ap.add_argument("--drain", type=float, default=45,
                    help="seconds the instances get to finish the work at the end")
    ap.add_argument("--drain-max", type=float, default=360,
                    help="the drain's bound when outbox entries wait out a backoff or a "
                         "killed deliverer's claim, or a re-send its in-flight window (5 "
                         "minutes); an entry still held past it is a violation")
    ap.add_argument("--keep", action="store_true", help="keep the database and Redis keys")
    args = ap.parse_args(argv)
    if args.minutes < 1 and not args.soak:
        ap.error("--minutes: at least 1 (every fault kind is injected once)")
    run = Run(args)
    say(f"chaos: seed {args.seed}, {args.minutes:g} min, {args.instances} instances, "
        f"{'soak (no faults)' if args.soak else 'faults on'}")
    say(f"  binary {run.binary}{' (AddressSanitizer)' if run.asan else ''}")
    say(f"  database {run.db_name}, Redis prefix {run.prefix}, logs {run.logdir}")
    run.make_rules()
    run.seed_world()
    work = Workload(run)
    stop_sampling = threading.Event()
    sampler = threading.Thread(target=run.sampler, args=(stop_sampling,), daemon=True)
    rc = 1
    try:
        for inst in run.instances:
            if not inst.start():
                raise SystemExit(f"instance {inst.idx} did not start: {inst.procs[-1]['log']}")
        sampler.start()
        run.start_time = time.time()
        seconds = args.minutes * 60
        schedule = [] if args.soak else fault_schedule(run, seconds)
        say(f"  {len(schedule)} faults scheduled")
        busy = threading.Event()
        ft = threading.Thread(target=fault_thread, args=(run, schedule, busy.set), daemon=True)
        ft.start()
        last_discover = 0.0
        while time.time() - run.start_time < seconds:
            t0 = time.time()
            try:
                work.step()
                if busy.is_set():
                    busy.clear()
                    for _ in range(4):
                        work.create()  # four new tickets: mail to send at once
                if t0 - last_discover > 2:
                    work.discover_resends()
                    last_discover = t0
            except (pymongo.errors.PyMongoError, redis.RedisError, requests.RequestException) as e:
                run.count("platform write failed (database restarting)")
                say(f"  [{t0 - run.start_time:6.1f}s] platform write failed: {type(e).__name__}")
            time.sleep(max(0.0, 1.0 - (time.time() - t0)))
        say("workload done; stopping faults")
        run.stop_faults.set()
        ft.join(timeout=120)
        run.fake.call("POST", "/_fake/faults/clear")
        for inst in run.instances:
            if inst.stopped and inst.alive:
                inst.signal(signal.SIGCONT)
                inst.stopped = False
            inst.reap()
            if not inst.alive:
                restart(run, inst)
        work.settle()
        # the webhooks still to come: re-sends made during the drain get theirs too
        drain_start = time.time()
        deadline = drain_start + args.drain
        ok, why = False, ""
        quiet_since = None
        while time.time() < deadline:
            try:
                # an entry waiting out its backoff (or a dead deliverer's claim) is not lost:
                # the drain waits for it, within --drain-max
                deadline = min(max(deadline, pending_until(run) + 10, journal_until(run) + 10),
                               drain_start + args.drain_max)
            except (pymongo.errors.PyMongoError, redis.RedisError):
                pass
            try:
                work.discover_resends()
                for item in list(work.retry_posts):
                    work.retry_posts.remove(item)
                    work.post(*item[1])
                for m in sorted(work.messages.values(), key=lambda m: m["_id"]):
                    while work.webhook_for(m):
                        pass
                ok, why = drained(run)
            except (pymongo.errors.PyMongoError, redis.RedisError) as e:
                ok, why = False, repr(e)
            if ok and not work.retry_posts:
                quiet_since = quiet_since or time.time()
                if time.time() - quiet_since >= 6:  # three ticks of every job with nothing left
                    break
            else:
                quiet_since = None
            time.sleep(1)
        run.drain_result = (ok, why, round(time.time() - drain_start, 1))
        say(f"drain: {'done' if ok else 'NOT done: ' + why} after {run.drain_result[2]}s")
        run.before_stop = check.snapshot_before_stop(run)
        stop_began = time.time()
        for inst in run.instances:
            inst.term()
        run.after_stop = deliver_after_stop(run, stop_began)
        stop_sampling.set()
        sampler.join(timeout=5)
        result = check.check_all(run, work)
        rc = check.report(run, work, result)
    finally:
        stop_sampling.set()
        run.stop_faults.set()
        for inst in run.instances:
            if inst.alive:
                if inst.stopped:
                    inst.signal(signal.SIGCONT)
                inst.proc.kill()
        run.fake.stop()
        run.platform_fake.stop()
        if not run.redis_ok():
            run.services_cmd("start-redis")
        if args.keep or rc != 0:
            say(f"kept for inspection: database {run.db_name}, Redis keys {run.prefix}*")
        else:
            try:
                run.mongo.drop_database(run.db_name)
                keys = list(run.redis.scan_iter(match=run.prefix + "*", count=1000))
                if keys:
                    run.redis.delete(*keys)
            except (pymongo.errors.PyMongoError, redis.RedisError):
                pass
        say(f"logs: {run.logdir}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
