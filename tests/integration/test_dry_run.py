"""dry-run and rules check: golden plans on fixtures, byte-identical output,
clear errors for bad fixtures and bad rules. No database, Redis or network:
these run with none of them configured.

UPDATE_GOLDEN=1 rewrites the expected plans (review the diff before committing).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, supportd_bin, supportd_preload, unaligned_heap

FIXTURES = REPO / "tests" / "fixtures"
BIN = supportd_bin()


def run(*args, rules=REPO / "rules", **env_extra):
    env = {"PATH": os.environ["PATH"], "QM_SUPPORT_RULES_DIR": str(rules), **env_extra}
    if supportd_preload():
        env["LD_PRELOAD"] = supportd_preload()
    # Unreachable servers: dry-run must not try them.
    env.update(MONGO_DB_URL="mongodb://127.0.0.1:1/none", REDIS_HOST="127.0.0.1", REDIS_PORT="1")
    return subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("fmt,golden", [("json", "expected-plan.json"), ("text", "expected-plan.txt")])
def test_golden_plan_of_the_demo_fixtures(fmt, golden):
    cp = run("dry-run", "--fixtures", str(FIXTURES / "demo"), "--format", fmt)
    assert cp.returncode == 0, cp.stderr
    path = FIXTURES / "demo" / golden
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(cp.stdout)
    assert cp.stdout == path.read_text()


def test_same_input_gives_byte_identical_output():
    outs = {run("dry-run", "--fixtures", str(FIXTURES / "demo")).stdout for _ in range(3)}
    assert len(outs) == 1 and outs.pop().startswith("{")


def test_shipped_fixtures_plan_the_demo_data():
    cp = run("dry-run", "--fixtures", str(REPO / "rules" / "fixtures"), "--job", "snooze",
             "--format", "text")
    assert cp.returncode == 0, cp.stderr
    assert "unsnooze" in cp.stdout and "Back from snooze" in cp.stdout


def test_now_flag_changes_the_plan():
    early = run("dry-run", "--fixtures", str(FIXTURES / "demo"), "--now", "2026-02-01T00:00:00Z",
                "--format", "text")
    assert early.returncode == 0, early.stderr
    # A month earlier only the malformed snooze (woken whatever the time) and
    # the early reply are due.
    assert "(snooze ended)" not in early.stdout
    assert "snooze.until missing or not a date" in early.stdout


def test_malformed_fixture_names_file_and_position():
    cp = run("dry-run", "--fixtures", str(FIXTURES / "bad-json"))
    assert cp.returncode == 2
    assert "bad-json/conversation-conversation.json" in cp.stderr and "position 140" in cp.stderr
    cp = run("dry-run", "--fixtures", str(FIXTURES / "not-array"))
    assert cp.returncode == 2 and "conversation-room.json" in cp.stderr and "array" in cp.stderr


def test_dry_run_usage_errors():
    assert run("dry-run").returncode == 2
    assert run("dry-run", "--fixtures", str(FIXTURES / "demo"), "--job", "nope").returncode == 2
    assert run("dry-run", "--fixtures", str(FIXTURES / "demo"), "--format", "xml").returncode == 2
    cp = run("dry-run", "--fixtures", str(FIXTURES / "demo"), "--now", "yesterday")
    assert cp.returncode == 2 and "--now" in cp.stderr


def copy_rules(tmp_path: Path) -> Path:
    d = tmp_path / "rules"
    shutil.copytree(REPO / "rules", d, ignore=shutil.ignore_patterns("fixtures"))
    return d


def test_rules_check_ok_and_errors_with_file_and_line(tmp_path):
    cp = run("rules", "check", str(REPO / "rules"))
    assert cp.returncode == 0 and "ok" in cp.stdout, cp.stderr
    rules = copy_rules(tmp_path)
    queue = rules / "queue.lua"
    text = queue.read_text()
    queue.write_text(text.replace("function M.score(", "function M.scores("))
    cp = run("rules", "check", str(rules))
    assert cp.returncode == 1 and "queue.lua" in cp.stderr and "`score`" in cp.stderr
    queue.write_text(text + "\nlocal = 1\n")
    cp = run("rules", "check", str(rules))
    lines = len(text.splitlines())
    assert cp.returncode == 1 and f"queue.lua:{lines + 2}:" in cp.stderr, cp.stderr


def test_dry_run_with_broken_rules_fails_clearly(tmp_path):
    rules = copy_rules(tmp_path)
    (rules / "templates.lua").write_text("return {}\n")
    cp = run("dry-run", "--fixtures", str(FIXTURES / "demo"), rules=rules)
    assert cp.returncode == 2 and "templates.lua" in cp.stderr and "render" in cp.stderr


def test_fixtures_folder_missing_not_a_folder_or_empty_is_a_usage_error(tmp_path):
    for path, why in ((tmp_path / "nonexistent", "No such file or directory"),
                      (REPO / "README.md", "Not a directory"),
                      (tmp_path, "no fixture files")):
        cp = run("dry-run", "--fixtures", str(path))
        assert cp.returncode == 2, cp.stderr
        assert str(path) in cp.stderr and why in cp.stderr, cp.stderr
        assert cp.stdout == ""
    (tmp_path / "conversations.json").write_text("[]")  # a typo of the collection name
    cp = run("dry-run", "--fixtures", str(tmp_path))
    assert cp.returncode == 2 and "no fixture files" in cp.stderr, cp.stderr
    assert "found conversations.json" in cp.stderr, cp.stderr


def test_unreadable_fixtures_folder_is_a_usage_error(tmp_path):
    """Root reads any folder, so the binary runs as nobody (setpriv)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or not setpriv:
        pytest.skip("needs root and setpriv to run as another user")
    folder = tmp_path / "locked"
    shutil.copytree(FIXTURES / "demo", folder)
    folder.chmod(0o700)
    tmp_path.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "QM_SUPPORT_RULES_DIR": str(REPO / "rules")}
    if supportd_preload():
        env["LD_PRELOAD"] = supportd_preload()
    probe = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", BIN,
                            "version"], env=env, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run {BIN} here: {probe.stderr.strip()[:200]}")
    cp = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", BIN,
                         "dry-run", "--fixtures", str(folder)], env=env, capture_output=True,
                        text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert cp.returncode == 2, cp.stderr
    assert str(folder) in cp.stderr and "Permission denied" in cp.stderr, cp.stderr


def test_unrecognised_files_are_named_in_a_warning(tmp_path):
    folder = tmp_path / "fx"
    shutil.copytree(FIXTURES / "demo", folder)
    (folder / "notes.txt").write_text("not a fixture")
    (folder / ".hidden").write_text("")
    cp = run("dry-run", "--fixtures", str(folder), "--format", "text")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == (FIXTURES / "demo" / "expected-plan.txt").read_text()
    warned = [l for l in cp.stderr.splitlines() if "warning" in l]
    assert [w.split(f"{folder}/")[1].split(" ")[0] for w in warned] == \
        ["expected-plan.json", "expected-plan.txt", "notes.txt"], warned
    assert ".hidden" not in cp.stderr
def test_message_status_plan_of_the_shipped_fixtures():
    cp = run("dry-run", "--fixtures", str(REPO / "rules" / "fixtures"), "--job", "message-status",
             "--format", "text")
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout
    assert "applied queued -> sent" in out and "applied sent -> delivered" in out
    assert "sending: ignored" in out  # late: does not move backwards
    assert "rejected: bad signature" in out  # the forged entry
    assert "waiting" in out and "unmatched: no twilio message" in out
    assert "click: history" in out
    assert "poll twilio SMc3" in out and "send again 65e2f0000000000000000205 via twilio, attempt 2" in out
    assert "demo-twilio-auth-token" not in out  # a key is never printed


def test_message_status_keys_from_the_environment_win():
    cp = run("dry-run", "--fixtures", str(REPO / "rules" / "fixtures"), "--job", "message-status",
             "--format", "text", TWILIO_AUTH_TOKEN="some-other-token")
    assert cp.returncode == 0, cp.stderr
    twilio_lines = [l for l in cp.stdout.splitlines() if l.startswith("  entry 1") and "(twilio)" in l]
    assert twilio_lines and all("rejected: bad signature" in l for l in twilio_lines)
    assert "(sendgrid): done" in cp.stdout


def test_fixture_documents_are_aligned_for_libbson():
    """Each fixture document is handed to the decisions as a bson_t, which libbson
    declares 128-byte aligned: never from a malloc'ed array (16-byte aligned under
    glibc's and musl's malloc; shims/bson_align_check.c aborts the process)."""
    cp = run("dry-run", "--fixtures", str(FIXTURES / "demo"), **unaligned_heap())
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert cp.stdout.startswith("{")
