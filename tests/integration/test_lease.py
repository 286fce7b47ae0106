"""Leases across instances (SPEC §3: many instances, one tick at a time; kill -9
loses nothing) and clean shutdown on signals (SPEC §1 Signals)."""

import signal
import time

import pytest

from conftest import intervals_overlap, parse_ts


# hold 1500 ms: a tick outlasts the next slot (the holder tends to keep the
# job, the other is turned away); hold 700 ms: both race for every slot.
@pytest.mark.parametrize("hold_ms", [1500, 700])
def test_two_instances_never_run_a_tick_at_once(sd, hold_ms):
    a = sd.probe_daemon("A", cron="* * * * * *", hold_ms=hold_ms)
    b = sd.probe_daemon("B", cron="* * * * * *", hold_ms=hold_ms)
    sched_a = a.wait_for("job.scheduled", job="probe")
    sched_b = b.wait_for("job.scheduled", job="probe")
    time.sleep(8)
    assert a.alive() and b.alive()
    a.signal(signal.SIGTERM)
    b.signal(signal.SIGTERM)
    assert a.wait_exit() == 0, a.tail()
    assert b.wait_exit() == 0, b.tail()

    ia, ib = a.tick_intervals(), b.tick_intervals()
    assert len(ia) + len(ib) >= 3, (ia, ib)
    overlaps = intervals_overlap(ia, ib)
    assert not overlaps, f"ticks of the two instances overlap: {overlaps}"
    for d in (a, b):
        starts = {e["tick"] for e in d.events("tick.start")}
        ends = d.events("tick.end")
        assert {e["tick"] for e in ends} == starts, f"{d.name}: a tick.start without tick.end"
        assert all(e.get("outcome") == "ok" for e in ends), ends
        assert all(e.get("instance") == sd.instance_of(d) for e in d.events("tick.start"))

    skipped_a, skipped_b = a.events("tick.skipped"), b.events("tick.skipped")
    assert skipped_a or skipped_b, "neither instance was ever turned away by the lease"
    assert (skipped_a and skipped_b) or not ia or not ib or _one_sided_ok(
        a, b, ia, ib, sched_a, sched_b), (len(skipped_a), len(skipped_b), ia, ib)
    # A skip names the other instance as the holder ("" only if the lease was
    # released between the failed SET NX and the GET that reads the holder).
    for d, other in ((a, b), (b, a)):
        for e in d.events("tick.skipped"):
            assert e.get("holder") in (sd.instance_of(other), ""), e


def _one_sided_ok(a, b, ia, ib, sched_a, sched_b):
    """Both ran but only one logged a skip: acceptable only if the other's
    ticks all happened before both were scheduling (a tick of X starts at a
    slot that Y, scheduling the same every-second cron, also tries, or spans
    one: Y must have been turned away then)."""
    both_up_from = max(parse_ts(sched_a["ts"]), parse_ts(sched_b["ts"]))
    for mine, theirs, theirs_skips in ((ia, b, b.events("tick.skipped")),
                                       (ib, a, a.events("tick.skipped"))):
        inside = [t for t in mine if t[1] > both_up_from]
        if inside and not theirs_skips:
            return False
    return True


def test_kill9_of_lease_holder_lets_another_take_over(sd):
    ttl = 3
    a = sd.probe_daemon("A", cron="* * * * * *", hold_ms=60000, QM_SUPPORT_LEASE_TTL=ttl)
    inst_a = sd.instance_of(a)
    start_a = a.wait_for("tick.start", job="probe")
    assert start_a.get("instance") == inst_a, start_a
    lease = sd.lease()
    assert lease and lease.startswith(inst_a + "/"), lease

    b = sd.probe_daemon("B", cron="* * * * * *", hold_ms=60000, QM_SUPPORT_LEASE_TTL=ttl)
    inst_b = sd.instance_of(b)
    b.wait_for("tick.skipped", job="probe", where=lambda e: e.get("holder") == inst_a)

    # A renews its lease every ttl/3: it outlives its TTL while A lives.
    time.sleep(ttl + 1.5)
    assert a.alive(), a.tail()
    assert not b.events("tick.start"), "B ran a tick while A held the lease"
    lease = sd.lease()
    assert lease and lease.startswith(inst_a + "/"), f"A's lease was not renewed: {lease}"
    assert len(b.events("tick.skipped")) >= 2, b.tail()

    a.proc.kill()  # SIGKILL: no release, no clean-up
    a.wait_exit()
    killed_at = time.time()

    start_b = b.wait_for("tick.start", job="probe", timeout=ttl + 8)
    assert start_b.get("instance") == inst_b, start_b
    assert parse_ts(start_b["ts"]) >= killed_at - 1.0
    lease = sd.lease()
    assert lease and lease.startswith(inst_b + "/"), lease
    assert sd.health().get("last_instance") == inst_b

    assert b.terminate_and_wait() == 0, b.tail()
    assert sd.lease() is None, "B did not release its lease on SIGTERM"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_during_a_long_tick(sd, sig):
    d = sd.probe_daemon(cron="* * * * * *", hold_ms=3000)
    start = d.wait_for("tick.start", job="probe")
    lease = sd.lease()
    assert lease and lease.startswith(sd.instance_of(d) + "/"), lease
    assert sd.health().get("last_result") == "running"

    d.signal(sig)
    rc = d.wait_exit()
    assert rc == 0, f"exit {rc}\n{d.tail()}"

    events = d.events()
    names = [e.get("event") for e in events]
    assert "signal.stop" in names, names
    i_stop = names.index("signal.stop")
    ends = [i for i, e in enumerate(events)
            if e.get("event") == "tick.end" and e.get("tick") == start["tick"]]
    assert ends and ends[0] > i_stop, f"the running tick did not end after the signal: {names}"
    assert events[ends[0]].get("outcome") == "ok", events[ends[0]]
    assert names[-1] == "shutdown", names
    assert "tick.start" not in names[i_stop:], "a tick started after the stop signal"

    assert sd.lease() is None, "the lease was not released on shutdown"
    h = sd.health()
    assert h.get("last_result") == "ok" and h.get("last_tick") == start["tick"], h


def test_stop_signal_when_idle(sd):
    d = sd.start("run")  # no job enabled: idles
    d.wait_for("startup")
    assert d.terminate_and_wait() == 0, d.tail()
    assert d.events()[-1].get("event") == "shutdown", d.tail()


def test_sighup_does_not_stop(sd):
    d = sd.probe_daemon(cron="* * * * * *", hold_ms=0)
    d.wait_for("job.scheduled")
    n = d.count()
    d.signal(signal.SIGHUP)
    d.wait_for("signal.hup", after=n)
    # still scheduling ticks afterwards
    n = d.count()
    d.wait_for("tick.end", after=n, outcome="ok")
    assert d.alive()
    assert d.terminate_and_wait() == 0, d.tail()
