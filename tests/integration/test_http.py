"""The HTTP surface of `supportd run` (QM_SUPPORT_HTTP_LISTEN): the signed
webhook receiver, /healthz, /readyz and /metrics, driven by real HTTP clients
(curl, requests, httpx, raw sockets for slow clients) against the running
binary, with webhooks signed by the providers' own helper libraries."""
from __future__ import annotations

import base64
import concurrent.futures
import os
import re
import signal
import json
import socket
import subprocess
import time
import uuid
from urllib.parse import urlencode

import httpx
import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families
from twilio.request_validator import RequestValidator

from conftest import REPO, _ping, parse_log_lines, parse_ts, services_script, wait_until
from fakes_fixtures import *  # noqa: F401,F403
from test_message_status import World, iso, now_ms, tick_end

PUBLIC = "https://hooks.example.com"
TWILIO_PATH = "/webhooks/twilio/status"
SENDGRID_PATH = "/webhooks/sendgrid/events"
SG_SIG = "X-Twilio-Email-Event-Webhook-Signature"
SG_TS = "X-Twilio-Email-Event-Webhook-Timestamp"
FIELDS = {"provider", "body", "url", "signature", "timestamp", "received_at"}
# supportd's door adds `journal`: the _id of the request's copy in this collection
INBOX = "conversation-status-inbox"

FAMILIES = [  # every family /metrics must expose (issue #12)
    "supportd_job_ticks", "supportd_job_tick_duration_seconds", "supportd_job_items",
    "supportd_job_last_success_timestamp_seconds", "supportd_outbox_entries",
    "supportd_status_events_lag", "supportd_status_events_pending",
    "supportd_status_events_length", "supportd_alerts_open", "supportd_rules_info",
    "supportd_rules_reload_failures", "supportd_rules_reloads", "supportd_webhooks_received",
    "supportd_webhooks_rejected", "supportd_http_requests",
    "supportd_process_resident_memory_bytes", "supportd_process_open_fds",
    "supportd_process_cpu_seconds", "supportd_process_start_time_seconds",
    # issue 24: the standard process collector's names, which dashboards read
    "process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds",
    "process_start_time_seconds",
    "supportd_scrape_source_up",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    """A `supportd run` with the HTTP server on, and signed requests to it."""

    def __init__(self, world: World, **env):
        self.w = world
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        overrides = {"QM_SUPPORT_HTTP_LISTEN": f"127.0.0.1:{self.port}",
                     "QM_SUPPORT_PUBLIC_URL": PUBLIC, "QM_SUPPORT_PROBE": "true",
                     "QM_SUPPORT_PROBE_CRON": "* * * * * *"}
        overrides.update(env)
        self.d = world.sd.start("run", **world.env(**overrides))
        self.d.wait_for("http.listening", timeout=20)

    # -- Twilio: form body, signed over the public URL + path + query --
    def twilio_request(self, sid, status="delivered", *, query="", token=None, json_body=False):
        v = RequestValidator(token or self.w.token)
        params = {"AccountSid": self.w.p.twilio_sid, "MessageSid": sid, "SmsSid": sid,
                  "MessageStatus": status, "SmsStatus": status, "To": "+15551230000"}
        if json_body:
            body = json.dumps(params)
            q = f"bodySHA256={v.compute_hash(body)}"
            target = f"{TWILIO_PATH}?{q}"
            sig = v.compute_signature(PUBLIC + target, {})
            ctype = "application/json"
        else:
            body = urlencode(params)
            target = TWILIO_PATH + (f"?{query}" if query else "")
            sig = v.compute_signature(PUBLIC + target, params)
            assert v.validate(PUBLIC + target, params, sig)
            ctype = "application/x-www-form-urlencoded"
        return target, body, {"X-Twilio-Signature": sig, "Content-Type": ctype}

    def post_twilio(self, sid, status="delivered", **kw):
        target, body, headers = self.twilio_request(sid, status, **kw)
        return requests.post(self.base + target, data=body.encode(), headers=headers, timeout=10)

    # -- SendGrid: JSON array, ECDSA over timestamp + body --
    def sendgrid_request(self, events, *, ts=None, raw=None, forge=False):
        ts = str(ts if ts is not None else int(time.time()))
        payload = raw if raw is not None else json.dumps(events) + "\r\n"
        key = ec.generate_private_key(ec.SECP256R1()) if forge else None
        sig = (base64.b64encode(key.sign((ts + payload).encode(), ec.ECDSA(hashes.SHA256()))).decode()
               if forge else self.w.sg_sign(ts, payload))
        return payload, {SG_SIG: sig, SG_TS: ts, "Content-Type": "application/json"}

    def post_sendgrid(self, events, **kw):
        payload, headers = self.sendgrid_request(events, **kw)
        with httpx.Client(timeout=10) as c:
            return c.post(self.base + SENDGRID_PATH, content=payload.encode(), headers=headers)

    def get(self, path, timeout=10):
        return requests.get(self.base + path, timeout=timeout)

    def metrics(self) -> dict:
        r = self.get("/metrics")
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return {f.name: f for f in text_string_to_metric_families(r.text)}

    def stream(self):
        return self.w.sd.redis.xrange(self.w.stream)


def sample(families, name, **labels):
    fam = families[name]
    for s in fam.samples:
        if all(s.labels.get(k) == v for k, v in labels.items()) and s.name in (
                name, name + "_total"):
            return s.value
    return None


@pytest.fixture
def world(sd, providers):
    return World(sd, providers)


# --------------------------------------------------------- webhooks in ----

def test_signed_webhooks_reach_the_stream_then_the_next_tick_applies_them(world):
    h = Http(world)
    tw = world.message("twilio", status="sent")
    tw_json = world.message("twilio", status="sent")
    sg = world.message("sendgrid", status="sent")
    before = int(time.time() * 1000)
    r1 = h.post_twilio(tw["provider_message_id"], "delivered", query="tenant=7&x=a%20b")
    r2 = h.post_twilio(tw_json["provider_message_id"], "read", json_body=True)
    ev = World.sg_event(sg, "delivered")
    r3 = h.post_sendgrid([ev])
    after = int(time.time() * 1000)
    assert [r1.status_code, r2.status_code, r3.status_code] == [204, 204, 204], (r1.text, r2.text, r3.text)

    entries = [f for _, f in h.stream()]
    assert len(entries) == 3
    journal = {d["_id"]: d for d in world.db[INBOX].find()}
    for (entry_id, f) in h.stream():
        assert set(f) == FIELDS | {"journal"}, f  # SPEC §2's fields, and the journal's id
        assert before <= int(f["received_at"]) <= after
        doc = journal[f["journal"]]  # the door's copy in MongoDB, with the entry's id
        assert doc["stream_id"] == entry_id
        assert {k: doc[k] for k in FIELDS - {"received_at"}} == {k: f[k] for k in FIELDS - {"received_at"}}
        assert int(doc["received_at"].timestamp() * 1000) == int(f["received_at"])
    t1, t2, s1 = entries
    target, body, headers = h.twilio_request(tw["provider_message_id"], "delivered", query="tenant=7&x=a%20b")
    assert t1["provider"] == "twilio" and t1["body"] == body
    assert t1["url"] == PUBLIC + target and t1["signature"] == headers["X-Twilio-Signature"]
    assert t1["timestamp"] == ""
    assert t2["url"].startswith(PUBLIC + TWILIO_PATH + "?bodySHA256=")
    assert s1["provider"] == "sendgrid" and s1["body"].endswith("\r\n")  # raw, CRLF kept
    assert json.loads(s1["body"]) == [ev] and s1["timestamp"] and s1["signature"]

    # the next message-status tick applies them (an instance without HTTP)
    cp = world.once()
    assert cp.returncode == 0, cp.stderr
    assert world.get(tw)["status"] == "delivered"
    assert world.get(tw_json)["status"] == "read"
    assert world.get(sg)["status"] == "delivered"
    assert world.side("rejected") == []
    assert list(world.db[INBOX].find()) == []  # applied: the journal forgets them
    m = h.metrics()
    assert sample(m, "supportd_webhooks_received", provider="twilio") == 2
    assert sample(m, "supportd_webhooks_received", provider="sendgrid") == 1
    assert not m["supportd_webhooks_rejected"].samples
    assert h.d.alive() and not h.d.other_lines(), h.d.other_lines()
    world.p.outputs.append(h.d.stderr())


def test_forged_malformed_oversized_and_wrong_requests_get_their_codes(world):
    h = Http(world)
    tw = world.message("twilio", status="sent")
    sid = tw["provider_message_id"]
    sg = world.message("sendgrid", status="sent")
    marker = "SECRET-BODY-" + uuid.uuid4().hex

    # Twilio: signed with another token; body changed after signing; no header;
    # signed for another URL (the proxy's internal one)
    assert h.post_twilio(sid, token="not-the-token").status_code == 403
    target, body, headers = h.twilio_request(sid)
    r = requests.post(h.base + target, data=body.replace("delivered", "read").encode(), headers=headers, timeout=10)
    assert r.status_code == 403
    r = requests.post(h.base + target, data=body.encode(), timeout=10,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 403
    v = RequestValidator(world.token)
    params = {"MessageSid": sid, "MessageStatus": "read", "Note": marker}
    wrong = v.compute_signature(h.base + TWILIO_PATH, params)
    r = requests.post(h.base + TWILIO_PATH, data=params, headers={"X-Twilio-Signature": wrong}, timeout=10)
    assert r.status_code == 403
    # Twilio, correctly signed but no MessageSid: malformed
    p2 = {"MessageStatus": "delivered", "Note": marker}
    r = requests.post(h.base + TWILIO_PATH, data=p2, timeout=10,
                      headers={"X-Twilio-Signature": v.compute_signature(PUBLIC + TWILIO_PATH, p2)})
    assert r.status_code == 400 and "MessageSid" in r.text

    # SendGrid: other key; stale timestamp; signed garbage; not UTF-8; no timestamp
    assert h.post_sendgrid([World.sg_event(sg, "delivered")], forge=True).status_code == 403
    stale = int(time.time()) - 8 * 3600
    assert h.post_sendgrid([World.sg_event(sg, "delivered")], ts=stale).status_code == 403
    r = h.post_sendgrid(None, raw="{not json " + marker + "\r\n")
    assert r.status_code == 400 and "malformed" in r.text
    payload, headers = h.sendgrid_request([World.sg_event(sg, "delivered")])
    r = httpx.post(h.base + SENDGRID_PATH, content=b"\xff\xfe" + payload.encode(), headers=headers)
    assert r.status_code == 400
    headers.pop(SG_TS)
    assert httpx.post(h.base + SENDGRID_PATH, content=payload.encode(), headers=headers).status_code == 403

    # Oversized: curl, with a declared length (refused before the body is read)
    big = world.sd.tmp_path / "big.json"
    big.write_bytes(b"[" + b" " * (2 * 1024 * 1024) + b"]")
    cp = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                         "-H", "Content-Type: application/json", "--data-binary", f"@{big}",
                         h.base + SENDGRID_PATH], capture_output=True, text=True, timeout=30)
    assert cp.stdout == "413", (cp.stdout, cp.stderr)
    # ... and chunked, with no declared length (read to its end, then refused)
    def chunks():
        for _ in range(40):
            yield b"x" * 65536
    r = requests.post(h.base + TWILIO_PATH, data=chunks(), timeout=30)
    assert r.status_code == 413
    # exactly at the limit is not oversized (then a bad signature)
    r = requests.post(h.base + TWILIO_PATH, data=b"a" * (1024 * 1024), timeout=30)
    assert r.status_code == 403

    # wrong method, unknown path
    r = requests.get(h.base + TWILIO_PATH, timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert requests.post(h.base + "/webhooks/mailgun", data="x", timeout=10).status_code == 404
    assert requests.post(h.base + "/healthz", data="x", timeout=10).status_code == 405

    assert h.stream() == []  # nothing reached the stream
    m = h.metrics()
    rej = {(s.labels["provider"], s.labels["reason"]): s.value
           for s in m["supportd_webhooks_rejected"].samples}
    assert rej == {("twilio", "bad_signature"): 5, ("twilio", "malformed"): 1, ("twilio", "too_large"): 1,
                   ("twilio", "method"): 1, ("sendgrid", "bad_signature"): 2,
                   ("sendgrid", "stale_timestamp"): 1, ("sendgrid", "malformed"): 2,
                   ("sendgrid", "too_large"): 1}, rej

    # the jobs kept running, and the logs hold nothing of the requests
    n = h.d.count()
    h.d.wait_for("tick.end", after=n, timeout=5, outcome="ok")
    assert h.d.alive()
    err = h.d.stderr()
    rejected = [e for e in parse_log_lines(err)[0] if e.get("event") == "webhook.rejected"]
    assert rejected and all(set(e) >= {"provider", "status", "reason", "bytes", "body_sha256"} for e in rejected)
    assert marker not in err and sid not in err and wrong not in err
    world.p.outputs.append(err)


def test_slow_clients_are_cut_off_and_the_server_keeps_answering(world):
    h = Http(world, QM_SUPPORT_HTTP_REQUEST_TIMEOUT="2", QM_SUPPORT_HTTP_IDLE_TIMEOUT="30",
             QM_SUPPORT_HTTP_MAX_CONNECTIONS="8")
    # slowloris: 8 connections (the limit), one header byte a second each
    socks = []
    for _ in range(8):
        s = socket.create_connection(("127.0.0.1", h.port), timeout=10)
        s.sendall(b"POST /webhooks/twilio/status HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    opened, opened_wall = time.monotonic(), time.time()
    closed_at = {}
    while len(closed_at) < len(socks) and time.monotonic() - opened < 10:
        time.sleep(0.5)
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            try:
                s.sendall(b"X")  # one byte: never silent long enough for the idle timeout
                s.setblocking(False)
                try:
                    if s.recv(1024) == b"":
                        closed_at[i] = time.monotonic() - opened
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
            except OSError:
                closed_at[i] = time.monotonic() - opened
    for s in socks:
        s.close()
    assert len(closed_at) == 8, f"slow connections still open after 10 s: {closed_at}"
    assert all(1.5 <= t <= 5 for t in closed_at.values()), closed_at
    # the slots are free again: probes answer, and the jobs never stopped
    r = h.get("/healthz", timeout=5)
    assert r.status_code == 200, r.text
    assert h.d.events("http.timeout")
    during = [e for e in h.d.events("tick.end")
              if e.get("outcome") == "ok" and parse_ts(e["ts"]) > opened_wall]
    assert len(during) >= 1 and h.d.alive()
    # libmicrohttpd's own messages come through our logger: JSON lines only
    assert not h.d.other_lines(), h.d.other_lines()


def test_http_answers_while_a_tick_runs(world):
    h = Http(world, QM_SUPPORT_PROBE_HOLD_MS="3000")
    start = h.d.wait_for("tick.start", timeout=10)
    t0 = time.monotonic()
    r = h.get("/healthz", timeout=5)
    m = h.get("/metrics", timeout=5)
    took, answered = time.monotonic() - t0, time.time()
    assert r.status_code == 200 and m.status_code == 200
    assert took < 1.0, f"answers took {took:.2f}s while a 3 s tick ran"
    end = h.d.wait_for("tick.end", tick=start["tick"], timeout=10)
    assert parse_ts(end["ts"]) > answered, "the tick had ended before the answers"


def test_redis_down_at_the_door_the_journal_takes_the_webhook(world, redis_restart_guard):
    """SPEC §3: with Redis down the request is stored in MongoDB's journal
    (conversation-status-inbox) and answered 204 (it was 503, and relied on the
    provider's retry); once Redis is back message-status appends it again and
    applies it once."""
    h = Http(world)
    tw = world.message("twilio", status="sent")
    sid = tw["provider_message_id"]
    try:
        services_script("stop-redis")
        assert not _ping(world.sd.redis)
        r = h.post_twilio(sid, "delivered")
        assert r.status_code == 204, (r.status_code, r.text)
        [doc] = list(world.db[INBOX].find())
        assert doc["stream_id"] is None and doc["provider"] == "twilio"
        # The probes answer from the checker's last look (every 2 s).
        _, r = wait_until(lambda: ((x := h.get("/readyz")).status_code == 503, x)[0] and (True, x),
                          10, 0.2, "/readyz to turn 503")
        assert "redis: not answering" in r.text, r.text
        wait_until(lambda: h.get("/healthz").status_code == 503, 10, 0.2, "/healthz 503")
        m = h.metrics()
        assert sample(m, "supportd_scrape_source_up", source="redis") == 0
        assert sample(m, "supportd_webhooks_rejected", provider="twilio", reason="unavailable") is None
        assert sample(m, "supportd_webhook_journal_only", provider="twilio") == 1
        assert sample(m, "supportd_webhook_journal_failures", provider="twilio") == 0
    finally:
        services_script("start-redis")
    wait_until(lambda: _ping(world.sd.redis), 30, 0.2, "Redis to come back")
    assert h.stream() == []
    # The repair sweep leaves journal documents younger than a minute to the
    # door's own append: a tick at now + 2 min appends it and applies it.
    cp = world.once("--now", iso(now_ms() + 120_000))
    assert cp.returncode == 0, cp.stderr
    assert tick_end(cp)["counts"]["journal_reappended"] == 1
    assert world.get(tw)["status"] == "delivered"
    assert world.history_ids(tw) == [f"twilio:{sid}:delivered"]
    assert list(world.db[INBOX].find()) == []
    cp = world.once("--now", iso(now_ms() + 240_000))
    assert cp.returncode == 0 and tick_end(cp)["counts"]["journal_reappended"] == 0
    assert world.history_ids(tw) == [f"twilio:{sid}:delivered"]
    wait_until(lambda: h.get("/readyz").status_code == 200, 10, 0.5, "/readyz 200 again")
    assert h.d.alive()
    world.p.outputs.append(h.d.stderr())


# ------------------------------------------------------ probes, metrics ----

def _ferretdb_pid() -> int:
    state = (REPO / ".services" / "state").read_text()
    return int(re.search(r"^FERRETDB_PID=(\d+)$", state, re.M).group(1))


def test_probes_never_wait_for_a_hung_database(world):
    """Issue 22: /readyz and /metrics asked MongoDB on the pool threads that
    take the webhooks: with MongoDB hung, a few probes starved everything. Now
    they answer at once from the checker, and say which dependency is down
    without naming its address or user."""
    h = Http(world)
    tw = world.message("twilio", status="sent")
    pid = _ferretdb_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            t0 = time.monotonic()
            probes = [pool.submit(h.get, p, 10) for p in ("/readyz", "/metrics") * 8]
            hook = pool.submit(h.post_twilio, tw["provider_message_id"], "delivered")
            assert hook.result(timeout=15).status_code == 204
            took = time.monotonic() - t0
            answers = [f.result(timeout=15) for f in probes]
        # The door gives its journal insert at most 2 s (then the stream's copy
        # is the one): the webhook waits that, never behind the probes.
        assert took < 5, f"the webhook waited {took:.1f}s"
        assert all(a.status_code in (200, 503) for a in answers)
        _, r = wait_until(lambda: ((x := h.get("/readyz", 5)).status_code == 503, x)[0]
                          and (True, x), 30, 0.5, "/readyz to say MongoDB is not answering")
        assert "mongodb: not answering" in r.text and "redis: ok" in r.text, r.text
        port = world.sd.services["MONGO_DB_URL"].rsplit(":", 1)[1].split("/")[0]
        assert port not in r.text and "127.0.0.1" not in r.text, r.text
        m = h.metrics()
        assert sample(m, "supportd_scrape_source_up", source="mongodb") == 0
        assert sample(m, "supportd_scrape_source_up", source="redis") == 1
        assert sample(m, "supportd_webhook_journal_failures", provider="twilio") == 1
        assert len(h.stream()) == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: h.get("/readyz").status_code == 200, 30, 0.5, "/readyz 200 again")
    down = h.d.events("http.dependency_down")
    assert down and "mongodb" in down[0]["msg"], h.d.tail()
    world.p.outputs.append(h.d.stderr())


def test_readyz_never_shows_where_a_dependency_lives(world):
    """A failing MongoDB is named, its hosts, user and options are not."""
    secret_host = "db-internal-7q.example.invalid"
    h = Http(world, MONGO_DB_URL=f"mongodb://opsuser:pw-9x@{secret_host}:27017/x"
                                 "?replicaSet=rs-hidden&authSource=admin&serverSelectionTimeoutMS=500")
    _, r = wait_until(lambda: ((x := h.get("/readyz")).status_code == 503, x)[0] and (True, x),
                      20, 0.5, "/readyz 503")
    assert "mongodb: not answering" in r.text
    for word in (secret_host, "opsuser", "rs-hidden", "authSource", "27017", "pw-9x"):
        assert word not in r.text, r.text


def test_twilio_form_with_too_many_parameters_is_refused_unparsed(world):
    h = Http(world)
    body = "&".join(f"p{i}=x" for i in range(101))
    r = requests.post(h.base + TWILIO_PATH, data=body.encode(), timeout=10,
                      headers={"X-Twilio-Signature": "x",
                               "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "more than 100 form parameters" in r.text, r.text
    assert h.stream() == []


def test_replayed_webhooks_are_dropped_at_the_door(world):
    """Issue 22: the same signed request again (a captured callback, a retry of
    one already stored) is answered 204 and not stored again; counted."""
    h = Http(world)
    tw = world.message("twilio", status="sent")
    target, body, headers = h.twilio_request(tw["provider_message_id"], "delivered")
    for _ in range(3):
        r = requests.post(h.base + target, data=body.encode(), headers=headers, timeout=10)
        assert r.status_code == 204
    payload, sg_headers = h.sendgrid_request([{"event": "delivered", "sg_event_id": "e1",
                                               "sg_message_id": "m1.x", "timestamp": 1}])
    for _ in range(2):
        with httpx.Client(timeout=10) as c:
            assert c.post(h.base + SENDGRID_PATH, content=payload.encode(),
                          headers=sg_headers).status_code == 204
    assert len(h.stream()) == 2
    m = h.metrics()
    assert sample(m, "supportd_webhooks_rejected", provider="twilio", reason="duplicate") == 2
    assert sample(m, "supportd_webhooks_rejected", provider="sendgrid", reason="duplicate") == 1
    # Another status of the same message is another request.
    assert h.post_twilio(tw["provider_message_id"], "read").status_code == 204
    assert len(h.stream()) == 3


def test_a_request_whose_append_failed_is_no_duplicate_when_retried(world):
    """503 only when neither copy could be stored (the journal in MongoDB, the
    entry in Redis); the replay check and the append are one step, so such a
    request is stored when the provider retries it, not dropped as a
    duplicate of itself. One copy is enough for 204: the journal's failure is
    counted."""
    h = Http(world, MONGO_DB_URL="mongodb://127.0.0.1:1/nowhere?serverSelectionTimeoutMS=300")
    tw = world.message("twilio", status="sent")
    target, body, headers = h.twilio_request(tw["provider_message_id"], "delivered")
    world.sd.redis.set(world.stream, "not a stream")  # XADD now fails (WRONGTYPE)
    r = requests.post(h.base + target, data=body.encode(), headers=headers, timeout=10)
    assert r.status_code == 503, (r.status_code, r.text)
    world.sd.redis.delete(world.stream)
    r = requests.post(h.base + target, data=body.encode(), headers=headers, timeout=10)
    assert r.status_code == 204
    assert len(h.stream()) == 1, "the retried request was dropped as a duplicate"
    m = h.metrics()
    assert sample(m, "supportd_webhook_journal_failures", provider="twilio") == 2
    assert sample(m, "supportd_webhooks_rejected", provider="twilio", reason="unavailable") == 1
    assert h.d.events("webhook.journal_failed")


def _journal(world):
    return list(world.db[INBOX].find())


@pytest.mark.parametrize("loss,flavor", [("restart", "ferretdb"), ("flush", "mongodb")])
def test_webhooks_accepted_at_the_door_survive_redis_losing_its_data(world, loss, flavor,
                                                                      redis_restart_guard):
    """SPEC §3: after the door answered 204 the stream is no longer the only
    copy. Redis loses its data (restarted without persistence, or the prefix's
    keys deleted) before message-status read the entries: the journal's
    repair sweep appends them again and each event is applied exactly once
    (the sweep reads the copies to append with each database's query shape)."""
    h = Http(world)
    tw = world.message("twilio", status="sent")
    sg = world.message("sendgrid", status="sent")
    sid = tw["provider_message_id"]
    ev = World.sg_event(sg, "delivered")
    assert h.post_twilio(sid, "delivered").status_code == 204
    assert h.post_sendgrid([ev]).status_code == 204
    assert len(h.stream()) == 2
    if loss == "restart":
        try:
            services_script("restart-redis")
        finally:
            if not _ping(world.sd.redis):
                services_script("start-redis")
        wait_until(lambda: _ping(world.sd.redis), 30, 0.2, "Redis to come back")
    else:
        keys = list(world.sd.redis.scan_iter(match=world.sd.prefix + "*"))
        assert world.stream in keys
        world.sd.redis.delete(*keys)
    assert h.stream() == []
    # a tick now: the journal's documents are younger than the sweep's minute
    cp = world.once(QM_SUPPORT_TEST_FLAVOR=flavor)
    assert cp.returncode == 0, cp.stderr
    assert world.get(tw)["status"] == "sent"
    cp = world.once("--now", iso(now_ms() + 120_000), QM_SUPPORT_TEST_FLAVOR=flavor)
    assert cp.returncode == 0, cp.stderr
    assert world.get(tw)["status"] == "delivered" and world.get(sg)["status"] == "delivered"
    assert world.history_ids(tw) == [f"twilio:{sid}:delivered"]
    assert world.history_ids(sg) == [f"sendgrid:{ev['sg_event_id']}"]
    counts = tick_end(cp)["counts"]
    assert counts["journal_checked"] == 2 and counts["journal_reappended"] == 2, counts
    assert _journal(world) == [] and world.pending() == 0
    # again: nothing left to append, nothing applied twice
    cp = world.once("--now", iso(now_ms() + 240_000), QM_SUPPORT_TEST_FLAVOR=flavor)
    assert cp.returncode == 0 and tick_end(cp)["counts"]["journal_reappended"] == 0
    assert world.history_ids(tw) == [f"twilio:{sid}:delivered"]
    assert world.history_ids(sg) == [f"sendgrid:{ev['sg_event_id']}"]
    assert world.side("rejected") == [] and world.side("unmatched") == []


def test_webhook_accepted_while_the_database_is_down_survives_redis_losing_its_data(
        world, redis_restart_guard):
    """Found by the chaos run (seed 22): with MongoDB unreachable the door stores a
    webhook in the stream alone and answers 204; Redis then lost its data before
    message-status could read the entry (it needs the database too) and the event was
    gone. The door now keeps the copy and writes it to the journal as soon as MongoDB
    answers again: the repair sweep appends it and it is applied once."""
    h = Http(world)
    tw = world.message("twilio", status="sent")
    sid = tw["provider_message_id"]
    services_script("stop-postgres")
    try:
        r = h.post_twilio(sid, "delivered")
        assert r.status_code == 204, (r.status_code, r.text)
        assert len(h.stream()) == 1
        assert h.d.events("webhook.journal_failed")
        keys = list(world.sd.redis.scan_iter(match=world.sd.prefix + "*"))
        world.sd.redis.delete(*keys)  # Redis loses its data, the database still away
    finally:
        services_script("start-postgres", timeout=120)
    wait_until(lambda: len(_journal(world)) == 1, 60, 0.5, "the door's late copy")
    [copy] = _journal(world)
    assert copy["provider"] == "twilio" and copy["stream_id"] is None
    assert h.d.events("webhook.journal_late_written")
    cp = world.once("--now", iso(now_ms() + 120_000))
    assert cp.returncode == 0, cp.stderr
    assert world.get(tw)["status"] == "delivered"
    assert world.history_ids(tw) == [f"twilio:{sid}:delivered"]
    assert _journal(world) == [] and world.pending() == 0


def test_journal_documents_go_once_their_entries_are_done_with(world):
    """The journal holds what is not applied yet, no more: its document goes
    when the entry is applied, moved to status-events:rejected or to
    :unmatched; it stays (with the entry's id) while the entry waits for its
    message. A replayed request is still dropped once, before and after."""
    h = Http(world)
    tw = world.message("twilio", status="sent")
    sid = tw["provider_message_id"]
    target, body, headers = h.twilio_request(sid, "delivered")
    for _ in range(2):  # a replay while the first is in the journal
        assert requests.post(h.base + target, data=body.encode(), headers=headers,
                             timeout=10).status_code == 204
    unknown = "SM" + uuid.uuid4().hex
    assert h.post_twilio(unknown, "delivered").status_code == 204
    stream = h.stream()
    assert len(stream) == 2 and len(_journal(world)) == 2
    by_journal = {f["journal"]: i for i, f in stream}

    cp = world.once(QM_SUPPORT_LEASE_TTL=1)
    assert cp.returncode == 0, cp.stderr
    assert world.history_ids(tw) == [f"twilio:{sid}:delivered"]
    # applied: gone; waiting for its message: kept, its entry's id recorded
    [waiting] = _journal(world)
    assert waiting["stream_id"] == by_journal[waiting["_id"]]
    assert world.pending() == 1
    # a replay after it was applied: still a duplicate, and no journal document
    before = h.stream()
    assert requests.post(h.base + target, data=body.encode(), headers=headers,
                         timeout=10).status_code == 204
    assert h.stream() == before and _journal(world) == [waiting]
    m = h.metrics()
    assert sample(m, "supportd_webhooks_rejected", provider="twilio", reason="duplicate") == 2

    # past the 15-minute grace: to :unmatched, and out of the journal (the
    # sweep found its entry in the stream and left it alone)
    time.sleep(1.2)  # idle for the lease TTL: claimed back
    cp = world.once("--now", iso(now_ms() + 16 * 60 * 1000), QM_SUPPORT_LEASE_TTL=1)
    assert cp.returncode == 0, cp.stderr
    counts = tick_end(cp)["counts"]
    assert counts["unmatched"] == 1 and counts["journal_checked"] == 1
    assert counts["journal_reappended"] == 0
    assert [u["journal"] for u in world.side("unmatched")] == [waiting["_id"]]
    assert _journal(world) == []

    # rejected when read (the job verifies with another token than the door's):
    # to status-events:rejected, and out of the journal
    assert h.post_twilio(sid, "read").status_code == 204
    assert len(_journal(world)) == 1
    cp = world.once(TWILIO_AUTH_TOKEN="rotated-" + uuid.uuid4().hex)
    assert cp.returncode == 0, cp.stderr
    assert tick_end(cp)["counts"]["rejected"] == 1
    assert len(world.side("rejected")) == 1 and _journal(world) == []
    assert world.history_ids(tw) == [f"twilio:{sid}:delivered"]


def test_request_bodies_in_flight_are_bounded(world):
    """Issue 22: each body is capped at 1 MiB, and all of them together at
    32 MiB: past that a request is answered 503 (the providers retry) instead
    of the process growing with every slow upload."""
    h = Http(world)
    held = []
    try:
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", h.port), timeout=10)
            s.sendall((f"POST {TWILIO_PATH} HTTP/1.1\r\nHost: x\r\n"
                       "Content-Type: application/x-www-form-urlencoded\r\n"
                       "Content-Length: 1000000\r\n\r\n").encode() + b"a" * 990000)
            held.append(s)
        time.sleep(1)
        tw = world.message("twilio", status="sent")
        r = h.post_twilio(tw["provider_message_id"], "delivered")
        assert r.status_code == 503 and r.headers.get("Retry-After"), (r.status_code, r.text)
    finally:
        for s in held:
            s.close()
    r = wait_until(lambda: (x := h.post_twilio(tw["provider_message_id"], "delivered")).status_code == 204 and x,
                   15, 0.5, "the webhook to be accepted once the uploads are gone")
    assert h.d.alive()


def test_readyz_names_each_dependency(world):
    h = Http(world)
    r = h.get("/readyz")
    assert r.status_code == 200
    lines = r.text.splitlines()
    assert lines[0] == "ready" and "mongodb: ok" in lines and "redis: ok" in lines
    version = [l for l in lines if l.startswith("rules: ")][0].split(": ")[1]
    m = h.metrics()
    assert sample(m, "supportd_rules_info", version=version) == 1
    cp = subprocess.run(["curl", "-sS", "-I", h.base + "/readyz"], capture_output=True, text=True, timeout=10)
    assert cp.stdout.startswith("HTTP/1.1 200")  # HEAD works too


def test_healthz_flips_to_503_when_a_job_stops_succeeding(world):
    h = Http(world)
    h.d.wait_for("tick.end", outcome="ok", timeout=10)
    r = h.get("/healthz")
    assert r.status_code == 200 and "job probe: ok" in r.text
    # Another "instance" holds the probe's lease and never finishes: every
    # slot here is skipped, and the last success ages past twice the interval.
    world.sd.redis.set(world.sd.key("lease:probe"), "elsewhere:1/stuck", px=60000)
    # (a Response with status >= 400 is falsy: return a tuple)
    _, r = wait_until(lambda: ((x := h.get("/healthz")).status_code == 503, x)[0] and (True, x),
                      10, 0.25, "/healthz to turn 503")
    assert "job probe: no successful tick within twice its interval" in r.text
    assert h.d.events("tick.skipped")
    world.sd.redis.delete(world.sd.key("lease:probe"))
    wait_until(lambda: h.get("/healthz").status_code == 200, 10, 0.25, "/healthz 200 again")


def test_metrics_parse_with_every_family_and_counters_move_after_a_tick(world):
    h = Http(world, QM_SUPPORT_MESSAGE_STATUS="true", QM_SUPPORT_MESSAGE_STATUS_CRON="* * * * * *")
    # an open alert and outbox entries, for the MongoDB-backed gauges
    db = world.sd.mongo_client[world.sd.db_name]
    db["conversation-alert"].insert_many([
        {"key": "c1:twilio.balance", "check": "twilio.balance", "severity": "warning", "status": "open"},
        {"key": "c2:twilio.balance", "check": "twilio.balance", "severity": "warning", "status": "open"},
        {"key": "c3:sendgrid.domain", "check": "sendgrid.domain", "severity": "critical", "status": "open"},
        {"key": "c4:smtp.connect", "check": "smtp.connect", "severity": "critical", "status": "resolved"}])
    db["conversation-notification"].insert_many([{"key": f"k{i}", "status": s}
                                                 for i, s in enumerate(["sent", "sent", "failed"])])
    h.d.wait_for("tick.end", job="probe", outcome="ok", timeout=10)
    # The gauges read from Redis and MongoDB come from the background checks
    # (every 2 s): the first scrape that has seen the tick and the inserts.
    m1 = wait_until(lambda: (m := h.metrics()) and (sample(
        m, "supportd_job_last_success_timestamp_seconds", job="probe") or 0) > time.time() - 10
        and sample(m, "supportd_outbox_entries", status="sent") == 2 and m, 15, 0.25,
        "the checks to have read the tick and the inserts")
    missing = [f for f in FAMILIES if f not in m1]
    assert not missing, f"families missing from /metrics: {missing}"
    assert m1["supportd_job_tick_duration_seconds"].type == "histogram"
    assert m1["supportd_job_ticks"].type == "counter"
    ok1 = sample(m1, "supportd_job_ticks", job="probe", outcome="ok")
    items1 = sample(m1, "supportd_job_items", job="probe", counter="db_commands")
    count1 = [s.value for s in m1["supportd_job_tick_duration_seconds"].samples
              if s.name.endswith("_count") and s.labels["job"] == "probe"][0]
    assert ok1 >= 1 and items1 >= 1 and count1 >= 1
    assert sample(m1, "supportd_alerts_open", check="twilio.balance", severity="warning") == 2
    assert sample(m1, "supportd_alerts_open", check="sendgrid.domain", severity="critical") == 1
    assert sample(m1, "supportd_alerts_open", check="smtp.connect", severity="critical") is None
    assert sample(m1, "supportd_outbox_entries", status="sent") == 2
    assert sample(m1, "supportd_outbox_entries", status="failed") == 1
    assert sample(m1, "supportd_process_resident_memory_bytes") > 1_000_000
    assert sample(m1, "supportd_process_open_fds") > 3
    for name in ("resident_memory_bytes", "open_fds", "start_time_seconds"):
        assert m1[f"process_{name}"].type == "gauge"
        assert sample(m1, f"process_{name}") == sample(m1, f"supportd_process_{name}") > 0
    assert m1["process_cpu_seconds"].type == "counter"
    assert sample(m1, "process_start_time_seconds") <= time.time()
    assert sample(m1, "supportd_job_last_success_timestamp_seconds", job="probe") > time.time() - 10
    assert sample(m1, "supportd_scrape_source_up", source="mongodb") == 1

    # a webhook waits in the stream until the message-status group reads it
    tw = world.message("twilio", status="sent")
    assert h.post_twilio(tw["provider_message_id"], "delivered").status_code == 204
    n = h.d.count()
    h.d.wait_for("tick.end", after=n, job="probe", outcome="ok", timeout=10)
    h.d.wait_for("tick.end", after=n, job="message-status", outcome="ok", timeout=10)
    wait_until(lambda: world.get(tw)["status"] == "delivered", 10, 0.2, "the webhook applied")
    m2 = wait_until(lambda: (m := h.metrics()) and sample(m, "supportd_status_events_lag") == 0
                    and sample(m, "supportd_status_events_pending") == 0 and m, 15, 0.25,
                    "the checks to have read the acknowledged stream")
    assert sample(m2, "supportd_job_ticks", job="probe", outcome="ok") > ok1
    assert sample(m2, "supportd_job_items", job="probe", counter="db_commands") > items1
    assert [s.value for s in m2["supportd_job_tick_duration_seconds"].samples
            if s.name.endswith("_count") and s.labels["job"] == "probe"][0] > count1
    assert sample(m2, "supportd_job_ticks", job="message-status", outcome="ok") >= 1
    assert sample(m2, "supportd_webhooks_received", provider="twilio") == 1
    assert sample(m2, "supportd_status_events_lag") == 0
    assert sample(m2, "supportd_status_events_pending") == 0
    # SIGHUP reloads the rules (same files: ok)
    h.d.signal(1)
    wait_until(lambda: sample(h.metrics(), "supportd_rules_reloads", result="ok") == 1, 10, 0.2,
               "the reload counted")
    world.p.outputs.append(h.d.stderr())


# ------------------------------------------------------------ config ----

def test_http_configuration_errors_name_the_variable(sd, providers):
    cp = sd.cli("run", QM_SUPPORT_HTTP_LISTEN="localhost", QM_SUPPORT_PROBE="true")
    assert cp.returncode == 2 and "QM_SUPPORT_HTTP_LISTEN: \"localhost\" is not host:port" in cp.stderr
    cp = sd.cli("run", QM_SUPPORT_HTTP_LISTEN="127.0.0.1:99999")
    assert cp.returncode == 2 and "QM_SUPPORT_HTTP_LISTEN" in cp.stderr
    cp = sd.cli("run", QM_SUPPORT_HTTP_LISTEN="127.0.0.1:8080", **providers.env())
    assert cp.returncode == 2 and "QM_SUPPORT_PUBLIC_URL: required" in cp.stderr
    cp = sd.cli("run", QM_SUPPORT_HTTP_LISTEN="127.0.0.1:8080", QM_SUPPORT_PUBLIC_URL="ftp://x")
    assert cp.returncode == 2 and "QM_SUPPORT_PUBLIC_URL" in cp.stderr
    # the port is taken: a clear error, exit 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cp = sd.cli("run", QM_SUPPORT_HTTP_LISTEN=f"127.0.0.1:{port}", QM_SUPPORT_PROBE="true")
    assert cp.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in cp.stderr
    providers.outputs.append(cp.stderr)
