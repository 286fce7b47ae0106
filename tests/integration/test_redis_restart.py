"""Redis going away under a running daemon: ticks fail while it is down, the
daemon stays up and recovers on its own when Redis is back (SPEC §3: no crash,
the next tick does the work).

These tests stop the shared test Redis (scripts/services stop-redis /
restart-redis); it is always started again, in a finally block and by the
redis_restart_guard fixture."""

import time

from conftest import parse_ts, services_script, wait_until, _ping


def _ok_end(e):
    return e.get("outcome") == "ok"


def test_redis_down_then_back(sd, redis_restart_guard):
    d = sd.probe_daemon(cron="* * * * * *", hold_ms=0)
    d.wait_for("tick.end", where=_ok_end, timeout=15)

    try:
        services_script("stop-redis")
        assert not _ping(sd.redis)
        stopped_at = time.time()
        n = d.count()
        # Every slot while Redis is down is a failed tick, logged at error level.
        failed = d.wait_for("tick.end", after=n, timeout=10,
                            where=lambda e: e.get("level") == "error")
        time.sleep(2)
        assert d.alive(), f"supportd died while Redis was down:\n{d.tail()}"
    finally:
        services_script("start-redis")
    wait_until(lambda: _ping(sd.redis), 30, 0.2, "Redis to come back")
    restarted_at = time.time()

    n = d.count()
    # redis.c backs off at most 5 s between reconnect attempts.
    back = d.wait_for("tick.end", after=n, where=_ok_end, timeout=20)
    assert parse_ts(back["ts"]) >= restarted_at - 1.0
    assert d.alive()
    # The health hash is written again (Redis restarted empty: no persistence).
    wait_until(lambda: sd.health().get("last_result") in ("ok", "running"), 10,
               what="health hash rewritten after the restart")

    assert d.terminate_and_wait() == 0, d.tail()
    assert d.events()[-1].get("event") == "shutdown"
    assert not d.other_lines(), "non-JSON output on stderr:\n" + "\n".join(d.other_lines())

    # A failed tick's tick.end carries the same fields as any tick.end
    # (outcome, and the job), so that logs can be filtered on outcome=error.
    assert parse_ts(failed["ts"]) >= stopped_at - 1.0
    assert failed.get("job") == "probe", failed
    assert failed.get("outcome") == "error", (
        f"tick.end of a tick that failed because Redis was down has no "
        f"outcome=error: {failed}")


def test_redis_restart_quick(sd, redis_restart_guard):
    """restart-redis (stop + start at once) under a daemon: it keeps ticking."""
    d = sd.probe_daemon(cron="* * * * * *", hold_ms=0)
    d.wait_for("tick.end", where=_ok_end, timeout=15)
    try:
        services_script("restart-redis")
    finally:
        if not _ping(sd.redis):
            services_script("start-redis")
    wait_until(lambda: _ping(sd.redis), 30, 0.2, "Redis to come back")
    restarted_at = time.time()
    n = d.count()
    back = d.wait_for("tick.end", after=n, where=_ok_end, timeout=20)
    assert parse_ts(back["ts"]) >= restarted_at - 1.0
    assert d.alive()
    assert d.terminate_and_wait() == 0, d.tail()
