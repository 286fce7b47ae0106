-- health.lua: thresholds and severities of the channel checks
-- (communication-check job).
--
-- thresholds      numbers the checks compare against
-- severity[check] "warning" or "critical" for an alert that check opens
-- classify(check, result) -> "ok" | "transient" | "definitive"
--   result = { ok = bool, status = <HTTP status or nil>, timeout = bool,
--              value = <e.g. balance>, reason = <text> }
--   A definitive failure opens an alert at once; a transient one only after
--   thresholds.consecutive_failures in a row.
local M = {}

M.thresholds = {
  twilio_balance_warning = 20.0,   -- account currency units
  twilio_balance_critical = 5.0,
  consecutive_failures = 2,        -- transient failures before an alert
  http_timeout_ms = 10000,
  webhook_timeout_ms = 5000,
  concurrency = 4,                 -- channels checked at once
}

M.severity = {
  ["twilio.account"] = "critical",
  ["twilio.balance"] = "warning",  -- raised to critical below the critical threshold
  ["twilio.number"] = "critical",
  ["sendgrid.api_key"] = "critical",
  ["sendgrid.domain"] = "warning",
  ["smtp.connect"] = "critical",
  ["webhook.endpoint"] = "warning",
}

function M.classify(check, result)
  if result.ok then return "ok" end
  if result.timeout then return "transient" end
  local s = result.status
  if s == 401 or s == 403 or result.definitive then return "definitive" end
  if s and s >= 500 then return "transient" end
  if s == 429 then return "transient" end
  return "definitive"
end

function M.balance_severity(balance)
  if balance < M.thresholds.twilio_balance_critical then return "critical" end
  if balance < M.thresholds.twilio_balance_warning then return "warning" end
  return nil
end

M.tests = {
  { name = "401 is definitive", fn = "classify", args = { "sendgrid.api_key", { ok = false, status = 401 } },
    expect = "definitive" },
  { name = "timeout is transient", fn = "classify", args = { "webhook.endpoint", { ok = false, timeout = true } },
    expect = "transient" },
  { name = "503 is transient", fn = "classify", args = { "twilio.account", { ok = false, status = 503 } },
    expect = "transient" },
  { name = "low balance warns", fn = "balance_severity", args = { 12.5 }, expect = "warning" },
  { name = "very low balance is critical", fn = "balance_severity", args = { 1 }, expect = "critical" },
}

return M
