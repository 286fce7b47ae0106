"""scripts/bench http: signed webhooks accepted into status-events per second,
over loopback, against `supportd run` with only its HTTP server doing work.

Each run drives one endpoint with wrk (Debian's, one thread, keep-alive
connections) for --seconds, cycling through --distinct requests signed in
advance with the providers' own helpers (twilio's RequestValidator; ECDSA
P-256 as SendGrid signs, checked with sendgrid's EventWebhook), so every
request is verified for real and appended to a private redis-server. Runs, in
the same process and the same minute:
  floor    GET of an unknown path (404): libmicrohttpd and the loopback alone
  twilio   POST /webhooks/twilio/status, form body, HMAC-SHA1
  sendgrid POST /webhooks/sendgrid/events, 3 events, ECDSA P-256 verify
Reported per run: requests/s, supportd CPU per request (its utime+stime from
/proc over the run, divided by the requests), requests per CPU-second of
supportd ("per core"), p50/p99 latency from wrk, and the stream's length
(must equal the 2xx count: accepted means appended). 127.0.0.1 only.
"""
from __future__ import annotations

import sys
from pathlib import Path

# This file is named after its benchmark, which shadows the standard library's
# `http` package for everything imported below (requests, urllib): take its
# folder off the path and load common.py by file name instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
import importlib.util  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_common", _HERE / "common.py")
common = importlib.util.module_from_spec(_spec)
sys.modules["bench_common"] = common
_spec.loader.exec_module(common)

import argparse
import base64
import datetime
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from urllib.parse import urlencode

CACHE, REPO, PrivateRedis, die = common.CACHE, common.REPO, common.PrivateRedis, common.die
free_port, load_services, say, url_with_db = (common.free_port, common.load_services, common.say,
                                              common.url_with_db)

import redis  # noqa: E402
import requests  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from sendgrid.helpers.eventwebhook import EventWebhook  # noqa: E402
from twilio.request_validator import RequestValidator  # noqa: E402

PUBLIC = "https://hooks.example.com"
TOKEN = "bench-twilio-token-" + uuid.uuid4().hex[:8]
PREFIX = "bench:http:"


def lua_string(s: str) -> str:
    return '"' + "".join(c if c.isalnum() or c in " ._-/=&%+:,[]{}" else "\\%03d" % ord(c)
                         for c in s) + '"'


def wrk_script(reqs: list[tuple[str, str, dict, str]]) -> str:
    """A wrk script cycling through pre-built requests (each thread its own)."""
    rows = []
    for method, path, headers, body in reqs:
        h = ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items())
        rows.append(f"  {{{lua_string(method)}, {lua_string(path)}, {{{h}}}, {lua_string(body)}}},")
    return ("local spec = {\n" + "\n".join(rows) + "\n}\n"
            "local reqs, i = {}, 0\n"
            "function init(args)\n"
            "  for k, r in ipairs(spec) do reqs[k] = wrk.format(r[1], r[2], r[3], r[4]) end\n"
            "end\n"
            "function request()\n"
            "  i = i % #reqs + 1\n"
            "  return reqs[i]\n"
            "end\n")


def twilio_requests(n: int):
    v = RequestValidator(TOKEN)
    out = []
    for k in range(n):
        sid = "SM" + uuid.uuid4().hex
        params = {"AccountSid": "AC" + "0" * 32, "ApiVersion": "2010-04-01", "From": "+15557650000",
                  "To": "+15551230000", "MessageSid": sid, "SmsSid": sid,
                  "MessageStatus": "delivered", "SmsStatus": "delivered"}
        path = "/webhooks/twilio/status"
        sig = v.compute_signature(PUBLIC + path, params)
        out.append(("POST", path, {"X-Twilio-Signature": sig,
                                   "Content-Type": "application/x-www-form-urlencoded"},
                    urlencode(params)))
    return out


def sendgrid_requests(n: int, key, public_b64: str):
    out = []
    ts = str(int(time.time()))
    for k in range(n):
        events = [{"email": "lena@example.org", "timestamp": int(time.time()), "event": ev,
                   "sg_event_id": uuid.uuid4().hex, "sg_message_id": f"{uuid.uuid4().hex[:22]}.filter0001.1.0"}
                  for ev in ("processed", "delivered", "open")]
        payload = json.dumps(events) + "\r\n"
        sig = base64.b64encode(key.sign((ts + payload).encode(), ec.ECDSA(hashes.SHA256()))).decode()
        if k == 0:
            assert EventWebhook(public_b64).verify_signature(payload, sig, ts)
        out.append(("POST", "/webhooks/sendgrid/events",
                    {"X-Twilio-Email-Event-Webhook-Signature": sig,
                     "X-Twilio-Email-Event-Webhook-Timestamp": ts,
                     "Content-Type": "application/json"}, payload))
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_wrk(text: str) -> dict:
    def ms(v: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s)", v)
        n = float(m.group(1))
        return n / 1000 if m.group(2) == "us" else n if m.group(2) == "ms" else n * 1000
    out = {"requests": int(re.search(r"(\d+) requests in", text).group(1))}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = int(bad.group(1)) if bad else 0
    errs = re.search(r"Socket errors: (.*)", text)
    out["socket_errors"] = errs.group(1).strip() if errs else ""
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}(?:\.000)?%\s+(\S+)", text, re.M)
        out[f"p{p}_ms"] = ms(m.group(1)) if m else None
    return out


def main():
    ap = argparse.ArgumentParser(prog="scripts/bench http", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, help="per run (default 10)")
    ap.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections (default 32)")
    ap.add_argument("--threads", type=int, default=2, help="QM_SUPPORT_HTTP_THREADS (default 2: the cores)")
    ap.add_argument("--distinct", type=int, default=500, help="distinct signed requests per run (default 500)")
    ap.add_argument("--quick", action="store_true", help="3 s runs")
    ap.add_argument("--bin", type=Path, default=CACHE / "bench-out" / "bin" / "supportd")
    ap.add_argument("--out", type=Path, default=CACHE / "bench")
    args = ap.parse_args()
    if args.quick:
        args.seconds = 3
    wrk = shutil.which("wrk") or die("wrk not found (scripts/setup installs it)")
    if not args.bin.is_file():
        die(f"{args.bin} missing")
    services = load_services()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.out / f"http-{stamp}"
    work.mkdir(parents=True, exist_ok=True)

    rds = PrivateRedis(work)
    rds.start()
    r = redis.Redis(host="127.0.0.1", port=rds.port, decode_responses=True)
    key = ec.generate_private_key(ec.SECP256R1())
    public_b64 = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QM_SUPPORT_", "MONGO_", "REDIS_", "TWILIO_", "SENDGRID_", "LD_PRELOAD"))}
    env.update({"MONGO_DB_URL": url_with_db(services["MONGO_DB_URL"], "bench_http"),
                "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(rds.port),
                "QM_SUPPORT_REDIS_PREFIX": PREFIX, "QM_SUPPORT_RULES_DIR": str(REPO / "rules"),
                "QM_SUPPORT_HTTP_LISTEN": f"127.0.0.1:{port}", "QM_SUPPORT_PUBLIC_URL": PUBLIC,
                "QM_SUPPORT_HTTP_THREADS": str(args.threads),
                "TWILIO_AUTH_TOKEN": TOKEN, "SENDGRID_WEBHOOK_PUBLIC_KEY": public_b64,
                "LOG_LEVEL": "warn"})
    err = open(work / "supportd.stderr", "wb")
    proc = subprocess.Popen([str(args.bin), "run"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=err, cwd=work)
    base = f"http://127.0.0.1:{port}"
    results = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                die(f"supportd did not become ready (log: {work / 'supportd.stderr'})")
            time.sleep(0.2)
        runs = [("floor (GET 404)", [("GET", "/nothing-here", {}, "")], False),
                ("twilio (form, HMAC-SHA1)", twilio_requests(args.distinct), True),
                ("sendgrid (3 events, ECDSA)", sendgrid_requests(args.distinct, key, public_b64), True)]
        stream = PREFIX + "status-events"
        # warm-up (connections, allocator, page cache): not measured
        script = work / "warmup.lua"
        script.write_text(wrk_script(runs[1][1][:50]))
        subprocess.run([wrk, "-t1", f"-c{args.connections}", "-d2s", "-s", str(script), base + "/"],
                       capture_output=True, timeout=60)
        for name, reqs, accepted in runs:
            script = work / f"run-{len(results)}.lua"
            script.write_text(wrk_script(reqs))
            r.delete(stream)
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            cp = subprocess.run([wrk, "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
                                 "-s", str(script), base + "/"], capture_output=True, text=True,
                                timeout=args.seconds + 60)
            wall, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
            (work / f"run-{len(results)}.wrk.txt").write_text(cp.stdout + cp.stderr)
            if cp.returncode != 0:
                die(f"wrk failed: {cp.stderr[-2000:]}")
            w = parse_wrk(cp.stdout)
            xlen = r.xlen(stream)
            ok = w["requests"] - w["non_2xx"]
            row = {"run": name, "requests": w["requests"], "accepted": ok if accepted else 0,
                   "stream_entries": xlen, "seconds": round(wall, 2), "rps": w["requests"] / wall,
                   "cpu_s": round(cpu, 2), "cpu_us_per_req": cpu / max(w["requests"], 1) * 1e6,
                   "per_core": w["requests"] / cpu if cpu else 0.0, "p50_ms": w["p50_ms"],
                   "p99_ms": w["p99_ms"], "non_2xx": w["non_2xx"], "socket_errors": w["socket_errors"],
                   # the process's high-water mark so far (it serves every run in turn)
                   "peak_rss_mb": common.vm_hwm_kb(proc.pid) / 1024}
            if accepted and (w["non_2xx"] or xlen < ok):
                die(f"{name}: {w['non_2xx']} requests not accepted, stream has {xlen} of {ok} "
                    f"(log: {work})")
            results.append(row)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        err.close()
        rds.stop()

    floor = results[0]
    lines = ["| run | requests/s | supportd CPU/request | requests per supportd CPU-second | p50 | p99 | 2xx (stream entries) | peak RSS so far |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for row in results:
        # (the stream may hold a few more: requests in flight when wrk stopped counting)
        acc = f"{row['accepted']:,} ({row['stream_entries']:,})" if row["accepted"] else "—"
        lines.append(f"| {row['run']} | {row['rps']:,.0f} | {row['cpu_us_per_req']:.0f} µs | "
                     f"{row['per_core']:,.0f} | {row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms | {acc} | "
                     f"{row['peak_rss_mb']:.0f} MB |")
    ratios = ", ".join(f"{row['run'].split()[0]} {row['cpu_us_per_req'] / floor['cpu_us_per_req']:.1f}×"
                       for row in results[1:])
    lines.append("")
    lines.append(f"CPU per request against the floor in the same run: {ratios}. "
                 f"{args.seconds} s per run, wrk -t1 -c{args.connections}, QM_SUPPORT_HTTP_THREADS="
                 f"{args.threads}, {os.cpu_count()} CPUs shared with wrk and redis-server.")
    report = "\n".join(lines)
    say(report)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / f"http-{stamp}.md").write_text(report + "\n")
    say(f"\n(logs and results: {work})")


if __name__ == "__main__":
    main()
