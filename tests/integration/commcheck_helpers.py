"""Helpers for the communication-check tests: a world of rooms, channels and
the provider fake; local HTTP(S) webhook endpoints with a test CA made by the
openssl CLI; a minimal SMTP server that rejects every login. Loopback only."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pymongo
from bson import ObjectId

from conftest import REPO

CHANNELS = "conversation-channel"
ALERTS = "conversation-alert"
ROOMS = "conversation-room"
OUTBOX = "conversation-notification"


# ----------------------------------------------------------- webhooks ----

class _Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    status = 405
    delay = 0.0

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.server.delay:
            self.server.hung.wait(self.server.delay)
        try:
            self.send_response(self.server.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
        except OSError:
            pass


class WebhookServer:
    """An HTTP(S) endpoint on 127.0.0.1 answering GET with `status`."""

    def __init__(self, status: int = 405, tls: tuple[Path, Path] | None = None,
                 delay: float = 0.0):
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
        self.srv.daemon_threads = True
        self.srv.status, self.srv.delay = status, delay
        self.srv.hung = threading.Event()
        scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.srv.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.srv.hung.set()
        self.srv.shutdown()
        self.srv.server_close()


class CertAuthority:
    """A throwaway CA (openssl CLI) and server certificates for 127.0.0.1."""

    def __init__(self, folder: Path, name: str = "ca"):
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key, self.pem = self.dir / f"{name}.key", self.dir / f"{name}.pem"
        self._ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                  "-nodes", "-keyout", self.key, "-out", self.pem, "-days", "30",
                  "-subj", f"/CN=supportd test {name}")

    @staticmethod
    def _ssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    def server_cert(self, days: int, name: str) -> tuple[Path, Path]:
        key, csr, crt = (self.dir / f"{name}.key", self.dir / f"{name}.csr",
                         self.dir / f"{name}.pem")
        ext = self.dir / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n")
        self._ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
        self._ssl("x509", "-req", "-in", csr, "-CA", self.pem, "-CAkey", self.key,
                  "-CAcreateserial", "-out", crt, "-days", str(days), "-extfile", ext)
        return crt, key


# --------------------------------------------------------------- SMTP ----

class RejectingSMTP:
    """Speaks just enough SMTP to offer AUTH and refuse it (535)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.url = f"smtp://127.0.0.1:{self.port}"
        self.logins = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(c,), daemon=True).start()

    def _session(self, c):
        f = c.makefile("rwb")
        try:
            f.write(b"220 fake ESMTP\r\n"); f.flush()
            for line in f:
                cmd = line.decode(errors="replace").strip().upper()
                if cmd.startswith("EHLO"):
                    f.write(b"250-fake\r\n250 AUTH PLAIN LOGIN\r\n")
                elif cmd.startswith("AUTH"):
                    self.logins += 1
                    f.write(b"535 5.7.8 Authentication credentials invalid\r\n")
                elif cmd.startswith("QUIT"):
                    f.write(b"221 bye\r\n"); f.flush()
                    break
                else:
                    f.write(b"250 ok\r\n")
                f.flush()
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


# -------------------------------------------------------------- world ----

class World:
    """One test's rooms, channels, rules folder and `supportd once
    communication-check` runs against the provider fake and Mailpit."""

    def __init__(self, sd, providers, tmp_path: Path):
        self.sd, self.p, self.fake = sd, providers, providers.fake
        self.client = pymongo.MongoClient(sd.mongo_url, tz_aware=True)
        self.db = self.client[sd.db_name]
        self.rules = tmp_path / "rules"
        shutil.copytree(REPO / "rules", self.rules, ignore=shutil.ignore_patterns("fixtures"))
        self.tag = uuid.uuid4().hex[:10]
        self.manager = {"user_id": ObjectId(), "name": "Petra",
                        "email": f"petra-{self.tag}@acme.example", "role": "manager"}
        self.agent = {"user_id": ObjectId(), "name": "Anna",
                      "email": f"anna-{self.tag}@acme.example", "role": "agent"}
        self.room = ObjectId()
        self.db[ROOMS].insert_one({"_id": self.room, "name": "Berlin",
                                   "members": [self.agent, self.manager],
                                   "email_from": "support@acme.example"})
        self.servers: list = []
        self.extra_env: dict = {}

    # -- setup --
    def health(self, **thresholds):
        """Rewrites values in health.lua's thresholds table."""
        path = self.rules / "health.lua"
        text = path.read_text()
        for k, v in thresholds.items():
            import re
            text, n = re.subn(rf"(\n  {k} = )[^,]+,", rf"\g<1>{v},", text)
            assert n == 1, k
        path.write_text(text)

    def channel(self, **fields) -> ObjectId:
        doc = {"_id": ObjectId(), "room_id": self.room, "active": True, **fields}
        self.db[CHANNELS].insert_one(doc)
        return doc["_id"]

    def sms(self, phone: str = "+4930123456", webhook: str | None = None, **fields) -> ObjectId:
        return self.channel(type="sms", provider="twilio", phone_number=phone,
                            **({"webhook_url": webhook} if webhook else {}), **fields)

    def number(self, phone: str, sms_url: str, sms: bool = True) -> dict:
        return {"sid": "PN" + uuid.uuid4().hex, "phone_number": phone, "status": "in-use",
                "capabilities": {"sms": sms, "mms": False, "voice": True, "fax": False},
                "sms_url": sms_url, "sms_application_sid": None}

    def webhook(self, status: int = 405, **kw) -> WebhookServer:
        s = WebhookServer(status, **kw)
        self.servers.append(s)
        return s

    # -- running --
    def env(self, **overrides) -> dict:
        e = self.p.env(QM_SUPPORT_RULES_DIR=str(self.rules), QM_SUPPORT_EMAIL_PROVIDER="smtp",
                       SMTP_URL=self.sd.services["SMTP_URL"])
        e.update(self.extra_env)
        e.update(overrides)
        return e

    def tick(self, expect_rc: int = 0, **overrides) -> dict:
        cp = self.sd.cli("once", "communication-check", timeout=120, **self.env(**overrides))
        self.p.outputs.append(cp.stdout + cp.stderr)
        assert cp.returncode == expect_rc, cp.stderr[-4000:]
        ends = [json.loads(line) for line in cp.stderr.splitlines()
                if line.startswith("{") and '"tick.end"' in line]
        assert ends, cp.stderr[-3000:]
        self.last_stderr = cp.stderr
        return ends[-1]

    def start(self, name: str, **overrides):
        return self.sd.start("once", "communication-check", name=name, **self.env(**overrides))

    # -- reading --
    def alerts(self, **filt) -> list[dict]:
        return list(self.db[ALERTS].find(filt).sort("first_seen_at", 1))

    def open_alert(self, channel: ObjectId, check: str) -> dict | None:
        return self.db[ALERTS].find_one({"key": f"{channel}:{check}", "status": "open"})

    def notifications(self) -> list[dict]:
        return list(self.db[OUTBOX].find({"type": "channel.alert"}).sort("created_at", 1))

    def mails(self) -> list[str]:
        api = self.sd.services["MAILPIT_API_URL"]
        q = urllib.request.quote(f'to:"{self.manager["email"]}"')
        with urllib.request.urlopen(f"{api}/api/v1/search?query={q}&limit=100", timeout=10) as r:
            return [m["Subject"] for m in json.load(r)["messages"]]

    def close(self):
        for s in self.servers:
            s.close()
        self.client.close()
