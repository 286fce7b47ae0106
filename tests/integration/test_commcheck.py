"""communication-check against the provider fake, FerretDB, Redis and Mailpit:
every check passing and failing, health.lua's thresholds, transient vs
definitive failures, the shared account fetched once, inactive channels, an
alert's whole life with exactly three notifications, uniqueness with two
instances, a hanging provider, webhook certificates, and a broken health.lua."""
from __future__ import annotations

import json

import time

import pytest
from bson import ObjectId

from commcheck_helpers import ALERTS, CHANNELS, RejectingSMTP, CertAuthority, World
from conftest import unaligned_heap, wait_until
from fakes_fixtures import *  # noqa: F401,F403  (provider_fake, providers)

HOOK_OK = 405  # an unsigned probe commonly gets 403/405: still an answer


@pytest.fixture
def world(sd, providers, tmp_path):
    w = World(sd, providers, tmp_path)
    yield w
    w.close()


def healthy_twilio(world, phone="+4930123456", **fields):
    hook = world.webhook(HOOK_OK)
    world.fake.state(numbers=[world.number(phone, hook.url)], balance="48.00")
    return world.sms(phone, webhook=hook.url, **fields), hook


# ------------------------------------------------------------- passing ----

def test_healthy_twilio_channel_passes_every_check(world):
    cid, _ = healthy_twilio(world)
    end = world.tick()
    c = end["counts"]
    assert (c["channels"], c["checks_ok"], c["checks_failing"], c["checks_transient"]) == (1, 4, 0, 0)
    assert world.alerts() == []
    assert world.notifications() == []
    assert world.sd.redis.hget(world.sd.key("commcheck:checked_at"), str(cid))


def test_healthy_sendgrid_and_smtp_channels(world):
    world.fake.state(domains=[{"id": 7, "domain": "acme.example", "subdomain": "em1",
                               "valid": True, "dns": {"dkim1": {"valid": True, "type": "cname",
                                                                "host": "s1._domainkey.acme.example",
                                                                "data": "s1.x"}}}])
    world.channel(type="email", provider="sendgrid", from_email="help@acme.example",
                  domain="acme.example")
    world.channel(type="email", provider="smtp", from_email="help@acme.example")
    end = world.tick()
    assert end["counts"]["checks_ok"] == 3, world.last_stderr[-3000:]
    assert world.alerts() == []
    assert len(world.fake.requests("/v3/scopes")) == 1


# ---------------------------------------------------- failing, definitive ----

def test_account_suspended_opens_a_critical_alert_at_once(world):
    cid, _ = healthy_twilio(world)
    world.fake.state(account_status="suspended")
    world.tick()
    a = world.open_alert(cid, "twilio.account")
    assert a and a["severity"] == "critical" and "suspended" in a["message"]
    assert a["details"]["cause"] == "channel_broken"
    assert a["occurrences"] == 1 and a["resolved_at"] is None
    assert a["channel_check"] == f"{cid}:twilio.account" and a["room_id"] == world.room


def test_number_missing_not_sms_capable_and_pointing_elsewhere(world):
    hook = world.webhook(HOOK_OK)
    missing = world.sms("+4930000001", webhook=hook.url)
    no_sms = world.sms("+4930000002", webhook=hook.url)
    elsewhere = world.sms("+4930000003", webhook=hook.url)
    world.fake.state(balance="48.00", numbers=[
        world.number("+4930000002", hook.url, sms=False),
        world.number("+4930000003", "https://demo.twilio.com/welcome/sms/reply")])
    world.tick()
    msgs = {c: world.open_alert(c, "twilio.number")["message"]
            for c in (missing, no_sms, elsewhere)}
    assert "not on the Twilio account" in msgs[missing]
    assert "not SMS-capable" in msgs[no_sms]
    assert "demo.twilio.com" in msgs[elsewhere] and hook.url in msgs[elsewhere]
    assert all(world.open_alert(c, "twilio.number")["severity"] == "critical" for c in msgs)


def test_revoked_sendgrid_key_and_missing_scope(world):
    cid = world.channel(type="email", provider="sendgrid", from_email="a@acme.example")
    world.tick(SENDGRID_API_KEY="SG.revoked-key")
    a = world.open_alert(cid, "sendgrid.api_key")
    assert a["severity"] == "critical" and "401" in a["message"], a
    assert "SG.revoked-key" not in str(a)
    world.p.watch.append("SG.revoked-key")
    # A key that works but may not send mail is as broken.
    world.fake.state(scopes=["user.profile.read"])
    world.tick()
    a = world.open_alert(cid, "sendgrid.api_key")
    assert "mail.send" in a["message"] and a["occurrences"] == 2


def test_unverified_domain_names_the_failing_record(world):
    world.fake.state(domains=[{"id": 9, "domain": "acme.example", "subdomain": "em9", "valid": False,
                               "dns": {"mail_cname": {"valid": True, "type": "cname",
                                                      "host": "em9.acme.example", "data": "u9.wl"},
                                       "dkim1": {"valid": False, "type": "cname",
                                                 "host": "s1._domainkey.acme.example",
                                                 "data": "s1.domainkey.u9.wl"}}}])
    cid = world.channel(type="email", provider="sendgrid", from_email="a@acme.example",
                        domain="acme.example")
    other = world.channel(type="email", provider="sendgrid", from_email="b@unknown.example")
    world.tick()
    a = world.open_alert(cid, "sendgrid.domain")
    assert "dkim1" in a["message"] and "s1._domainkey.acme.example" in a["message"]
    assert "record not found" in a["message"]  # the reason of the live validation
    assert "mail_cname" not in a["message"]
    assert "not an authenticated domain" in world.open_alert(other, "sendgrid.domain")["message"]
    assert len(world.fake.requests("/v3/whitelabel/domains/9/validate")) == 1
    # The DNS was fixed: SendGrid's validation says so before its listing does.
    world.fake.state(validations={"9": {"id": 9, "valid": True, "validation_results": {
        "mail_cname": {"valid": True, "reason": None}, "dkim1": {"valid": True, "reason": None}}}})
    world.tick()
    assert world.open_alert(cid, "sendgrid.domain") is None


def test_smtp_login_rejected_is_definitive(world):
    smtp = RejectingSMTP()
    try:
        cid = world.channel(type="email", provider="smtp", from_email="a@acme.example")
        world.tick(SMTP_URL=smtp.url, SMTP_USER="supportd", SMTP_PASSWORD="wrong-password",
                   QM_SUPPORT_EMAIL_PROVIDER="sendgrid")
        world.p.watch.append("wrong-password")
        a = world.open_alert(cid, "smtp.connect")
        assert a and "rejected the login" in a["message"] and smtp.logins >= 1
    finally:
        smtp.close()


# ------------------------------------------------- transient vs definitive ----

def test_transient_failures_need_the_threshold_then_recover(world):
    cid, _ = healthy_twilio(world)
    world.fake.fault(match=".json", status=503, times=0)  # every Twilio call
    end = world.tick()
    assert end["counts"]["checks_transient"] >= 1
    assert world.alerts() == [], "one transient failure must not alert (threshold 2)"
    assert world.sd.redis.hget(world.sd.key("commcheck:failures"), f"{cid}:twilio.account") == "1"
    world.tick()
    a = world.open_alert(cid, "twilio.account")
    assert a and a["details"]["cause"] == "provider_unreachable"
    assert a["details"]["consecutive_failures"] == 2 and "503" in a["message"]
    mails = len(world.notifications())  # account and number alerts opened
    world.tick()  # still failing: seen again, counted, nothing else changes
    b = world.open_alert(cid, "twilio.account")
    assert b["_id"] == a["_id"] and b["occurrences"] == 2 and b["severity"] == a["severity"]
    assert b["details"]["latest"]["consecutive_failures"] == 3
    assert len(world.notifications()) == mails
    world.fake.reset(twilio_sid=world.p.twilio_sid, twilio_token=world.p.secrets["TWILIO_AUTH_TOKEN"],
                     sendgrid_key=world.p.secrets["SENDGRID_API_KEY"], balance="48.00",
                     numbers=[world.number("+4930123456", world.servers[0].url)])
    world.tick()
    assert world.open_alert(cid, "twilio.account") is None
    done = world.alerts(channel_check=f"{cid}:twilio.account")
    assert done[-1]["status"] == "resolved" and done[-1]["resolved_at"] is not None
    assert world.sd.redis.hget(world.sd.key("commcheck:failures"), f"{cid}:twilio.account") is None


def test_threshold_comes_from_health_lua(world):
    cid, _ = healthy_twilio(world)
    world.health(consecutive_failures=3)
    world.fake.fault(match=".json", status=502, times=0)
    world.tick()
    world.tick()
    assert world.open_alert(cid, "twilio.account") is None
    world.tick()
    assert world.open_alert(cid, "twilio.account")["details"]["consecutive_failures"] == 3


def test_unreachable_smtp_server_is_transient(world):
    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cid = world.channel(type="email", provider="smtp", from_email="a@acme.example")
    world.tick(SMTP_URL=f"smtp://127.0.0.1:{port}", QM_SUPPORT_EMAIL_PROVIDER="sendgrid")
    assert world.open_alert(cid, "smtp.connect") is None
    world.tick(SMTP_URL=f"smtp://127.0.0.1:{port}", QM_SUPPORT_EMAIL_PROVIDER="sendgrid")
    assert world.open_alert(cid, "smtp.connect")["details"]["cause"] == "provider_unreachable"


# -------------------------------------------------------------- balance ----

def test_balance_thresholds_from_health_lua(world):
    cid, _ = healthy_twilio(world)
    world.fake.state(balance="12.34")
    world.tick()
    a = world.open_alert(cid, "twilio.balance")
    assert a["severity"] == "warning" and "12.34 USD" in a["message"]
    world.health(twilio_balance_warning="10.0")
    world.tick()
    assert world.open_alert(cid, "twilio.balance") is None


def test_shared_account_is_fetched_once_per_tick(world):
    hook = world.webhook(HOOK_OK)
    phones = [f"+49301234{i:02d}" for i in range(5)]
    world.fake.state(numbers=[world.number(p, hook.url) for p in phones], balance="48.00")
    for p in phones:
        world.sms(p, webhook=hook.url)
    world.tick()
    sid = world.p.twilio_sid
    assert len(world.fake.requests(f"/Accounts/{sid}.json")) == 1
    assert len(world.fake.requests(f"/Accounts/{sid}/Balance.json")) == 1
    assert len(world.fake.requests("/IncomingPhoneNumbers.json")) == 5


def test_sub_account_balance_is_the_parents(world):
    sub = "AC" + "5" * 32
    hook = world.webhook(HOOK_OK)
    world.fake.state(subaccounts=[sub], balance="3.10",
                     numbers=[world.number("+4930123456", hook.url)])
    cid = world.sms("+4930123456", webhook=hook.url, account_sid=sub)
    world.tick()
    assert len(world.fake.requests(f"/Accounts/{sub}.json")) == 1
    assert world.fake.requests(f"/Accounts/{sub}/Balance.json") == []
    assert len(world.fake.requests(f"/Accounts/{world.p.twilio_sid}/Balance.json")) == 1
    assert world.open_alert(cid, "twilio.balance")["severity"] == "critical"


# ------------------------------------------------------------ lifecycle ----

def test_open_update_escalate_resolve_sends_exactly_three_mails(world):
    cid, _ = healthy_twilio(world)
    world.fake.state(balance="12.34")
    world.tick()                                   # opens (warning): mail 1
    world.tick()                                   # still low: update, no mail
    a = world.open_alert(cid, "twilio.balance")
    assert a["occurrences"] == 2 and a["last_seen_at"] > a["first_seen_at"]
    assert len(world.notifications()) == 1
    world.fake.state(balance="2.00")
    world.tick()                                   # critical: mail 2
    a = world.open_alert(cid, "twilio.balance")
    assert a["severity"] == "critical" and a["occurrences"] == 3
    world.tick()                                   # still critical: nothing
    world.fake.state(balance="80.00")
    world.tick()                                   # resolves: mail 3
    world.tick()                                   # healthy: nothing
    assert world.open_alert(cid, "twilio.balance") is None
    resolved = world.alerts(channel_check=f"{cid}:twilio.balance")
    assert len(resolved) == 1 and resolved[0]["status"] == "resolved"
    assert resolved[0]["key"].startswith(f"{cid}:twilio.balance:resolved:")
    notes = world.notifications()
    assert len(notes) == 3, [n["key"] for n in notes]
    assert all(n["recipient"]["email"] == world.manager["email"] for n in notes)
    assert all(n["status"] == "sent" for n in notes)
    wait_until(lambda: len(world.mails()) >= 3, 20, what="three mails in Mailpit")
    subjects = world.mails()
    assert len(subjects) == 3, subjects
    assert sorted(s.split("]")[0] for s in subjects) == ["[critical", "[critical", "[warning"]
    assert any("opened on +4930123456" in s for s in subjects)
    assert any("resolved on +4930123456" in s for s in subjects)
    # A new incident of the same check opens a new alert under the freed key.
    world.fake.state(balance="1.00")
    world.tick()
    assert world.open_alert(cid, "twilio.balance")["severity"] == "critical"
    assert len(world.alerts(channel_check=f"{cid}:twilio.balance")) == 2
    assert len(world.notifications()) == 4


def test_inactive_channel_is_skipped_and_its_alerts_resolve(world):
    cid, _ = healthy_twilio(world)
    world.fake.state(account_status="closed")
    world.tick()
    assert world.open_alert(cid, "twilio.account")
    world.db[CHANNELS].update_one({"_id": cid}, {"$set": {"active": False}})
    before = len(world.fake.requests("/2010-04-01/"))
    end = world.tick()
    assert len(world.fake.requests("/2010-04-01/")) == before, "an inactive channel is not checked"
    assert end["counts"]["channels"] == 0 and end["counts"]["alerts_resolved"] >= 1
    a = world.alerts(channel_check=f"{cid}:twilio.account")[0]
    assert a["status"] == "resolved" and a["resolve_reason"] == "the channel is inactive"
    assert [n["key"].split(":")[2] for n in world.notifications()].count("resolved") >= 1
    # A channel deleted outright: its alerts resolve too, saying so.
    gone = world.channel(type="email", provider="smtp", from_email="gone@acme.example",
                         webhook_url="ftp://files.acme.example/")
    world.tick()
    assert "not an http(s) URL" in world.open_alert(gone, "webhook.endpoint")["message"]
    world.db[CHANNELS].delete_one({"_id": gone})
    world.tick()
    a = world.alerts(channel_check=f"{gone}:webhook.endpoint")[0]
    assert a["status"] == "resolved" and a["resolve_reason"] == "the channel no longer exists"


def test_alerts_unique_per_key_with_two_instances(world):
    cid, _ = healthy_twilio(world)
    world.fake.state(balance="12.34")
    # Different Redis prefixes: no shared lease, so both really run at once
    # against the same database.
    procs = [world.start(f"i{n}", QM_SUPPORT_REDIS_PREFIX=f"{world.sd.prefix}{n}:")
             for n in range(2)]
    assert [p.wait_exit(90) for p in procs] == [0, 0]
    opened = world.alerts(key=f"{cid}:twilio.balance")
    assert len(opened) == 1
    notes = [n for n in world.notifications()]
    assert len(notes) == 1, [n["key"] for n in notes]
    ended = [p.events("tick.end")[0]["counts"] for p in procs]
    assert sum(c["alerts_opened"] for c in ended) == 1
    assert sum(c["alerts_opened"] + c["open_conflicts"] + c["alerts_updated"] for c in ended) == 2


# ------------------------------------------------------ hanging provider ----

def test_hanging_provider_does_not_delay_the_tick_past_its_timeout(world):
    hook = world.webhook(HOOK_OK, delay=60)
    world.fake.state(numbers=[world.number("+4930123456", hook.url)], balance="48.00")
    world.health(http_timeout_ms=1500, webhook_timeout_ms=1500)
    cid = world.sms("+4930123456", webhook=hook.url)
    world.fake.fault(match="/2010-04-01/", delay_ms=60000, times=0)
    t0 = time.monotonic()
    end = world.tick()
    took = time.monotonic() - t0
    # Every check runs at once: the tick waits one timeout, not the sum.
    assert end["counts"]["check_ms"] < 1500 + 1200, end
    assert took < 20, took
    assert end["counts"]["checks_transient"] == 3  # account, number, webhook; balance unchecked
    print(f"\nhanging provider: check phase {end['counts']['check_ms']} ms, "
          f"tick {end['duration_ms']} ms, process {took:.2f} s")
    assert world.open_alert(cid, "twilio.account") is None


# ------------------------------------------------------------- webhooks ----

def test_webhook_certificates_valid_expiring_and_invalid(world, tmp_path):
    ca = CertAuthority(tmp_path / "ca")
    rogue = CertAuthority(tmp_path / "rogue", "rogue")
    good = world.webhook(HOOK_OK, tls=ca.server_cert(90, "good"))
    soon = world.webhook(HOOK_OK, tls=ca.server_cert(3, "soon"))
    bad = world.webhook(HOOK_OK, tls=rogue.server_cert(90, "bad"))
    down = world.webhook(500)
    ids = {name: world.channel(type="email", provider="smtp", from_email=f"{name}@acme.example",
                               webhook_url=srv.url)
           for name, srv in (("good", good), ("soon", soon), ("bad", bad), ("down", down))}
    world.extra_env["SSL_CERT_FILE"] = str(ca.pem)
    world.tick()
    assert world.open_alert(ids["good"], "webhook.endpoint") is None
    a = world.open_alert(ids["soon"], "webhook.endpoint")
    assert a["severity"] == "warning" and "expires on" in a["message"]
    assert a["details"]["cert_days_left"] <= 3
    a = world.open_alert(ids["bad"], "webhook.endpoint")
    assert a["severity"] == "critical" and "certificate" in a["message"]
    assert world.open_alert(ids["down"], "webhook.endpoint") is None  # 500: transient, 1 of 2
    world.health(webhook_cert_warning_days=2)
    world.tick()
    assert world.open_alert(ids["soon"], "webhook.endpoint") is None
    a = world.open_alert(ids["down"], "webhook.endpoint")
    assert a and a["details"]["cause"] == "endpoint_unreachable"


def test_credentials_in_a_webhook_url_are_never_quoted(world):
    """Issue 22: a channel's webhook_url with user:password in it is quoted in
    the alert, its mail and the log with the password masked."""
    secret = "hook-s3cret-" + world.sd.prefix.strip(":")[-6:]
    down = world.webhook(500)
    host = down.url.split("://", 1)[1]
    cid = world.channel(type="email", provider="smtp", from_email="creds@acme.example",
                        webhook_url=f"http://hooker:{secret}@{host}")
    world.tick()
    world.tick()
    a = world.open_alert(cid, "webhook.endpoint")
    assert a, "the unreachable webhook opened no alert"
    assert "hooker:***@" in a["message"], a["message"]
    texts = [json.dumps(a, default=str), world.last_stderr,
             *(json.dumps(n, default=str) for n in world.notifications())]
    for t in texts:
        assert secret not in t, f"the webhook password is quoted:\n{t[-2000:]}"
    assert any("hooker:***@" in json.dumps(n, default=str) for n in world.notifications())


# ----------------------------------------------------------- hot reload ----

def test_broken_health_lua_keeps_the_last_good_rules(world):
    cid, _ = healthy_twilio(world)
    world.fake.state(balance="12.34")
    d = world.sd.start("run", name="daemon", **world.env(
        QM_SUPPORT_COMMUNICATION_CHECK="true", QM_SUPPORT_COMMUNICATION_CHECK_CRON="* * * * * *"))
    wait_until(lambda: world.open_alert(cid, "twilio.balance"), 30, what="the balance alert")
    world.health(twilio_balance_warning="10.0")
    d.wait_for("rules.reloaded", timeout=20)
    wait_until(lambda: world.open_alert(cid, "twilio.balance") is None, 30,
               what="the alert to resolve under the new threshold")
    # A broken file that would raise the threshold again must not be used.
    path = world.rules / "health.lua"
    path.write_text(path.read_text().replace("twilio_balance_warning = 10.0",
                                             "twilio_balance_warning = 50.0") + "\nlocal = 1\n")
    failed = d.wait_for("rules.reload_failed", timeout=20)
    assert "health.lua:" in failed["error"]
    n = len(d.events("tick.end"))
    wait_until(lambda: len(d.events("tick.end")) >= n + 3, 30, what="three more ticks")
    assert world.open_alert(cid, "twilio.balance") is None
    assert len(world.alerts(channel_check=f"{cid}:twilio.balance")) == 1
    assert d.terminate_and_wait() == 0


# -------------------------------------------------------------- dry-run ----

def test_dry_run_plans_checks_alerts_and_mails_from_canned_answers(sd):
    import json as _json
    from conftest import REPO
    cp = sd.cli("dry-run", "--fixtures", str(REPO / "rules" / "fixtures"), "--job",
                "communication-check")
    assert cp.returncode == 0, cp.stderr
    plan = _json.loads(cp.stdout)["jobs"]["communication-check"]
    probes = [r["probe"] for r in plan["requests"]]
    # Two channels share the billing account: one account fetch each, one balance.
    assert probes.count("twilio.balance:main") == 1 and len(probes) == len(set(probes))
    outcomes = {(r["channel_id"][-3:], r["check"]): r["outcome"] for r in plan["results"]}
    assert outcomes[("201", "twilio.balance")] == "failing"
    assert outcomes[("203", "webhook.endpoint")] == "transient"
    assert ("204", "smtp.connect") not in outcomes  # inactive: not checked
    kinds = {(a["kind"], a["target"].split(":", 1)[0][-3:], a["target"].split(":")[1])
             for a in plan["actions"]}
    assert ("resolve", "204", "smtp.connect") in kinds
    assert ("resolve", "205", "sendgrid.domain") in kinds
    domain = next(a for a in plan["actions"] if a["target"].endswith("203:sendgrid.domain"))
    assert "dkim1" in domain["alert"]["message"]
    assert domain["notifications"][0]["recipient"]["email"] == "petra@acme.example"
    assert plan["streaks"] == {"65e2f0000000000000000203:webhook.endpoint": 1}


def test_stalest_channels_first_within_the_cap(world):
    world.health(max_channels_per_tick=2)
    ids = [world.channel(type="email", provider="smtp", from_email=f"c{i}@acme.example")
           for i in range(3)]
    checked = world.sd.key("commcheck:checked_at")
    assert world.tick()["counts"]["channels"] == 2
    first = world.sd.redis.hgetall(checked)
    assert len(first) == 2
    left_out = next(str(c) for c in ids if str(c) not in first)
    time.sleep(0.01)
    assert world.tick()["counts"]["channels"] == 2
    second = world.sd.redis.hgetall(checked)
    # The one never checked goes first, then the stalest of the other two
    # (checked in the same tick: the lower id breaks the tie).
    assert left_out in second and len(second) == 3
    refreshed = [k for k in first if second[k] != first[k]]
    assert refreshed == [str(ids[0])], (first, second)


def test_alert_notifications_are_aligned_for_libbson(world):
    """An alert's channel.alert entries are handed to libbson as bson_t, which libbson
    declares 128-byte aligned: never from a malloc'ed array (16-byte aligned under
    glibc's and musl's malloc; shims/bson_align_check.c aborts the process)."""
    cid, _ = healthy_twilio(world)
    world.fake.state(account_status="suspended")
    world.tick(**unaligned_heap())
    assert world.open_alert(cid, "twilio.account")
    assert world.notifications(), "the alert's notifications"


def test_an_alert_to_many_managers_enqueues_each_once(world):
    """More channel.alert entries in one round than the first allocation holds: the
    entries, grown in memory, still read as what the alert carried (a regression: the
    copied views pointed into the freed array)."""
    managers = [{"user_id": ObjectId(), "name": f"M{i}", "role": "manager",
                 "email": f"m{i}-{world.tag}@acme.example"} for i in range(40)]
    world.db["conversation-room"].update_one({"_id": world.room},
                                             {"$push": {"members": {"$each": managers}}})
    cid, _ = healthy_twilio(world)
    world.fake.state(account_status="suspended")
    world.tick()
    assert world.open_alert(cid, "twilio.account")
    to = sorted(n["recipient"]["email"] for n in world.notifications())
    assert to == sorted([world.manager["email"]] + [m["email"] for m in managers])
