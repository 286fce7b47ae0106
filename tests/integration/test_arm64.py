"""The arm64 release binary (`zig build -Dstatic=true -Dtarget=aarch64-linux-musl`), run
under qemu-user (Debian's qemu-user-static): `version`, `rules check`, dry-runs of the
shipped fixtures compared byte for byte with the x86_64 release binary's, and a `once
snooze` against the test services.

SUPPORTD_ARM64_BIN names the arm64 binary (scripts/test sets it, after building it); without it
these tests skip. The x86_64 reference is SUPPORTD_BIN, which must be the static release
binary for the comparisons (scripts/test runs this file with it)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import REPO, supportd_bin
from test_snooze import NOW, World
from tls_helpers import is_static

ARM64 = os.environ.get("SUPPORTD_ARM64_BIN")

pytestmark = pytest.mark.skipif(not ARM64, reason="SUPPORTD_ARM64_BIN not set (scripts/test builds it, then sets it)")

# (folder, extra arguments): every shipped fixture set, whole and per job, both formats
DRY_RUNS = [
    (d, args)
    for d in ("rules/fixtures", "tests/fixtures/demo", "tests/fixtures/notification")
    for args in (("--format", "text"), ("--format", "json"))
] + [
    ("rules/fixtures", ("--job", job, "--format", "json"))
    for job in ("snooze", "message-status", "notification", "communication-check")
] + [
    ("tests/fixtures/bad-json", ("--format", "text")),   # usage errors say the same too
    ("tests/fixtures/not-array", ("--format", "text")),
]


@pytest.fixture(scope="module")
def qemu() -> str:
    path = shutil.which("qemu-aarch64-static")
    assert path, "qemu-aarch64-static not found (scripts/setup installs qemu-user-static)"
    return path


@pytest.fixture(scope="module")
def x86() -> str:
    ref = supportd_bin()
    if not is_static(ref):
        pytest.skip("the x86_64 reference must be the static release binary (SUPPORTD_BIN)")
    return ref


def test_is_a_static_arm64_binary():
    head = Path(ARM64).read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    out = subprocess.run(["file", "-b", ARM64], capture_output=True, text=True).stdout
    assert "statically linked" in out, out


def run(cmd: list[str], *args: str, cwd: Path = REPO, **env) -> subprocess.CompletedProcess:
    """ARGS in an environment holding only `env` (and the rules folder)."""
    full = {"QM_SUPPORT_RULES_DIR": str(REPO / "rules"), **env}
    return subprocess.run([*cmd, *args], env=full, cwd=cwd, capture_output=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def without_times(stderr: bytes) -> list:
    """The log lines with their timestamps left out (the rest must match)."""
    lines = []
    for line in stderr.decode().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            lines.append(line)
            continue
        obj.pop("ts", None)
        lines.append(obj)
    return lines


def test_version_and_rules_check_as_on_x86_64(qemu, x86):
    for args in (("version",), ("rules", "check"), ("rules", "check", str(REPO / "rules"))):
        a, b = run([qemu, ARM64], *args), run([x86], *args)
        assert a.returncode == 0, a.stderr.decode()
        assert (a.returncode, a.stdout) == (b.returncode, b.stdout), args


@pytest.mark.parametrize("folder,args", DRY_RUNS, ids=[f"{d}:{' '.join(a)}" for d, a in DRY_RUNS])
def test_dry_run_byte_for_byte(qemu, x86, tmp_path, folder, args):
    a = run([qemu, ARM64], "dry-run", "--fixtures", str(REPO / folder), *args)
    b = run([x86], "dry-run", "--fixtures", str(REPO / folder), *args)
    assert a.returncode == b.returncode, (a.stderr.decode(), b.stderr.decode())
    assert a.stdout == b.stdout
    assert without_times(a.stderr) == without_times(b.stderr)
    if folder.startswith("rules") or folder.endswith("demo"):
        assert a.returncode == 0 and a.stdout, a.stderr.decode()


def test_previews_byte_for_byte(qemu, x86, tmp_path):
    for name, cmd in (("arm64", [qemu, ARM64]), ("x86_64", [x86])):
        (tmp_path / name).mkdir()
        cp = run(cmd, "dry-run", "--fixtures", str(REPO / "rules/fixtures"), "--preview",
                 str(tmp_path / name))
        assert cp.returncode == 0, cp.stderr.decode()
    files = sorted(p.relative_to(tmp_path / "x86_64") for p in (tmp_path / "x86_64").rglob("*"))
    assert files and files == sorted(p.relative_to(tmp_path / "arm64") for p in (tmp_path / "arm64").rglob("*"))
    for f in files:
        if (tmp_path / "x86_64" / f).is_file():
            assert (tmp_path / "arm64" / f).read_bytes() == (tmp_path / "x86_64" / f).read_bytes(), f


def test_once_snooze_against_the_services(sd, qemu, tmp_path):
    wrapper = tmp_path / "supportd-arm64"
    wrapper.write_text(f'#!/bin/sh\nexec "{qemu}" "{ARM64}" "$@"\n')
    wrapper.chmod(0o755)
    sd.bin = str(wrapper)  # the harness runs the arm64 binary through qemu from here on
    world = World(sd)
    try:
        due = world.ticket(NOW - timedelta(minutes=1), assignee=world.jonas, subject=f"arm64 {world.tag}")
        later = world.ticket(NOW + timedelta(minutes=1), assignee=world.jonas)
        cp = world.once()
        assert cp.returncode == 0, cp.stderr
        c = world.conv(due)
        assert (c["status"], c["priority"]) == ("open", "high") and "snooze" not in c
        assert world.conv(later)["status"] == "snoozed"
        assert set(world.queue()) == {str(due)}
        assert [e["status"] for e in world.outbox(due)] == ["sent"]
        assert [m["Subject"] for m in world.mails_to(world.jonas["email"])] == [f"Back from snooze: arm64 {world.tag}"]
    finally:
        world.client.close()
