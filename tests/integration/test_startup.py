"""A slot missed while no instance ran is run once at start-up (SPEC §3 crash
safety; `supportd run --help`); otherwise `run` waits for the next slot."""

import time

from conftest import now_ms

CRON = "*/5 * * * *"
STEP = 300


def _away_from_slot(margin: float = 12.0) -> None:
    """Makes sure the next natural */5 slot is more than `margin` seconds away,
    so that a tick seen within the test's waits can only be a catch-up."""
    to_next = STEP - (time.time() % STEP)
    if to_next < margin:
        time.sleep(to_next + 1.0)


def _seed_health(sd, last_start_ms: int) -> None:
    sd.redis.hset(sd.key("job:probe"), mapping={
        "last_start": last_start_ms, "last_end": last_start_ms + 5,
        "last_success": last_start_ms + 5, "last_result": "ok", "last_error": "",
        "runs": 1, "failures": 0})


def test_missed_slot_runs_at_startup(sd):
    _away_from_slot()
    _seed_health(sd, now_ms() - 10 * 60_000)
    d = sd.probe_daemon(cron=CRON, hold_ms=0)
    d.wait_for("job.scheduled", job="probe")
    end = d.wait_for("tick.end", job="probe", timeout=8)
    assert end.get("outcome") == "ok", end
    # two slots were missed; the catch-up runs once, not once per slot
    time.sleep(2)
    assert len(d.events("tick.start")) == 1, d.tail()
    assert sd.health().get("last_tick") == end["tick"]
    assert d.terminate_and_wait() == 0, d.tail()


def test_no_missed_slot_waits_for_next(sd):
    _away_from_slot()
    _seed_health(sd, now_ms())
    d = sd.probe_daemon(cron=CRON, hold_ms=0)
    d.wait_for("job.scheduled", job="probe")
    time.sleep(3)
    assert not d.events("tick.start"), f"a tick ran without a missed slot:\n{d.tail()}"
    assert d.alive()
    assert d.terminate_and_wait() == 0, d.tail()

