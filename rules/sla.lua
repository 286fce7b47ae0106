-- sla.lua: response targets, business hours, warnings and the escalation ladder.
--
-- policy(conversation, room) -> {
--     name, first_response = <business minutes>, resolution = <business minutes>,
--     warn_before = <minutes>, business_hours = <normalized, see below> }
-- due(start_ms, minutes, hours, utc_offset_minutes) -> ms
--     the moment `minutes` of business time have passed since start_ms, for
--     business hours `hours` in a zone `utc_offset_minutes` from UTC.
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

-- Walks business spans forward from start; at most a year of days.
function M.due(start_ms, minutes, hours, utc_offset_minutes)
  local week = M.normalize_hours(hours)
  if not week then return start_ms + minutes * 60000 end
  local offset = (utc_offset_minutes or 0) * 60000
  local t = start_ms + offset                       -- local wall time in ms
  local left = minutes * 60000
  for _ = 1, 366 do
    local day_start = t - t % 86400000
    local wday = (day_start // 86400000 + 4) % 7    -- 1970-01-01 was a Thursday
    for _, span in ipairs(week[wday]) do
      local from, to = day_start + span[1] * 60000, day_start + span[2] * 60000
      if t < to then
        local begin = math.max(t, from)
        if begin + left <= to then return begin + left - offset end
        left = left - (to - begin)
        t = to
      end
    end
    t = day_start + 86400000
  end
  error("no business hours within a year")
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
}

return M
