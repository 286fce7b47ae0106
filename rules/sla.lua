-- sla.lua: response targets, the warning window and the escalation ladder.
--
-- policy(conversation, room) -> {
--     name, first_response = <business minutes>, resolution = <business minutes>,
--     warn_before = <minutes> }
-- escalation_level(minutes_overdue) -> level (0 = none)
-- ladder: minutes overdue (in business minutes) at which level 1, 2, ... start
--
-- Business minutes are counted by supportd in the room's calendar (SPEC §2):
-- `business_hours` { mon = { {"09:00","17:00"}, ... }, ... } (or, where the
-- database rejects nested arrays — FerretDB 1.x — { mon = { {from="09:00",
-- to="17:00"} } }), several spans a day, `holidays` {"2026-12-25", ...} and
-- the IANA `timezone` with its daylight-saving changes; a room without
-- business hours is served around the clock. The SLA clock stops while a
-- ticket is pending, snoozed, resolved or closed. (That counting runs several
-- times per conversation per tick, so it is done in C: README, Rules.)
local M = {}

M.targets = {                 -- business minutes
  urgent = { first_response = 30,  resolution = 240 },
  high   = { first_response = 60,  resolution = 480 },
  normal = { first_response = 240, resolution = 1440 },
  low    = { first_response = 480, resolution = 2880 },
}
M.warn_before = 15            -- minutes before a deadline to warn the assignee
M.ladder = { 0, 60, 240 }     -- minutes overdue at which level 1, 2, 3 start

function M.policy(conversation, room)
  local t = M.targets[conversation.priority] or M.targets.normal
  return {
    name = (room and room.sla_policy) or "default",
    first_response = t.first_response,
    resolution = t.resolution,
    warn_before = M.warn_before,
  }
end

function M.escalation_level(minutes_overdue)
  local level = 0
  for i, at in ipairs(M.ladder) do
    if minutes_overdue >= at then level = i end
  end
  return level
end

M.tests = {
  { name = "urgent targets", fn = "policy", args = { { priority = "urgent" }, {} },
    expect = { first_response = 30, resolution = 240, warn_before = 15 } },
  { name = "unknown priority is normal", fn = "policy", args = { { priority = "whenever" }, {} },
    expect = { first_response = 240, resolution = 1440, warn_before = 15 } },
  { name = "one hour late is level 2", fn = "escalation_level", args = { 61 }, expect = 2 },
  { name = "on time is no level", fn = "escalation_level", args = { -1 }, expect = 0 },
}

return M
