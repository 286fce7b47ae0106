#!/usr/bin/env python3
"""A fake of the Twilio and SendGrid endpoints supportd calls, for tests.

One HTTP server (stdlib only) on 127.0.0.1, port 0 by default; it prints
"PORT <n>" on its first stdout line (and writes it to --port-file if given).
Point TWILIO_API_BASE and SENDGRID_API_BASE at http://127.0.0.1:<n>.

Provider endpoints (real paths, auth checks, status codes, payload shapes as
in reference/providers.md):
  Twilio (HTTP Basic <account sid>:<auth token>)
    POST /2010-04-01/Accounts/{sid}/Messages.json        201 message | 400 21211/21602/21604
    GET  /2010-04-01/Accounts/{sid}/Messages.json        list, newest first (To, From,
                                                         DateSent[<>], PageSize filters)
    GET  /2010-04-01/Accounts/{sid}/Messages/{SM}.json   message | 404 20404
    GET  /2010-04-01/Accounts/{sid}.json                 account {sid, status, type, ...}
    GET  /2010-04-01/Accounts/{sid}/Balance.json         {account_sid, balance: "12.34", currency}
    GET  /2010-04-01/Accounts/{sid}/IncomingPhoneNumbers.json?PhoneNumber=
  SendGrid (Authorization: Bearer <key>)
    POST /v3/mail/send                                   202, empty body, X-Message-Id | 400 errors
    GET  /v3/scopes                                      {"scopes": [...]}
    GET  /v3/whitelabel/domains?domain=                  [{id, domain, valid, dns: {...}}]
    POST /v3/whitelabel/domains/{id}/validate            {id, valid, validation_results}
  Wrong credentials: Twilio 401 {code: 20003}, SendGrid 401 {"errors": [...]}.

Control API (never recorded):
  GET  /_fake/requests[?path=substr]  recorded requests: method, path, query,
                                      headers, body, json, form, time, client_port,
                                      fault (the fault applied to it, or null)
  GET  /_fake/sent                    what was accepted: {"twilio": [messages],
                                      "sendgrid": [{"message_id", "json"}]}
  POST /_fake/reset                   forget requests, faults, messages; default state
  POST /_fake/faults                  queue one fault or a list, applied in order to the
                                      first matching request:
        {"match": "/v3/mail/send",   substring of the path (default: any)
         "method": "POST",           optional
         "status": 429,              answer this instead of the real one
         "retry_after": 1,           Retry-After header (seconds)
         "body": "not json{",        raw body to answer (with or without status)
         "delay_ms": 3000,           wait before answering (slow answers, timeouts)
         "accept": true,             do the real work (e.g. store the message) first,
                                     then answer the fault: "5xx but sent"
         "reset": true,              answer nothing: close the connection with a TCP
                                     reset (after delay_ms; with "accept", after the
                                     real work: "sent, but the answer was lost")
         "times": 1}                 how many requests it applies to (default 1; 0 = forever)
  POST /_fake/message                 add or change one Twilio message: {"sid", "status",
                                      "error_code", …} (delivery reports, for polling)
  POST /_fake/faults/clear            drop every queued fault (requests and messages stay)
  POST /_fake/state                   set: twilio_sid, twilio_token, sendgrid_key,
                                      subaccounts [sid], account_status, account_type,
                                      balance ("12.34" or null for 404), numbers [..],
                                      domains [..], scopes [..], validations {id: {...}},
                                      messaging_services {"MG…": ["+1…" sender pool]}

Twilio behaviours modelled (reference/providers.md §3, the Message resource):
  - a send with MessagingServiceSid (no From) gets `from` = a sender of the
    service's pool and `messaging_service_sid` = the service, status "accepted";
    the list's From filter matches that number, never the MG… SID;
  - Body over 1600 characters: 400, error 21617;
  - the list's DateSent filters compare `date_sent` (null until the message
    leaves Twilio) by UTC date (YYYY-MM-DD), as Twilio documents.
"""

from __future__ import annotations

import argparse
import base64
import copy
import email.utils
import json
import re
import secrets
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DEFAULT_STATE = {
    "twilio_sid": "ACfake00000000000000000000000000",
    "twilio_token": "fake-twilio-token-0000",
    "sendgrid_key": "SG.fake-sendgrid-key-0000",
    "subaccounts": [],
    "account_status": "active",
    "account_type": "Full",
    "balance": "12.34",
    "currency": "USD",
    "numbers": [],
    "domains": [],
    "scopes": ["mail.send", "user.profile.read"],
    "validations": {},
    "messaging_services": {},
}

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


class Fake:
    def __init__(self, state: dict | None = None):
        self.lock = threading.Lock()
        self.reset(state)

    def reset(self, state: dict | None = None):
        with getattr(self, "lock", threading.Lock()):
            self.state = copy.deepcopy(DEFAULT_STATE)
            if state:
                self.state.update(state)
            self.requests: list[dict] = []
            self.faults: list[dict] = []
            self.messages: list[dict] = []  # Twilio, in creation order
            self.mails: list[dict] = []     # SendGrid accepted sends

    def take_fault(self, method: str, path: str) -> dict | None:
        with self.lock:
            for f in self.faults:
                if f.get("match", "") not in path:
                    continue
                if f.get("method") and f["method"].upper() != method:
                    continue
                times = f.get("times", 1)
                if times != 0:
                    f["times"] = times - 1
                    if f["times"] == 0:
                        self.faults.remove(f)
                return dict(f)
        return None


def twilio_error(code: int, message: str, status: int) -> dict:
    return {"code": code, "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}


def sendgrid_errors(message: str, field: str | None = None) -> dict:
    return {"errors": [{"message": message, "field": field, "help": None}]}


def date_sent_matches(msg: dict, q: dict) -> bool:
    """Twilio's DateSent, DateSent< and DateSent> list filters: UTC dates
    (YYYY-MM-DD, a time part is ignored), on and before / on and after,
    compared with `date_sent` (a message not sent yet has none)."""
    wanted = [(k, q[k][:10]) for k in ("DateSent", "DateSent<", "DateSent>") if q.get(k)]
    if not wanted:
        return True
    if not msg.get("date_sent"):
        return False
    day = email.utils.parsedate_to_datetime(msg["date_sent"]).strftime("%Y-%m-%d")
    return all(day == d if k == "DateSent" else day <= d if k == "DateSent<" else day >= d
               for k, d in wanted)


def rfc2822(t: float) -> str:
    return email.utils.formatdate(t, usegmt=False).replace("-0000", "+0000")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections
    # Headers and body go out in separate writes; with Nagle on, the body waits
    # for the client's delayed ACK (~40 ms a request on Linux).
    disable_nagle_algorithm = True
    fake: Fake = None  # set on the class by main()

    def log_message(self, fmt, *args):  # quiet
        pass

    # ---- plumbing ----
    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body=None, headers: dict | None = None, raw: bytes | None = None):
        if raw is None:
            raw = b"" if body is None else json.dumps(body).encode()
        try:
            self.send_response(status)
            if raw or body is not None:
                self.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if raw:
                self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def _handle(self, method: str):
        parts = urlsplit(self.path)
        path, query = parts.path, parts.query
        body = self._read_body()
        if path.startswith("/_fake/"):
            return self._control(method, path, query, body)
        rec = {"method": method, "path": path, "query": query,
               "headers": {k: v for k, v in self.headers.items()},
               "body": body.decode("utf-8", "replace"), "json": None, "form": None,
               "time": time.time(),
               # the client's port: equal ports = one reused connection
               "client_port": self.client_address[1], "fault": None}
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            try:
                rec["json"] = json.loads(body or b"null")
            except ValueError:
                pass
        elif "x-www-form-urlencoded" in ctype:
            rec["form"] = {k: v[0] if len(v) == 1 else v
                           for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        with self.fake.lock:
            self.fake.requests.append(rec)

        fault = self.fake.take_fault(method, path)
        if fault:
            with self.fake.lock:
                rec["fault"] = {k: v for k, v in fault.items() if k != "times"}
        if fault and fault.get("delay_ms"):
            time.sleep(fault["delay_ms"] / 1000.0)
        if fault and fault.get("reset"):
            if fault.get("accept"):
                self._route(method, path, query, body, rec, discard=True)
            return self._reset()
        if fault and (fault.get("status") is not None or fault.get("body") is not None):
            headers = {}
            status = fault.get("status")
            if status is None or fault.get("accept"):
                # Do the real work; a body-only fault also keeps its status and headers.
                real_status, real_headers = self._route(method, path, query, body, rec,
                                                        discard=True, want_status=True)
                if status is None:
                    status = real_status
                    headers.update(real_headers)
            if fault.get("retry_after") is not None:
                headers["Retry-After"] = fault["retry_after"]
            raw = fault.get("body")
            if raw is None:
                raw = json.dumps(self._fault_body(path, status)).encode()
            else:
                raw = raw.encode()
            return self._send(status, headers=headers, raw=raw)
        self._route(method, path, query, body, rec)

    def _reset(self):
        """Closes the connection with a TCP RST (SO_LINGER 0), no answer: what a
        provider's load balancer dropping the connection looks like to the client."""
        self.close_connection = True
        self._was_reset = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def finish(self):
        if getattr(self, "_was_reset", False):
            return  # nothing to flush: the socket is gone
        super().finish()

    def _fault_body(self, path: str, status: int) -> dict:
        if path.startswith("/v3/"):
            return sendgrid_errors("too many requests" if status == 429 else "internal error")
        code = 20429 if status == 429 else 20500 if status >= 500 else 20001
        return twilio_error(code, "Too Many Requests" if status == 429 else "Internal Server Error",
                            status)

    def _route(self, method, path, query, body, rec, discard=False, want_status=False):
        """Runs the real endpoint. discard: do the work but do not answer
        (returns (status, headers) when want_status)."""
        out = {}

        def reply(status, payload=None, headers=None, raw=None):
            out["status"], out["headers"] = status, headers or {}
            if not discard:
                self._send(status, payload, headers, raw)

        if path.startswith("/2010-04-01/"):
            self._twilio(method, path, query, rec, reply)
        elif path.startswith("/v3/"):
            self._sendgrid(method, path, query, rec, reply)
        else:
            reply(404, {"message": "not found"})
        if want_status:
            return out.get("status", 500), out.get("headers", {})
        return None

    # ---- control ----
    def _control(self, method, path, query, body):
        f = self.fake
        if method == "GET" and path == "/_fake/requests":
            q = parse_qs(query)
            sub = q.get("path", [""])[0]
            with f.lock:
                reqs = [r for r in f.requests if sub in r["path"]]
            return self._send(200, reqs)
        if method == "GET" and path == "/_fake/sent":
            with f.lock:
                return self._send(200, {"twilio": f.messages, "sendgrid": f.mails})
        if method == "POST" and path == "/_fake/reset":
            f.reset(json.loads(body) if body else None)
            return self._send(200, {"ok": True})
        if method == "POST" and path == "/_fake/faults":
            items = json.loads(body or b"[]")
            items = items if isinstance(items, list) else [items]
            with f.lock:
                f.faults.extend(items)
            return self._send(200, {"ok": True, "queued": len(f.faults)})
        if method == "POST" and path == "/_fake/faults/clear":
            with f.lock:
                f.faults.clear()
            return self._send(200, {"ok": True})
        if method == "POST" and path == "/_fake/state":
            with f.lock:
                f.state.update(json.loads(body or b"{}"))
            return self._send(200, {"ok": True})
        if method == "POST" and path == "/_fake/message":
            # a Twilio message's later life (delivery reports, for polling tests):
            # {"sid": "SM…", "status": "delivered", "error_code": 30003, …}; an unknown
            # sid is added (with "account_sid" defaulting to the configured one)
            upd = json.loads(body or b"{}")
            with f.lock:
                for x in f.messages:
                    if x["sid"] == upd.get("sid"):
                        x.update(upd)
                        break
                else:
                    msg = {"account_sid": f.state["twilio_sid"], "to": "+15550000000",
                           "from": "+15550000001", "body": "", "status": "queued",
                           "error_code": None, "error_message": None, "num_segments": "1",
                           "direction": "outbound-api", "date_created": rfc2822(time.time())}
                    msg.update(upd)
                    f.messages.append(msg)
            return self._send(200, {"ok": True})
        return self._send(404, {"message": "unknown control path"})

    # ---- Twilio ----
    def _twilio_auth_ok(self) -> bool:
        h = self.headers.get("Authorization", "")
        if not h.startswith("Basic "):
            return False
        try:
            user, _, pw = base64.b64decode(h[6:]).decode().partition(":")
        except ValueError:
            return False
        st = self.fake.state
        return user == st["twilio_sid"] and pw == st["twilio_token"]

    def _twilio(self, method, path, query, rec, reply):
        st = self.fake.state
        if not self._twilio_auth_ok():
            return reply(401, twilio_error(20003, "Authenticate", 401),
                         {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        m = re.match(r"^/2010-04-01/Accounts/([^/]+?)(\.json|/.*)$", path)
        if not m:
            return reply(404, twilio_error(20404, "The requested resource was not found", 404))
        sid, rest = m.group(1), m.group(2)
        if sid != st["twilio_sid"] and sid not in st["subaccounts"]:
            return reply(404, twilio_error(20404, f"The requested resource /2010-04-01/Accounts/"
                                                  f"{sid}.json was not found", 404))
        q = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        if rest == ".json" and method == "GET":
            return reply(200, {"sid": sid, "friendly_name": "Fake account",
                               "status": st["account_status"], "type": st["account_type"],
                               "owner_account_sid": st["twilio_sid"],
                               "date_created": rfc2822(time.time() - 86400)})
        if rest == "/Balance.json" and method == "GET":
            if st["balance"] is None or sid != st["twilio_sid"]:
                return reply(404, twilio_error(20404, "Balance not available", 404))
            return reply(200, {"account_sid": sid, "balance": st["balance"],
                               "currency": st["currency"]})
        if rest == "/IncomingPhoneNumbers.json" and method == "GET":
            want = q.get("PhoneNumber")
            nums = [n for n in st["numbers"] if not want or n.get("phone_number") == want]
            return reply(200, {"incoming_phone_numbers": nums, "page": 0,
                               "page_size": 50, "next_page_uri": None})
        if rest == "/Messages.json" and method == "POST":
            return self._twilio_send(sid, rec, reply)
        if rest == "/Messages.json" and method == "GET":
            with self.fake.lock:
                msgs = [x for x in reversed(self.fake.messages) if x["account_sid"] == sid
                        and ("To" not in q or x["to"] == q["To"])
                        and ("From" not in q or x["from"] == q["From"])
                        and date_sent_matches(x, q)]
            # newest first by date_created (stable: later insertions first on a tie)
            msgs.sort(key=lambda x: email.utils.parsedate_to_datetime(x["date_created"]),
                      reverse=True)
            size = int(q.get("PageSize", "50"))
            return reply(200, {"messages": msgs[:size], "page": 0, "page_size": size,
                               "next_page_uri": None})
        m = re.match(r"^/Messages/(SM[0-9a-f]{32})\.json$", rest)
        if m and method == "GET":
            with self.fake.lock:
                for x in self.fake.messages:
                    if x["sid"] == m.group(1) and x["account_sid"] == sid:
                        return reply(200, x)
            return reply(404, twilio_error(20404, f"The requested resource {path} was not found",
                                           404))
        return reply(404, twilio_error(20404, "The requested resource was not found", 404))

    def _twilio_send(self, sid, rec, reply):
        form = rec["form"] or {}
        to, body = form.get("To", ""), form.get("Body")
        frm, mgs = form.get("From"), form.get("MessagingServiceSid")
        if not to:
            return reply(400, twilio_error(21604, "A 'To' phone number is required.", 400))
        if not E164.match(to):
            return reply(400, twilio_error(21211, f"The 'To' number {to} is not a valid phone "
                                                  "number.", 400))
        if not frm and not mgs:
            return reply(400, twilio_error(21603, "A 'From' phone number is required.", 400))
        if not body:
            return reply(400, twilio_error(21602, "Message body is required.", 400))
        if len(body) > 1600:
            return reply(400, twilio_error(21617, "The concatenated message body exceeds the "
                                                  "1600 character limit.", 400))
        status = "queued"
        if mgs:
            pool = self.fake.state["messaging_services"].get(mgs)
            if pool is None:
                return reply(400, twilio_error(21701, "The Messaging Service Sid " + mgs +
                                                      " is invalid.", 400))
            # Twilio picks a sender of the service's pool (unless From names one)
            frm = frm or (pool[0] if pool else None)
            status = "accepted"
        now = time.time()
        msg = {"sid": "SM" + secrets.token_hex(16), "account_sid": sid, "to": to,
               "from": frm, "messaging_service_sid": mgs, "body": body, "status": status,
               "direction": "outbound-api", "num_segments": "1", "price": None,
               "price_unit": "USD", "error_code": None, "error_message": None,
               "date_created": rfc2822(now), "date_updated": rfc2822(now), "date_sent": None,
               "api_version": "2010-04-01", "status_callback": form.get("StatusCallback"),
               "uri": f"/2010-04-01/Accounts/{sid}/Messages/.json"}
        msg["uri"] = f"/2010-04-01/Accounts/{sid}/Messages/{msg['sid']}.json"
        with self.fake.lock:
            self.fake.messages.append(msg)
        reply(201, msg)

    # ---- SendGrid ----
    def _sendgrid(self, method, path, query, rec, reply):
        st = self.fake.state
        h = self.headers.get("Authorization", "")
        if not h.startswith("Bearer "):
            return reply(401, sendgrid_errors("authorization required"))
        if h[7:] != st["sendgrid_key"]:
            return reply(401, sendgrid_errors("The provided authorization grant is invalid, "
                                              "expired, or revoked"))
        q = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        if path == "/v3/mail/send" and method == "POST":
            if "mail.send" not in st["scopes"]:
                return reply(403, sendgrid_errors("access forbidden"))
            return self._sendgrid_send(rec, reply)
        if path == "/v3/scopes" and method == "GET":
            return reply(200, {"scopes": st["scopes"]})
        if path == "/v3/whitelabel/domains" and method == "GET":
            doms = [d for d in st["domains"] if not q.get("domain") or d["domain"] == q["domain"]]
            return reply(200, doms)
        m = re.match(r"^/v3/whitelabel/domains/(\d+)/validate$", path)
        if m and method == "POST":
            did = int(m.group(1))
            dom = next((d for d in st["domains"] if d["id"] == did), None)
            if dom is None:
                return reply(404, sendgrid_errors("authenticated domain not found"))
            v = st["validations"].get(str(did))
            if v is None:
                v = {"id": did, "valid": dom.get("valid", True), "validation_results": {
                    name: {"valid": rec_.get("valid", True),
                           "reason": None if rec_.get("valid", True) else "record not found"}
                    for name, rec_ in dom.get("dns", {}).items()}}
            return reply(200, v)
        return reply(404, sendgrid_errors("not found"))

    def _sendgrid_send(self, rec, reply):
        j = rec["json"]
        if not isinstance(j, dict):
            return reply(400, sendgrid_errors("Bad Request", None))
        pers = j.get("personalizations")
        if not isinstance(pers, list) or not pers:
            return reply(400, sendgrid_errors("The personalizations field is required and must "
                                              "have at least one personalization.",
                                              "personalizations"))
        for i, p in enumerate(pers):
            tos = p.get("to") if isinstance(p, dict) else None
            if not isinstance(tos, list) or not tos:
                return reply(400, sendgrid_errors("The to array is required for all "
                                                  "personalization objects, and must have at "
                                                  "least one email object with a valid email "
                                                  "address.", f"personalizations.{i}.to"))
            for t in tos:
                if not EMAIL.match(str(t.get("email", ""))):
                    return reply(400, sendgrid_errors("Does not contain a valid address.",
                                                      f"personalizations.{i}.to"))
        frm = j.get("from")
        if not isinstance(frm, dict) or not EMAIL.match(str(frm.get("email", ""))):
            return reply(400, sendgrid_errors("The from email does not contain a valid address.",
                                              "from.email"))
        if not j.get("subject") and not j.get("template_id"):
            return reply(400, sendgrid_errors("The subject is required. You can get around this "
                                              "requirement if you use a template with a subject "
                                              "defined or if every personalization has a "
                                              "subject defined.", "subject"))
        content = j.get("content")
        if not isinstance(content, list) or not content or any(
                not isinstance(c, dict) or not c.get("type") or not c.get("value")
                for c in content):
            return reply(400, sendgrid_errors("Unless a valid template_id is provided, the "
                                              "content parameter is required. There must be at "
                                              "least one defined content block.", "content"))
        types = [c["type"] for c in content]
        if "text/plain" in types and types[0] != "text/plain":
            return reply(400, sendgrid_errors("If present, text/plain content must be first, "
                                              "followed by any other content.", "content"))
        mid = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")[:22]
        with self.fake.lock:
            self.fake.mails.append({"message_id": mid, "json": j})
        reply(202, None, {"X-Message-Id": mid})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--state", help="JSON object merged into the default state")
    args = ap.parse_args(argv)
    Handler.fake = Fake(json.loads(args.state) if args.state else None)
    # A listen backlog for concurrent senders (the outbox opens up to 16
    # connections at once): socketserver's default of 5 drops SYNs, which
    # the client retransmits only after a second.
    ThreadingHTTPServer.request_queue_size = 128
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    port = srv.server_address[1]
    if args.port_file:
        with open(args.port_file, "w") as fh:
            fh.write(f"{port}\n")
    print(f"PORT {port}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
