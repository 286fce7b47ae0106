"""A rule can never stall a job (issue #15): a pathological pattern, a gsub
with one, and a huge string.rep + format, in each rule file, through `rules
check`, dry-run, a hot reload under a running daemon and a live `run` with two
instances; and the net under the deadlines: a tick stuck inside a rule call
stops renewing its lease, so the other instance takes the job over."""
from __future__ import annotations

import json
import shutil
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pymongo
import pytest
from bson import ObjectId

from conftest import REPO, wait_until
from test_dry_run import FIXTURES, run

# The function of each file that the self-tests (and, for the first three, the
# snooze job) call.
FILES = {"queue": "score", "templates": "render", "notify": "recipients",
         "sla": "policy", "health": "classify", "retry": "decide"}
FIND = 'string.find(string.rep("a", 20000), ".-.-.-.-b")'
GSUB = 'string.gsub(string.rep("a", 20000), ".-.-.-.-b", "x")'
# string.rep("", 1e15) loops 1e15 times in Lua's C code; the rest is over the
# memory cap (64 MiB) and must be refused at once.
REP = 'string.format("%s%s", string.rep("", 1e15), string.rep("ab", 1e9))'
# Issue 22: C loops a hostile rule could start that neither the memory cap nor the
# count hook saw (a __len of 2^62; a million optional pattern items).
HUGE_LEN = "setmetatable({}, {__len = function() return 1 << 62 end})"
REMOVE = f"table.remove({HUGE_LEN}, 1)"
INSERT = f"table.insert({HUGE_LEN}, 1, 1)"
OPTIONAL = 'string.find(("b"):rep(5000), ("a?"):rep(1000000) .. "c")'
SHIFT = "elements to move"
PAYLOADS = {"find": FIND, "gsub": GSUB, "rep_format": REP, "remove_len": REMOVE,
            "insert_len": INSERT, "optional_items": OPTIONAL}
TIME = "exceeded its time budget"
MEMORY = "memory cap of 64 MiB exceeded"

# Only documents whose subject is STALL trigger the payload, so the
# self-tests pass and the failure happens on live data.
MARKED = """
local function stall_marked(v, depth)
  if type(v) ~= "table" or depth > 3 then return false end
  if v.subject == "STALL" then return true end
  for _, x in pairs(v) do if stall_marked(x, depth + 1) then return true end end
  return false
end
"""


def copy_rules(dest: Path) -> Path:
    shutil.copytree(REPO / "rules", dest, ignore=shutil.ignore_patterns("fixtures"))
    return dest


def inject(rules: Path, file: str, payload: str, only_marked: bool = False) -> str:
    """Wraps FILES[file] so that it runs payload first; returns the original text."""
    path = rules / f"{file}.lua"
    text = path.read_text()
    fn = FILES[file]
    cond = "stall_marked({...}, 0)" if only_marked else "true"
    wrapper = (f"{MARKED if only_marked else ''}\n"
               f"do\n  local inner = M.{fn}\n"
               f"  M.{fn} = function(...)\n    if {cond} then local _ = {payload} end\n"
               f"    return inner(...)\n  end\nend\n")
    at = text.rindex("return M")
    path.write_text(text[:at] + wrapper + text[at:])
    return text


def expected(payload: str) -> str:
    return MEMORY if payload == REP else SHIFT if payload in (REMOVE, INSERT) else TIME


# ------------------------------------------------------------ rules check ----

@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("file", FILES)
def test_rules_check_names_file_function_and_budget(tmp_path, file, payload):
    rules = copy_rules(tmp_path / "rules")
    inject(rules, file, PAYLOADS[payload])
    t0 = time.monotonic()
    cp = run("rules", "check", str(rules), QM_SUPPORT_RULES_TIMEOUT_MS="300")
    took = time.monotonic() - t0
    assert cp.returncode == 1, cp.stderr
    assert f"{file}.lua" in cp.stderr and f"calling {FILES[file]}" in cp.stderr, cp.stderr
    assert expected(PAYLOADS[payload]) in cp.stderr, cp.stderr
    assert took < 0.3 + 1, f"took {took:.2f}s"


GC_THROUGH_INDEX = ("local mt = setmetatable({}, {__index = function(t, k)\n"
                    "  rawset(t, '__gc', function() while true do end end) end})\n"
                    "local keep = setmetatable({}, mt)\nkeep = nil\n"
                    "local junk = {} for i = 1, 200000 do junk[i] = {i} end")


@pytest.mark.parametrize("line", ["remove", "insert", "optional", "gc_through_index"])
def test_issue_22_lines_at_the_top_of_queue_lua(tmp_path, line):
    """The confirmed cases of issue 22, as reported: one line at the top of a copy
    of queue.lua, a 1 s deadline. Each ends within the deadline plus a second:
    exit 1 naming the file, or (the __gc bypass, now inert) a valid set."""
    code = {"remove": REMOVE, "insert": INSERT, "optional": OPTIONAL,
            "gc_through_index": GC_THROUGH_INDEX}[line]
    rules = copy_rules(tmp_path / "rules")
    queue = rules / "queue.lua"
    queue.write_text(code + "\n" + queue.read_text())
    t0 = time.monotonic()
    cp = run("rules", "check", str(rules), QM_SUPPORT_RULES_TIMEOUT_MS="1000")
    took = time.monotonic() - t0
    assert took < 1 + 1, f"took {took:.2f}s"
    if line == "gc_through_index":
        assert cp.returncode == 0, cp.stderr  # no finalizer was ever registered
    else:
        assert cp.returncode == 1 and "queue.lua:1:" in cp.stderr, cp.stderr
        assert expected(code) in cp.stderr, cp.stderr


def test_rules_check_default_deadline_and_variable_validation(tmp_path):
    """The issue's own example, with the default deadline (2 s)."""
    rules = copy_rules(tmp_path / "rules")
    queue = rules / "queue.lua"
    queue.write_text(queue.read_text().replace(
        "  local rank = M.priority_rank",
        '  local s = string.rep("a", 20000)\n  string.find(s, ".-.-.-.-b")\n'
        "  local rank = M.priority_rank"))
    t0 = time.monotonic()
    cp = run("rules", "check", str(rules))
    took = time.monotonic() - t0
    assert cp.returncode == 1 and "queue.lua:22:" in cp.stderr and "score" in cp.stderr, cp.stderr
    assert "exceeded its time budget of 2000 ms" in cp.stderr, cp.stderr
    assert 2 <= took < 2 + 1, f"took {took:.2f}s"
    for bad in ("0", "5", "abc", "600001"):
        cp = run("rules", "check", str(rules), QM_SUPPORT_RULES_TIMEOUT_MS=bad)
        assert cp.returncode == 2 and "QM_SUPPORT_RULES_TIMEOUT_MS" in cp.stderr, cp.stderr
    cp = run("once", "probe", QM_SUPPORT_RULES_TIMEOUT_MS="x")
    assert cp.returncode == 2 and "QM_SUPPORT_RULES_TIMEOUT_MS" in cp.stderr, cp.stderr


# ---------------------------------------------------------------- dry-run ----

def stall_fixtures(tmp_path: Path) -> Path:
    """The demo fixtures with one due ticket (…102, notified) marked STALL."""
    fx = tmp_path / "fixtures"
    fx.mkdir()
    for name in ("conversation-room.json", "meta.json"):
        shutil.copy(FIXTURES / "demo" / name, fx / name)
    convs = json.loads((FIXTURES / "demo" / "conversation-conversation.json").read_text())
    for c in convs:
        if c["_id"] == {"$oid": "65e2f0000000000000000102"}:
            c["subject"] = "STALL"
    (fx / "conversation-conversation.json").write_text(json.dumps(convs))
    return fx


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("file", ["queue", "templates", "notify"])
def test_dry_run_fails_naming_file_function_and_budget(tmp_path, file, payload):
    rules = copy_rules(tmp_path / "rules")
    inject(rules, file, PAYLOADS[payload], only_marked=True)
    fx = stall_fixtures(tmp_path)
    t0 = time.monotonic()
    cp = run("dry-run", "--fixtures", str(fx), rules=rules, QM_SUPPORT_RULES_TIMEOUT_MS="500")
    took = time.monotonic() - t0
    assert cp.returncode == 1, cp.stderr
    err = [line for line in cp.stderr.splitlines() if line.startswith("supportd dry-run:")]
    assert err, cp.stderr
    assert "65e2f0000000000000000102" in err[-1] and f"{file}.lua" in err[-1], err
    assert f"{file}.{FILES[file]}" in err[-1] and expected(PAYLOADS[payload]) in err[-1], err
    assert took < 0.5 + 1, f"took {took:.2f}s"
    # The same rules plan the unmarked fixtures as before.
    cp = run("dry-run", "--fixtures", str(FIXTURES / "demo"), "--format", "text", rules=rules)
    golden = (FIXTURES / "demo" / "expected-plan.txt").read_text()
    assert cp.returncode == 0, cp.stderr
    # (the first line names the rules version, which the injection changed)
    assert cp.stdout.split("\n", 1)[1] == golden.split("\n", 1)[1]


# ------------------------------------------------------------ live daemon ----

class Room:
    def __init__(self, sd):
        self.client = pymongo.MongoClient(sd.mongo_url, tz_aware=True)
        self.db = self.client[sd.db_name]
        tag = uuid.uuid4().hex[:10]
        self.agent = {"user_id": ObjectId(), "name": "Anna", "email": f"anna-{tag}@acme.example",
                      "role": "agent"}
        self.room = ObjectId()
        self.db["conversation-room"].insert_one({"_id": self.room, "name": "Berlin",
                                                 "members": [self.agent],
                                                 "email_from": "support@acme.example"})

    def due(self, subject):
        now = datetime.now(timezone.utc)
        oid = ObjectId()
        self.db["conversation-conversation"].insert_one({
            "_id": oid, "room_id": self.room, "subject": subject, "channel": "email",
            "status": "snoozed", "priority": "normal", "assignee_id": self.agent["user_id"],
            "contact": {"name": "Lena", "email": "lena@example.org"}, "created_at": now,
            "updated_at": now, "snooze": {"until": now - timedelta(seconds=1),
                                          "original_status": "open", "at": now - timedelta(hours=1)}})
        return oid

    def status(self, oid):
        return self.db["conversation-conversation"].find_one({"_id": oid})["status"]


@pytest.fixture
def room(sd):
    r = Room(sd)
    yield r
    r.client.close()


def daemon_env(sd, rules, **extra):
    env = dict(QM_SUPPORT_SNOOZE="true", QM_SUPPORT_SNOOZE_CRON="* * * * * *",
               QM_SUPPORT_RULES_DIR=str(rules), QM_SUPPORT_EMAIL_PROVIDER="smtp",
               SMTP_URL=sd.services["SMTP_URL"], QM_SUPPORT_EMAIL_FROM="support@acme.example")
    env.update(extra)
    return env


def test_reload_whose_self_tests_exceed_the_deadline_is_refused(sd, room, tmp_path):
    rules = copy_rules(tmp_path / "rules")
    d = sd.start("run", **daemon_env(sd, rules, QM_SUPPORT_RULES_TIMEOUT_MS="300"))
    loaded = d.wait_for("rules.loaded")
    version = d.wait_for("tick.start")["rules"]
    cases = [(f, FIND) for f in FILES] + [("queue", GSUB), ("queue", REP)]
    for file, payload in cases:
        before = len(d.events("rules.reload_failed"))
        original = inject(rules, file, payload)
        failed = wait_until(lambda: d.events("rules.reload_failed")[before:], 15,
                            what=f"the reload of {file}.lua to fail")[0]
        assert f"{file}.lua" in failed["error"] and f"calling {FILES[file]}" in failed["error"], failed
        assert expected(payload) in failed["error"], failed
        (rules / f"{file}.lua").write_text(original)
    # The last good set stayed in use throughout, and still works.
    n = d.count()
    oid = room.due("after the failed reloads")
    wait_until(lambda: room.status(oid) == "open", 20, what="the ticket to wake")
    starts = d.events("tick.start")
    assert starts and all(e["rules"] == version for e in starts), {e["rules"] for e in starts}
    assert d.wait_for("tick.start", after=n)["rules"] == version
    assert not d.events("rules.reloaded") and loaded
    assert d.alive() and d.terminate_and_wait() == 0


@pytest.mark.parametrize("file,payload", [("queue", FIND), ("templates", GSUB), ("notify", REP),
                                          ("queue", REMOVE), ("templates", OPTIONAL)])
def test_live_rule_call_over_budget_fails_the_item_and_the_job_runs_on(sd, room, tmp_path,
                                                                       file, payload):
    rules = copy_rules(tmp_path / "rules")
    inject(rules, file, payload, only_marked=True)
    stall = room.due("STALL")
    fine = room.due("fine")
    env = daemon_env(sd, rules, QM_SUPPORT_RULES_TIMEOUT_MS="500")
    a = sd.start("run", name="a", **env)
    b = sd.start("run", name="b", **env)
    wait_until(lambda: room.status(fine) == "open", 20, what="the unmarked ticket to wake")

    def failures():
        return [e for d in (a, b) for e in d.events("snooze.decide_failed")]
    failed = wait_until(failures, 20, what="snooze.decide_failed")[0]
    assert f"{file}.lua" in failed["msg"] and f"{file}.{FILES[file]}" in failed["msg"], failed
    assert expected(payload) in failed["msg"] and failed["conversation_id"] == str(stall), failed
    # The job keeps running: more ticks end (on either instance), each
    # counting the failed ticket, which stays snoozed for the next tick.
    def ends():
        return [e for d in (a, b) for e in d.events("tick.end")
                if e["counts"].get("failed", 0) >= 1]
    wait_until(lambda: len(ends()) >= 3, 30, what="three ticks that met the failing ticket")
    assert all(e["outcome"] == "ok" for e in ends())
    assert room.status(stall) == "snoozed"
    assert a.alive() and b.alive()
    assert a.terminate_and_wait() == 0 and b.terminate_and_wait() == 0


def test_tick_stuck_in_a_rule_call_stops_renewing_its_lease(sd, room, tmp_path):
    """The deadlines leave no known way to get stuck, so a test seam holds
    instance A inside a rule call. A's renewer must give the lease up after
    twice the deadline plus 2 s, and B then runs the job."""
    seams = tmp_path / "seams"
    seams.mkdir()
    (seams / "rules_call.arm").touch()
    oid = room.due("held")
    env = daemon_env(sd, REPO / "rules", QM_SUPPORT_RULES_TIMEOUT_MS="500",
                     QM_SUPPORT_LEASE_TTL="2")
    a = sd.start("run", name="a", QM_SUPPORT_TEST_SEAMS=str(seams), **env)
    wait_until(lambda: (seams / "rules_call.reached").exists(), 20, what="A inside a rule call")
    b = sd.start("run", name="b", **env)
    b.wait_for("tick.skipped")  # A's lease is renewed while A is not yet stuck
    abandoned = a.wait_for("lease.abandoned", timeout=20)
    assert abandoned["busy_ms"] > 2 * 500 + 2000, abandoned
    end = b.wait_for("tick.end", timeout=20, where=lambda e: e["counts"].get("woken") == 1)
    assert end["outcome"] == "ok"
    assert parse(end["ts"]) > parse(abandoned["ts"])
    assert room.status(oid) == "open"
    (seams / "rules_call.go").touch()
    assert a.alive() and b.alive()
    assert a.terminate_and_wait() == 0 and b.terminate_and_wait() == 0


def parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("file", FILES)
def test_dry_run_with_self_tests_over_budget_exits_1(tmp_path, file):
    """The issue's example as written (the pattern in every call, so in the
    self-tests): a runtime failure (1), not malformed rules (2)."""
    rules = copy_rules(tmp_path / "rules")
    inject(rules, file, FIND)
    t0 = time.monotonic()
    cp = run("dry-run", "--fixtures", str(FIXTURES / "demo"), rules=rules,
             QM_SUPPORT_RULES_TIMEOUT_MS="300")
    took = time.monotonic() - t0
    assert cp.returncode == 1, cp.stderr
    assert f"{file}.lua" in cp.stderr and f"calling {FILES[file]}" in cp.stderr, cp.stderr
    assert TIME in cp.stderr and cp.stdout == "", cp.stderr
    assert took < 0.3 + 1, f"took {took:.2f}s"
