-- health.lua: thresholds and severities of the channel checks
-- (communication-check job).
--
-- thresholds      numbers the checks compare against (see each line)
-- balance         per-currency balance thresholds; others use the twilio_balance_* ones
-- severity[check] "warning" or "critical" for an alert that check opens
-- advice[check]   what the managers' mail tells them to do
-- classify(check, result) -> "ok" | "transient" | "definitive"
--   result = { ok = bool, status = <HTTP status or nil>, timeout = bool,
--              unreachable = bool (no answer, or the provider's own 5xx/429),
--              definitive = bool (the check saw a definite problem),
--              tls = bool (webhook certificate not accepted),
--              balance = n, currency = "USD", cert_days_left = n, ... }
--   A definitive failure opens an alert at once; a transient one only after
--   thresholds.consecutive_failures in a row.
-- assess(check, result) -> { class = "ok"|"transient"|"definitive", severity = ... }
--   what the job calls for every check: classify plus the thresholds below.
local M = {}

M.thresholds = {
  twilio_balance_warning = 20.0,   -- account currency units
  twilio_balance_critical = 5.0,
  consecutive_failures = 2,        -- transient failures in a row before an alert
  http_timeout_ms = 10000,         -- one provider API request or SMTP session
  webhook_timeout_ms = 5000,       -- one webhook probe
  webhook_cert_warning_days = 14,  -- a certificate expiring sooner is a warning
  concurrency = 8,                 -- requests in flight at once
  tick_timeout_ms = 60000,         -- all checks of one tick; the rest wait for the next
  max_channels_per_tick = 500,     -- stalest first; the rest wait for the next tick
}

-- Balance thresholds by currency (Twilio answers in the account's currency).
M.balance = {
  -- EUR = { warning = 20.0, critical = 5.0 },
}

M.severity = {
  ["twilio.account"] = "critical",
  ["twilio.balance"] = "warning",  -- raised to critical below the critical threshold
  ["twilio.number"] = "critical",
  ["sendgrid.api_key"] = "critical",
  ["sendgrid.domain"] = "warning",
  ["smtp.connect"] = "critical",
  ["webhook.endpoint"] = "warning",
  ["webhook.certificate"] = "critical", -- the endpoint's certificate is not accepted
}

M.advice = {
  ["twilio.account"] = "Check the account's status in the Twilio console (Billing, Compliance); a suspended account sends nothing.",
  ["twilio.balance"] = "Top up the Twilio balance or enable auto-recharge before messages stop.",
  ["twilio.number"] = "In the Twilio console, make sure the number is on this account, can send SMS, and its messaging webhook is the channel's webhook URL.",
  ["sendgrid.api_key"] = "Create a SendGrid API key with the Mail Send permission and update SENDGRID_API_KEY.",
  ["sendgrid.domain"] = "Publish the DNS records SendGrid lists under Sender Authentication, then validate the domain again.",
  ["smtp.connect"] = "Check SMTP_URL, SMTP_USER and SMTP_PASSWORD, and that the server offers STARTTLS.",
  ["webhook.endpoint"] = "Make sure the webhook URL is reachable from the internet and its TLS certificate is valid and renewed in time.",
}

function M.classify(check, result)
  if result.ok then return "ok" end
  if result.timeout or result.unreachable then return "transient" end
  local s = result.status
  if s == 401 or s == 403 or result.definitive then return "definitive" end
  if s and s >= 500 then return "transient" end
  if s == 429 then return "transient" end
  return "definitive"
end

function M.balance_severity(balance, currency)
  local t = (currency and M.balance[currency]) or
            { warning = M.thresholds.twilio_balance_warning,
              critical = M.thresholds.twilio_balance_critical }
  if balance < t.critical then return "critical" end
  if balance < t.warning then return "warning" end
  return nil
end

function M.assess(check, result)
  if check == "twilio.balance" and result.ok and result.balance then
    local sev = M.balance_severity(result.balance, result.currency)
    if sev then return { class = "definitive", severity = sev } end
    return { class = "ok" }
  end
  if check == "webhook.endpoint" and result.ok and result.cert_days_left
     and result.cert_days_left < M.thresholds.webhook_cert_warning_days then
    return { class = "definitive", severity = "warning" }
  end
  local class = M.classify(check, result)
  if class == "ok" then return { class = "ok" } end
  local sev = (result.tls and M.severity["webhook.certificate"]) or M.severity[check] or "warning"
  return { class = class, severity = sev }
end

M.tests = {
  { name = "401 is definitive", fn = "classify", args = { "sendgrid.api_key", { ok = false, status = 401 } },
    expect = "definitive" },
  { name = "timeout is transient", fn = "classify", args = { "webhook.endpoint", { ok = false, timeout = true } },
    expect = "transient" },
  { name = "connection error is transient", fn = "classify",
    args = { "twilio.account", { ok = false, unreachable = true } }, expect = "transient" },
  { name = "503 is transient", fn = "classify", args = { "twilio.account", { ok = false, status = 503 } },
    expect = "transient" },
  -- relative to the thresholds above, so that editing them keeps the tests true
  { name = "low balance warns", fn = "balance_severity",
    args = { (M.thresholds.twilio_balance_warning + M.thresholds.twilio_balance_critical) / 2 },
    expect = "warning" },
  { name = "very low balance is critical", fn = "balance_severity",
    args = { M.thresholds.twilio_balance_critical - 0.01 }, expect = "critical" },
  { name = "balance assessed", fn = "assess",
    args = { "twilio.balance", { ok = true, balance = M.thresholds.twilio_balance_critical - 0.01,
                                 currency = "USD" } },
    expect = { class = "definitive", severity = "critical" } },
  { name = "expiring certificate warns", fn = "assess",
    args = { "webhook.endpoint", { ok = true, status = 405,
                                   cert_days_left = M.thresholds.webhook_cert_warning_days - 1 } },
    expect = { class = "definitive", severity = "warning" } },
  { name = "rejected certificate is critical", fn = "assess",
    args = { "webhook.endpoint", { ok = false, definitive = true, tls = true } },
    expect = { class = "definitive", severity = "critical" } },
}

return M
