-- notify.lua: who is told what.
--
-- recipients(type, conversation, room) -> list of
--     { role = "agent"|"manager"|"customer", user_id?, name?, email?, phone?, via = "email"|"sms" }
-- reminder      when and how often to remind the assignee of a waiting customer
-- snooze        snooze behaviour (wake the ticket when the customer writes)
local M = {}

M.reminder = {
  after_minutes = 60,          -- customer waiting longer than this: remind
  repeat_every_minutes = 120,
  max_repeats = 3,
}

M.snooze = {
  wake_on_customer_message = true,
}

-- Who gets each type: "assignee" (falls back to the room's agents when the
-- ticket is unassigned), "agents", "managers" or "customer".
M.routes = {
  ["ticket.created"] = "agents",
  ["ticket.assigned"] = "assignee",
  ["ticket.customer_message"] = "assignee",
  ["ticket.status_changed"] = "customer",
  ["ticket.resolved"] = "customer",
  ["ticket.closed"] = "customer",
  ["ticket.sla_warning"] = "assignee",
  ["ticket.sla_breached"] = "managers",
  ["ticket.escalated"] = "managers",
  ["ticket.response_reminder"] = "assignee",
  ["ticket.unsnoozed"] = "assignee",
  ["channel.alert"] = "managers",
}

local function member(m)
  return { role = m.role, user_id = m.user_id, name = m.name, email = m.email, via = "email" }
end

local function members_with(room, role)
  local out = {}
  for _, m in ipairs((room and room.members) or {}) do
    if m.role == role and m.email then out[#out + 1] = member(m) end
  end
  return out
end

local function customer(conversation)
  local c = conversation.contact or {}
  if conversation.channel == "sms" and c.phone then
    return { { role = "customer", name = c.name, phone = c.phone, via = "sms" } }
  end
  if c.email then
    return { { role = "customer", name = c.name, email = c.email, via = "email" } }
  end
  if c.phone then
    return { { role = "customer", name = c.name, phone = c.phone, via = "sms" } }
  end
  return {}
end

function M.recipients(type, conversation, room)
  local route = M.routes[type]
  if route == "customer" then return customer(conversation or {}) end
  if route == "managers" then return members_with(room, "manager") end
  if route == "assignee" and conversation and conversation.assignee_id then
    for _, m in ipairs((room and room.members) or {}) do
      if m.user_id == conversation.assignee_id and m.email then return { member(m) } end
    end
  end
  -- unassigned, or the assignee left the room: the room's agents
  return members_with(room, "agent")
end

local room = { members = {
  { user_id = "a1", name = "Anna", email = "anna@x.example", role = "agent" },
  { user_id = "a2", name = "Jonas", email = "jonas@x.example", role = "agent" },
  { user_id = "m1", name = "Petra", email = "petra@x.example", role = "manager" } } }
M.tests = {
  { name = "assignee gets unsnoozed", fn = "recipients",
    args = { "ticket.unsnoozed", { assignee_id = "a2" }, room },
    expect = { { user_id = "a2", email = "jonas@x.example", role = "agent" } } },
  { name = "unassigned goes to all agents", fn = "recipients",
    args = { "ticket.unsnoozed", {}, room }, expect = { { user_id = "a1" }, { user_id = "a2" } } },
  { name = "breaches go to managers", fn = "recipients",
    args = { "ticket.sla_breached", {}, room }, expect = { { user_id = "m1", role = "manager" } } },
  { name = "sms customer", fn = "recipients",
    args = { "ticket.resolved", { channel = "sms", contact = { phone = "+4917" } }, room },
    expect = { { role = "customer", phone = "+4917", via = "sms" } } },
}

return M
