"""CLI contract (SPEC §1): commands, help, exit codes 0/1/2, configuration errors
that name the bad variable, and `once probe` against the real services."""

import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, parse_log_lines
from tls_helpers import is_static

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def test_version(sd):
    cp = sd.cli("version")
    assert cp.returncode == EXIT_OK, cp.stderr
    assert re.search(r"\bsupportd\s+\d+\.\d+\.\d+", cp.stdout), cp.stdout


# `supportd version`'s library lines: name, and the pin (vendor/manifest.txt) it comes
# from in the release build; the development build's system packages by pkg-config name.
LIBRARIES = {"lua": ("lua", "lua5.4"), "hiredis": ("hiredis", None), "openssl": ("openssl", "openssl"),
             "curl": ("curl", "libcurl"), "libmongoc": ("mongoc", "libmongoc-1.0"),
             "libmicrohttpd": ("microhttpd", "libmicrohttpd"), "tzdata": ("tzdata", None)}


def manifest() -> dict:
    """name -> (source package, version) of vendor/manifest.txt."""
    pins = {}
    for line in (REPO / "vendor" / "manifest.txt").read_text().splitlines():
        cols = line.split("#", 1)[0].split()
        if cols:
            pins[cols[0]] = (cols[1], cols[3])
    return pins


def upstream(debian_version: str) -> str:
    """The upstream part of a Debian version: 1:3.5.7-1~deb13u2 -> 3.5.7."""
    return debian_version.split(":", 1)[-1].rsplit("-", 1)[0]


def test_version_names_every_library(sd):
    """One line per library, its version asked of the library (or its headers), and the
    Debian source it was built from: the pins for the release build (and the
    development build's hiredis), the build machine's packages for the rest."""
    cp = sd.cli("version")
    assert cp.returncode == EXIT_OK, cp.stderr
    lines = {}
    for line in cp.stdout.splitlines()[2:]:
        m = re.fullmatch(r"(\S+) (.+) \((.+)\)", line)
        assert m, f"not 'NAME VERSION (ORIGIN)': {line!r}\n{cp.stdout}"
        lines[m[1]] = (m[2], m[3])
    assert sorted(lines) == sorted(LIBRARIES), cp.stdout
    pins = manifest()
    static = is_static(sd.bin)
    for name, (pin, pkgconfig) in LIBRARIES.items():
        version, origin = lines[name]
        if name == "libmongoc":
            version, bson = version.split(", libbson ")
            assert bson == version, cp.stdout   # one source package, one version
        if static or pkgconfig is None and name != "tzdata":
            package, debian = pins[pin]
            assert version == upstream(debian), f"{name}: {version} is not the pinned {debian}"
            assert origin == f"Debian source {package} {debian}", cp.stdout
        elif name == "tzdata":
            first = (Path("/usr/share/zoneinfo") / "tzdata.zi").read_text().splitlines()[0]
            assert first == f"# version {version}", cp.stdout
            assert origin == "/usr/share/zoneinfo", cp.stdout
        else:
            system = subprocess.run(["pkg-config", "--modversion", pkgconfig], capture_output=True,
                                    text=True, check=True).stdout.strip()
            assert version == system, f"{name}: {version}, the system's {pkgconfig} is {system}"
            assert origin == "system library", cp.stdout


def test_help_lists_commands(sd):
    cp = sd.cli("--help")
    assert cp.returncode == EXIT_OK, cp.stderr
    for word in ("run", "once", "status", "version"):
        assert re.search(rf"\b{word}\b", cp.stdout), f"--help does not mention {word}:\n{cp.stdout}"
    assert "QM_SUPPORT_" in cp.stdout, cp.stdout


@pytest.mark.parametrize("args", [("once", "--help"), ("help", "once")])
def test_once_help(sd, args):
    cp = sd.cli(*args)
    assert cp.returncode == EXIT_OK, cp.stderr
    assert "once" in cp.stdout and "--now" in cp.stdout, cp.stdout
    for var in ("MONGO_DB_URL", "REDIS_HOST", "QM_SUPPORT_REDIS_PREFIX"):
        assert var in cp.stdout, f"once --help does not mention {var}:\n{cp.stdout}"


@pytest.mark.parametrize("command", ["run", "status"])
def test_command_help(sd, command):
    cp = sd.cli(command, "--help", MONGO_DB_URL=None)
    assert cp.returncode == EXIT_OK, cp.stderr
    assert command in cp.stdout and "MONGO_DB_URL" in cp.stdout, cp.stdout


def test_no_arguments_is_usage_error(sd):
    cp = sd.cli()
    assert cp.returncode == EXIT_USAGE, (cp.stdout, cp.stderr)


def test_unknown_command(sd):
    cp = sd.cli("frobnicate")
    assert cp.returncode == EXIT_USAGE, (cp.stdout, cp.stderr)
    assert "frobnicate" in cp.stderr, cp.stderr


@pytest.mark.parametrize("args", [("run",), ("once", "probe")])
def test_missing_mongo_url(sd, args):
    cp = sd.cli(*args, MONGO_DB_URL=None)
    assert cp.returncode == EXIT_USAGE, (cp.stdout, cp.stderr)
    assert "MONGO_DB_URL" in cp.stderr, cp.stderr


@pytest.mark.parametrize("args", [("run",), ("once", "probe"), ("status",)])
def test_bad_cron_names_variable_and_field(sd, args):
    cp = sd.cli(*args, QM_SUPPORT_SNOOZE_CRON="61 * * * *")
    assert cp.returncode == EXIT_USAGE, (cp.stdout, cp.stderr)
    assert "QM_SUPPORT_SNOOZE_CRON" in cp.stderr, cp.stderr
    assert "minute" in cp.stderr.lower(), cp.stderr


@pytest.mark.parametrize("args", [("run",), ("once", "probe"), ("status",)])
def test_bad_redis_port(sd, args):
    cp = sd.cli(*args, REDIS_PORT="abc")
    assert cp.returncode == EXIT_USAGE, (cp.stdout, cp.stderr)
    assert "REDIS_PORT" in cp.stderr, cp.stderr


@pytest.mark.parametrize("var,value", [
    ("QM_SUPPORT_PROBE", "maybe"),
    ("QM_SUPPORT_LEASE_TTL", "0"),
    ("QM_SUPPORT_PROBE_CRON", "* * *"),
    ("LOG_LEVEL", "loud"),
])
def test_other_bad_variables_are_named(sd, var, value):
    cp = sd.cli("run", **{var: value})
    assert cp.returncode == EXIT_USAGE, (cp.stdout, cp.stderr)
    assert var in cp.stderr, cp.stderr


def test_once_unknown_job(sd):
    cp = sd.cli("once", "nosuchjob")
    assert cp.returncode == EXIT_USAGE, (cp.stdout, cp.stderr)
    assert "nosuchjob" in cp.stderr, cp.stderr


def test_once_without_job(sd):
    cp = sd.cli("once")
    assert cp.returncode == EXIT_USAGE, (cp.stdout, cp.stderr)


# Every job of SPEC §1 exists now: none says "not implemented" any more.
@pytest.mark.parametrize("job", ["snooze", "message-status", "notification", "communication-check"])
def test_once_runs_every_job(sd, job):
    cp = sd.cli("once", job, timeout=60)
    assert cp.returncode == EXIT_OK, (job, cp.stderr[-2000:])
    assert "not implemented" not in cp.stderr
    events, _ = parse_log_lines(cp.stderr)
    assert [e for e in events if e.get("event") == "tick.end" and e.get("outcome") == "ok"], cp.stderr


def test_once_bad_now(sd):
    cp = sd.cli("once", "probe", "--now", "garbage")
    assert cp.returncode == EXIT_USAGE, (cp.stdout, cp.stderr)
    assert "--now" in cp.stderr, cp.stderr


def test_once_probe_succeeds_and_records_health(sd):
    cp = sd.cli("once", "probe")
    assert cp.returncode == EXIT_OK, cp.stderr
    events, _ = parse_log_lines(cp.stderr)
    starts = [e for e in events if e.get("event") == "tick.start"]
    ends = [e for e in events if e.get("event") == "tick.end"]
    assert len(starts) == 1 and len(ends) == 1, cp.stderr
    assert starts[0].get("job") == "probe" and ends[0].get("job") == "probe"
    assert starts[0].get("tick") and starts[0]["tick"] == ends[0].get("tick")
    assert ends[0].get("outcome") == "ok", ends[0]
    assert isinstance(ends[0].get("duration_ms"), int)

    h = sd.health("probe")
    assert h.get("last_result") == "ok", h
    assert h.get("last_tick") == starts[0]["tick"], h
    assert int(h.get("runs", 0)) == 1, h
    assert int(h.get("last_success", 0)) > 0, h
    assert int(h["last_end"]) >= int(h["last_start"]) > 0, h
    assert h.get("last_instance", "").startswith(sd.hostname + ":"), h
    # the lease was released (compare-and-delete) at the end of the tick
    assert sd.lease("probe") is None


def test_once_probe_now_option(sd):
    cp = sd.cli("once", "probe", "--now", "2026-03-01T09:00:00Z")
    assert cp.returncode == EXIT_OK, cp.stderr
    events, _ = parse_log_lines(cp.stderr)
    start = next(e for e in events if e.get("event") == "tick.start")
    assert start.get("now", "").startswith("2026-03-01T09:00:00"), start


def test_indexes_created(sd):
    cp = sd.cli("once", "probe")
    assert cp.returncode == EXIT_OK, cp.stderr
    db = sd.mongo_client[sd.db_name]

    conv = {ix["name"]: ix for ix in db["conversation-conversation"].list_indexes()}
    assert "supportd_snooze_due" in conv, sorted(conv)
    assert list(conv["supportd_snooze_due"]["key"].items()) == [("status", 1), ("snooze.until", 1)]

    for coll in ("conversation-notification", "conversation-alert"):
        ixs = {ix["name"]: ix for ix in db[coll].list_indexes()}
        assert "supportd_key" in ixs, (coll, sorted(ixs))
        assert ixs["supportd_key"].get("unique") is True, (coll, ixs["supportd_key"])
        assert list(ixs["supportd_key"]["key"].items()) == [("key", 1)]

    # the webhook journal's repair sweep pages by {received_at, _id}
    inbox = {ix["name"]: ix for ix in db["conversation-status-inbox"].list_indexes()}
    assert list(inbox["supportd_received_at"]["key"].items()) == [("received_at", 1), ("_id", 1)]

    # a second start-up finds them in place and still succeeds
    cp = sd.cli("once", "probe")
    assert cp.returncode == EXIT_OK, cp.stderr
