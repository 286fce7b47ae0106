"""/metrics and the shipped alerting rules as Prometheus' own tool judges them
(issue 24): `promtool check metrics` on a live scrape of `supportd run`, and
`promtool check rules` on scripts/supportd.rules.yml, which the README shows
verbatim and whose metric names must be ones /metrics exposes.

promtool comes with Debian's `prometheus` package (scripts/setup installs it)."""
from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, wait_until
from fakes_fixtures import *  # noqa: F401,F403
from test_http import Http, sample
from test_message_status import World

RULES = REPO / "scripts" / "supportd.rules.yml"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; scripts/setup)")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def world(sd, providers):
    return World(sd, providers)


def live_scrape(world) -> str:
    """A /metrics of a running daemon that has ticked (so the histogram and
    the counters have samples) and whose background checks have read Redis
    and MongoDB (so every family is there)."""
    h = Http(world, QM_SUPPORT_MESSAGE_STATUS="true", QM_SUPPORT_MESSAGE_STATUS_CRON="* * * * * *")
    h.d.wait_for("tick.end", job="probe", outcome="ok", timeout=10)

    def ready():
        r = h.get("/metrics")
        fams = {f.name: f for f in text_string_to_metric_families(r.text)}
        return (r.status_code == 200 and "supportd_status_events_lag" in fams
                and (sample(fams, "supportd_job_last_success_timestamp_seconds", job="probe")
                     or 0) > time.time() - 10 and r.text)

    return wait_until(ready, 15, 0.25, "a scrape that has read the tick and the stream")


def test_live_metrics_pass_promtool_check_metrics(world):
    text = live_scrape(world)
    r = promtool("check", "metrics", stdin=text)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        f"promtool check metrics (exit {r.returncode}):\n{r.stdout}{r.stderr}")


def test_alert_rules_pass_promtool_and_name_only_exposed_metrics(world):
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, f"promtool check rules:\n{r.stdout}{r.stderr}"
    assert re.search(r"SUCCESS: [1-9][0-9]* rules found", r.stdout), r.stdout

    # Every series a rule reads is one supportd exposes (a renamed metric
    # would leave the rule silently matching nothing).
    # (by family: a counter nothing has incremented yet has no sample but is declared)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    exposed = set()
    for fam in text_string_to_metric_families(live_scrape(world)):
        exposed |= {fam.name + s for s in suffixes.get(fam.type, ("",))}
    exprs = re.findall(r"^\s*expr:\s*(.+)$", RULES.read_text(), re.M)
    assert exprs
    named = {n for e in exprs for n in re.findall(r"\b((?:supportd_|process_)[a-z_]+)\b", e)}
    assert named and not named - exposed, f"rules name metrics /metrics lacks: {named - exposed}"


def test_readme_shows_the_rules_file_verbatim():
    readme = (REPO / "README.md").read_text()
    rules = RULES.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    assert rules in blocks, "README's alerting-rules block differs from scripts/supportd.rules.yml"
