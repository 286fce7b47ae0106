-- retry.lua: whether a failed or undelivered outbound message is sent again.
--
-- decide(message, err, attempts) -> { retry = bool, delay_seconds = n, final = bool, reason = s }
--   message   the conversation-message document (provider, channel, ...)
--   err       { code = <provider code>, message = <text> } (may be empty)
--   attempts  sends made so far (1 after the first send)
--
-- Codes follow reference/providers.md §4. Twilio itself advises against
-- logic on error codes; this table is policy, edit it to taste.
local M = {}

M.max_attempts = 4          -- sends in all, the first included
M.backoff_seconds = 60      -- first retry after 1 min, then 2, 4, ... min
M.max_backoff_seconds = 3600

-- Reconcile: a message whose status has not moved for this long is looked
-- up at the provider (Twilio only: SendGrid's Email Activity API is a paid
-- add-on limited to 6 requests a minute). Twilio advises polling a message
-- that is not delivered or undelivered within 12 hours.
M.reconcile = {
  after_seconds = { queued = 3600, sending = 3600, sent = 12 * 3600 },
  max_per_tick = 50,          -- lookups per tick, politely spaced over ticks
}

M.retryable = {
  twilio = {
    [30001] = true,   -- queue overflow: retry with slowdown
    [30003] = true,   -- handset unavailable: a one-time downstream issue
    [30008] = true,   -- unknown error
    [20429] = true,   -- too many requests: never processed, always safe
  },
  sendgrid = {
    blocked = true,   -- bounce type "blocked": temporary
    deferred = true,
  },
  smtp = {
    [421] = true, [450] = true, [451] = true, [452] = true,
  },
}

function M.delay(attempts)
  local d = M.backoff_seconds * 2 ^ math.max(attempts - 1, 0)
  return math.floor(math.min(d, M.max_backoff_seconds))
end

function M.decide(message, err, attempts)
  err = err or {}
  local codes = M.retryable[message.provider or ""] or {}
  if not codes[err.code] then
    return { retry = false, final = true, reason = "not retryable: " .. tostring(err.code) }
  end
  if attempts >= M.max_attempts then
    return { retry = false, final = true, reason = "gave up after " .. attempts .. " attempts" }
  end
  return { retry = true, final = false, delay_seconds = M.delay(attempts) }
end

M.tests = {
  { name = "twilio 30003 retried after 1 min", fn = "decide",
    args = { { provider = "twilio" }, { code = 30003 }, 1 },
    expect = { retry = true, delay_seconds = 60, final = false } },
  { name = "backoff doubles", fn = "decide",
    args = { { provider = "twilio" }, { code = 30003 }, 3 },
    expect = { retry = true, delay_seconds = 240 } },
  { name = "landline never retried", fn = "decide",
    args = { { provider = "twilio" }, { code = 30006 }, 1 }, expect = { retry = false, final = true } },
  { name = "maximum reached", fn = "decide",
    args = { { provider = "sendgrid" }, { code = "blocked" }, 4 }, expect = { retry = false, final = true } },
}

return M
