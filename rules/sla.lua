-- sla.lua: response targets, business hours, warnings and the escalation ladder.
--
-- policy(conversation, room) -> {
--     name, first_response = <business minutes>, resolution = <business minutes>,
--     warn_before = <minutes>, business_hours = <normalized, see below> }
-- due(start_ms, minutes, hours, zone, holidays) -> ms
--     the moment `minutes` of business time have passed since start_ms, for
--     business hours `hours` in `zone`, skipping the local dates in
--     `holidays` ({"2026-12-25", ...}). `zone` is either a fixed offset in
--     minutes east of UTC or, as supportd passes it, the zone's offsets
--     resolved in C from the IANA rules: { {at = <ms>, offset = <minutes>},
--     ... } sorted by `at`, each in effect from `at` on (daylight saving).
-- between(from_ms, to_ms, hours, zone, holidays) -> business minutes in
--     [from_ms, to_ms) (the SLA clock's pauses and the escalation ladder).
-- escalation_level(minutes_overdue) -> level (0 = none)
--
-- Business hours come from the room: { mon = { {"09:00","17:00"} }, ... }
-- (SPEC §2) or, where the database rejects nested arrays (FerretDB 1.x),
-- { mon = { {from="09:00", to="17:00"} }, ... }. Both are accepted; a room
-- without business hours is served around the clock.
local M = {}

M.targets = {                 -- business minutes
  urgent = { first_response = 30,  resolution = 240 },
  high   = { first_response = 60,  resolution = 480 },
  normal = { first_response = 240, resolution = 1440 },
  low    = { first_response = 480, resolution = 2880 },
}
M.warn_before = 15            -- minutes before a deadline to warn the assignee
M.ladder = { 0, 60, 240 }     -- minutes overdue at which level 1, 2, 3 start

local days = { "sun", "mon", "tue", "wed", "thu", "fri", "sat" }

local function minutes_of(hhmm)
  local h, m = tostring(hhmm):match("^(%d%d?):(%d%d)$")
  if not h then error("business hours: bad time " .. tostring(hhmm), 2) end
  return tonumber(h) * 60 + tonumber(m)
end

-- { [0..6] = { {from_min, to_min}, ... } } sorted, or nil for 24/7.
function M.normalize_hours(hours)
  if type(hours) ~= "table" then return nil end
  local out = {}
  for wday, name in ipairs(days) do
    local list = {}
    for _, span in ipairs(hours[name] or {}) do
      local from = span.from or span[1]
      local to = span.to or span[2]
      list[#list + 1] = { minutes_of(from), minutes_of(to) }
    end
    table.sort(list, function(a, b) return a[1] < b[1] end)
    out[wday - 1] = list
  end
  return out
end

function M.policy(conversation, room)
  local t = M.targets[conversation.priority] or M.targets.normal
  return {
    name = (room and room.sla_policy) or "default",
    first_response = t.first_response,
    resolution = t.resolution,
    warn_before = M.warn_before,
  }
end

-- Minutes east of UTC in effect at t_ms (ms).
local function offset_at(zone, t_ms)
  if type(zone) ~= "table" then return (zone or 0) * 60000 end
  local off = zone[1] and zone[1].offset or 0
  for _, z in ipairs(zone) do
    if z.at <= t_ms then off = z.offset else break end
  end
  return off * 60000
end

-- Local wall time (ms) to UTC: the offset of the guess, refined once, so a
-- day on which the clocks change gets the offset in effect at that hour.
local function to_utc(zone, local_ms)
  local guess = local_ms - offset_at(zone, local_ms)
  return local_ms - offset_at(zone, guess)
end

-- Calls visit(from_ms, to_ms) for every business span (UTC) that ends after
-- start_ms, in order, clipped to start at start_ms at the earliest, until
-- visit returns true; at most a year of local days. Returns true if stopped.
local function walk(start_ms, week, zone, holidays, visit)
  local closed = {}
  for _, d in ipairs(holidays or {}) do closed[d] = true end
  local lt = start_ms + offset_at(zone, start_ms)
  local day = lt - lt % 86400000                    -- local midnight, as ms
  for _ = 1, 367 do
    local wday = (day // 86400000 + 4) % 7          -- 1970-01-01 was a Thursday
    if not closed[os.date("!%Y-%m-%d", day // 1000)] then
      for _, span in ipairs(week[wday]) do
        local from = to_utc(zone, day + span[1] * 60000)
        local to = to_utc(zone, day + span[2] * 60000)
        if to > start_ms and visit(math.max(from, start_ms), to) then return true end
      end
    end
    day = day + 86400000
  end
  return false
end

function M.due(start_ms, minutes, hours, zone, holidays)
  local week = M.normalize_hours(hours)
  if not week then return start_ms + minutes * 60000 end
  local left, result = minutes * 60000, nil
  local found = walk(start_ms, week, zone, holidays, function(from, to)
    if from + left <= to then result = from + left return true end
    left = left - (to - from)
    return false
  end)
  if not found then error("no business hours within a year") end
  return result
end

function M.between(from_ms, to_ms, hours, zone, holidays)
  if to_ms <= from_ms then return 0 end
  local week = M.normalize_hours(hours)
  if not week then return (to_ms - from_ms) // 60000 end
  local total = 0
  walk(from_ms, week, zone, holidays, function(a, b)
    if a >= to_ms then return true end
    total = total + (math.min(b, to_ms) - a)
    return b >= to_ms
  end)
  return total // 60000
end

function M.escalation_level(minutes_overdue)
  local level = 0
  for i, at in ipairs(M.ladder) do
    if minutes_overdue >= at then level = i end
  end
  return level
end

local weekdays = { mon = { { "09:00", "17:00" } }, tue = { { "09:00", "17:00" } } }
M.tests = {
  { name = "urgent targets", fn = "policy", args = { { priority = "urgent" }, {} },
    expect = { first_response = 30, resolution = 240, warn_before = 15 } },
  -- Monday 2026-03-02 16:30 UTC + 60 business minutes = Tuesday 09:30
  { name = "carries over to the next day", fn = "due",
    args = { 1772469000000, 60, weekdays, 0 }, expect = 1772530200000 },
  { name = "24/7 without business hours", fn = "due", args = { 0, 90, nil, 0 }, expect = 5400000 },
  { name = "{from,to} spans are accepted", fn = "due",
    args = { 1772469000000, 60, { mon = { { from = "09:00", to = "17:00" } },
                                  tue = { { from = "09:00", to = "17:00" } } }, 0 },
    expect = 1772530200000 },
  { name = "one hour late is level 2", fn = "escalation_level", args = { 61 }, expect = 2 },
  -- Friday 2026-03-06 16:30 UTC + 60 business minutes = Monday 09:30 (weekend skipped)
  { name = "skips the weekend", fn = "due",
    args = { 1772814600000, 60, { mon = { { "09:00", "17:00" } }, fri = { { "09:00", "17:00" } } }, 0 },
    expect = 1773048600000 },
  -- Monday 16:30 UTC, Tuesday a holiday (and only Monday and Tuesday open): next Monday 09:30
  { name = "skips holidays", fn = "due",
    args = { 1772469000000, 60, weekdays, 0, { "2026-03-03" } }, expect = 1773048600000 },
  { name = "two intervals a day", fn = "due",
    args = { 1772442000000, 300, { mon = { { "09:00", "12:00" }, { "13:00", "17:00" } } }, 0 },
    expect = 1772463600000 },
  -- Europe/Berlin, clocks forward on 2026-03-29 at 01:00 UTC: Friday 27th 16:30 CET
  -- (15:30 UTC) + 60 minutes = Monday 30th 09:30 CEST = 07:30 UTC
  { name = "daylight saving", fn = "due",
    args = { 1774625400000, 60, { mon = { { "09:00", "17:00" } }, fri = { { "09:00", "17:00" } } },
             { { at = 0, offset = 60 }, { at = 1774746000000, offset = 120 } } },
    expect = 1774855800000 },
  { name = "business minutes between", fn = "between",
    args = { 1772469000000, 1772530200000, weekdays, 0 }, expect = 60 },
}

return M
