"""Certificates for the TLS tests, made with the openssl command line (a private
CA per test; nothing here is trusted outside it), and the "secure" services of
scripts/services (a TLS-only FerretDB with SCRAM users and client certificates, a
TLS-only Redis with an ACL user), whose settings come from .services.env."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import REPO, Daemon


def _openssl(*args: str, cwd: Path) -> None:
    cp = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, f"openssl {' '.join(args)}:\n{cp.stderr}"


@dataclass
class Cert:
    crt: Path
    key: Path
    pem: Path  # certificate + key in one file (mongoc's tlsCertificateKeyFile)


def make_ca(d: Path, name: str = "test CA") -> Cert:
    d.mkdir(parents=True, exist_ok=True)
    stem = name.replace(" ", "_")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{stem}.key", "-out", f"{stem}.crt", cwd=d)
    return _bundle(d, stem)


def make_cert(d: Path, ca: Cert, name: str, san: str = "IP:127.0.0.1", days: int = 2,
              usage: str = "serverAuth") -> Cert:
    """A certificate signed by `ca`; days=-1 makes one that expired yesterday."""
    d.mkdir(parents=True, exist_ok=True)
    stem = name.replace(" ", "_").replace(".", "_")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{stem}.key", "-out", f"{stem}.csr", cwd=d)
    (d / f"{stem}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
    _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", str(ca.crt), "-CAkey", str(ca.key),
             "-CAcreateserial", "-days", str(days), "-extfile", f"{stem}.ext",
             "-out", f"{stem}.crt", cwd=d)
    return _bundle(d, stem)


def _bundle(d: Path, stem: str) -> Cert:
    crt, key, pem = d / f"{stem}.crt", d / f"{stem}.key", d / f"{stem}.pem"
    pem.write_text(crt.read_text() + key.read_text())
    return Cert(crt, key, pem)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listening on {port} after {timeout}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Secure:
    """The secure services of scripts/services."""

    tls_dir: Path
    mongo_port: int
    mongo_user: str
    mongo_password: str
    redis_port: int
    redis_user: str
    redis_password: str

    @property
    def ca(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def client_pem(self) -> Path:
        return self.tls_dir / "client.pem"

    def mongo_url(self, db: str, *, user: str | None = None, password: str | None = None,
                  host: str = "127.0.0.1", ca: Path | str | None = None,
                  client_pem: Path | str | None = "default", **options: str) -> str:
        user = self.mongo_user if user is None else user
        password = self.mongo_password if password is None else password
        opts = {"tls": "true", "tlsCAFile": str(ca or self.ca)}
        if client_pem is not None:
            opts["tlsCertificateKeyFile"] = str(self.client_pem if client_pem == "default"
                                                else client_pem)
        opts.update(options)
        query = "&".join(f"{k}={v}" for k, v in opts.items())
        return (f"mongodb://{quote(user, safe='')}:{quote(password, safe='')}@{host}:"
                f"{self.mongo_port}/{db}?{query}")

    def pymongo(self, **kw):
        import pymongo
        return pymongo.MongoClient("127.0.0.1", self.mongo_port, directConnection=True, tls=True,
                                   tlsCAFile=str(self.ca),
                                   tlsCertificateKeyFile=str(self.client_pem),
                                   username=self.mongo_user, password=self.mongo_password,
                                   authSource="admin", serverSelectionTimeoutMS=5000, **kw)

    def redis(self, **kw):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.redis_port, ssl=True,
                           ssl_ca_certs=str(self.ca), username=self.redis_user,
                           password=self.redis_password, decode_responses=True,
                           socket_timeout=5, socket_connect_timeout=5, **kw)


def secure_services(services: dict) -> Secure:
    need = ("SECURE_TLS_DIR", "SECURE_MONGO_PORT", "SECURE_MONGO_USER", "SECURE_MONGO_PASSWORD",
            "SECURE_REDIS_PORT", "SECURE_REDIS_USER", "SECURE_REDIS_PASSWORD")
    missing = [k for k in need if not services.get(k)]
    if missing:
        pytest.fail(f"the secure services are not up ({', '.join(missing)} missing): "
                    "run scripts/services down && scripts/services up", pytrace=False)
    return Secure(Path(services["SECURE_TLS_DIR"]), int(services["SECURE_MONGO_PORT"]),
                  services["SECURE_MONGO_USER"], services["SECURE_MONGO_PASSWORD"],
                  int(services["SECURE_REDIS_PORT"]), services["SECURE_REDIS_USER"],
                  services["SECURE_REDIS_PASSWORD"])


def is_static(path: str) -> bool:
    out = subprocess.run(["file", "-b", path], capture_output=True, text=True).stdout
    return "statically linked" in out


def empty_root(sd, tmp_path: Path, *files: Path) -> Path:
    """A chroot holding only the static binary, the rules and `files` (under
    /tls): no CA store, no /etc/hosts, no zoneinfo. Skips for the development
    build and when not root."""
    if not is_static(sd.bin):
        pytest.skip("checks the static release binary (scripts/test's second pass)")
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy2(sd.bin, root / "supportd")
    shutil.copytree(REPO / "rules", root / "rules")
    (root / "tls").mkdir()
    for f in files:
        shutil.copy2(f, root / "tls" / f.name)
    return root


def chroot_run(sd, root: Path, *args: str, timeout: float = 60, **env) -> subprocess.CompletedProcess:
    full = sd.env(QM_SUPPORT_RULES_DIR="/rules", **env)
    full.pop("LD_PRELOAD", None)
    return subprocess.run(["chroot", str(root), "/supportd", *args], env=full,
                          capture_output=True, text=True, timeout=timeout)


class Runner:
    """Runs supportd as the test binary, or (chrooted=True) from an empty root
    holding only the static binary, the rules and the certificate files the
    environment names: every absolute path of an existing file inside a value
    (REDIS_TLS_CA_FILE, or tlsCAFile=... inside MONGO_DB_URL) is copied to
    /tls/<name> and rewritten. The empty-root variant skips unless the binary
    is static and we are root."""

    def __init__(self, sd, tmp_path: Path, chrooted: bool, defaults: dict | None = None):
        self.sd, self.tmp_path, self.chrooted = sd, tmp_path, chrooted
        self.defaults = defaults or {}
        self.root = empty_root(sd, tmp_path) if chrooted else None

    def _env(self, env: dict) -> dict:
        env = {**self.defaults, **env}
        if not self.chrooted:
            return env
        out = {}
        for k, v in env.items():
            if v is None:
                out[k] = None
                continue
            v = str(v)
            for path in set(re.findall(r"/[^&?=\s:@]+", v)):
                f = Path(path)
                if f.is_file() and not str(f).startswith(str(self.root)):
                    (self.root / "tls" / f.name).write_bytes(f.read_bytes())
                    v = v.replace(path, f"/tls/{f.name}")
            out[k] = v
        return out

    def cli(self, *args: str, **env) -> subprocess.CompletedProcess:
        env = self._env(env)
        if not self.chrooted:
            return self.sd.cli(*args, **env)
        return chroot_run(self.sd, self.root, *args, **env)

    def start(self, **env) -> Daemon:
        env = self._env(env)
        if not self.chrooted:
            return self.sd.start("run", **env)
        full = self.sd.env(QM_SUPPORT_RULES_DIR="/rules", **env)
        full.pop("LD_PRELOAD", None)
        name = f"chroot{len(self.sd.daemons) + 1}"
        err_path, out_path = self.tmp_path / f"{name}.stderr", self.tmp_path / f"{name}.stdout"
        ferr, fout = open(err_path, "wb"), open(out_path, "wb")
        proc = subprocess.Popen(["chroot", str(self.root), "/supportd", "run"], env=full,
                                stdin=subprocess.DEVNULL, stdout=fout, stderr=ferr)
        d = Daemon(name, proc, err_path, out_path, full, [ferr, fout])
        self.sd.daemons.append(d)
        return d
