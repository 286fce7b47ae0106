-- templates.lua: subject, plain text and HTML of every notification.
--
-- render(type, ctx) -> { subject = s, text = s, html = s }
--   ctx = { conversation = {...}, room = {...}, recipient = {...},
--           event = {...}, now = <ms> }   (documents as in SPEC §2; dates are ms)
--
-- Templates use {{path.to.field}}: in html the value is HTML-escaped; write
-- {{{path}}} to insert it raw. In subject and text nothing is escaped. A
-- missing value renders as an empty string. {{when:path}} formats a date
-- (ms) as "2026-03-02 16:30 UTC".
local M = {}

M.product = "Support"

local T = {}
M.templates = T

T["ticket.created"] = {
  subject = "New ticket: {{conversation.subject}}",
  text = "A new ticket arrived in {{room.name}}.\n\nFrom: {{conversation.contact.name}}\nSubject: {{conversation.subject}}\nPriority: {{conversation.priority}}\n",
}
T["ticket.assigned"] = {
  subject = "Assigned to you: {{conversation.subject}}",
  text = "Hello {{recipient.name}},\n\nthe ticket \"{{conversation.subject}}\" from {{conversation.contact.name}} is now yours.\nPriority: {{conversation.priority}}\n",
}
T["ticket.customer_message"] = {
  subject = "New reply from {{conversation.contact.name}}: {{conversation.subject}}",
  text = "Hello {{recipient.name}},\n\n{{conversation.contact.name}} wrote {{event.count}} new message(s) on \"{{conversation.subject}}\".\n",
}
T["ticket.status_changed"] = {
  subject = "Your request \"{{conversation.subject}}\" is now {{conversation.status}}",
  text = "Hello {{conversation.contact.name}},\n\nthe status of your request \"{{conversation.subject}}\" changed to {{conversation.status}}.\n\n{{room.name}}\n",
}
T["ticket.resolved"] = {
  subject = "Resolved: {{conversation.subject}}",
  text = "Hello {{conversation.contact.name}},\n\nwe consider your request \"{{conversation.subject}}\" resolved. Just reply if anything is still open.\n\n{{room.name}}\n",
}
T["ticket.closed"] = {
  subject = "Closed: {{conversation.subject}}",
  text = "Hello {{conversation.contact.name}},\n\nyour request \"{{conversation.subject}}\" is closed. Thank you for contacting {{room.name}}.\n",
}
T["ticket.sla_warning"] = {
  subject = "SLA warning: {{conversation.subject}} is due {{when:event.due}}",
  text = "Hello {{recipient.name}},\n\nthe {{event.target}} deadline of \"{{conversation.subject}}\" is {{when:event.due}}.\n",
}
T["ticket.sla_breached"] = {
  subject = "SLA breached: {{conversation.subject}}",
  text = "The {{event.target}} deadline of \"{{conversation.subject}}\" in {{room.name}} passed at {{when:event.due}}.\n",
}
T["ticket.escalated"] = {
  subject = "Escalated to level {{event.level}}: {{conversation.subject}}",
  text = "The ticket \"{{conversation.subject}}\" in {{room.name}} is escalated to level {{event.level}}.\n",
}
T["ticket.response_reminder"] = {
  subject = "Reminder: {{conversation.contact.name}} is waiting on {{conversation.subject}}",
  text = "Hello {{recipient.name}},\n\n{{conversation.contact.name}} has been waiting since {{when:conversation.last_customer_message_at}} for a reply on \"{{conversation.subject}}\".\n",
}
T["ticket.unsnoozed"] = {
  subject = "Back from snooze: {{conversation.subject}}",
  text = "Hello {{recipient.name}},\n\nthe ticket \"{{conversation.subject}}\" from {{conversation.contact.name}} is back in the {{room.name}} queue ({{event.reason}}).\nPriority: {{conversation.priority}}\n",
}
-- channel.alert: event = {state = "opened"|"escalated"|"resolved", severity, check,
-- channel (the number or domain), message (what was seen), action (health.lua's
-- advice), reason (why it resolved)}; channel = the conversation-channel document.
T["channel.alert"] = {
  subject = "[{{event.severity}}] {{event.check}} {{event.state}} on {{event.channel}}",
  text = "Hello {{recipient.name}},\n\nthe {{event.channel}} channel of {{room.name}} {{event.state}} an alert: check {{event.check}} ({{event.severity}}).\n\nSeen: {{event.message}}\n{{event.reason}}\n\nWhat to do: {{event.action}}\n",
}

local escapes = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }
function M.escape(s) return (tostring(s):gsub("[&<>\"']", escapes)) end

function M.when(ms)
  if type(ms) ~= "number" then return "" end
  return os.date("!%Y-%m-%d %H:%M UTC", ms // 1000)
end

local function lookup(ctx, path)
  local v = ctx
  for part in path:gmatch("[^%.]+") do
    if type(v) ~= "table" then return nil end
    v = v[part]
  end
  return v
end

local function value(ctx, expr)
  local fmt, path = expr:match("^(%w+):(.+)$")
  if fmt == "when" then return M.when(lookup(ctx, path)) end
  local v = lookup(ctx, expr)
  if v == nil or type(v) == "table" then return "" end
  return tostring(v)
end

-- One pass over the template: an inserted value is never read again, so a
-- customer's subject "{{room.members.1.email}}" stays text.
function M.fill(template, ctx, html)
  return (template:gsub("{{({?)%s*(.-)%s*(}?)}}", function(open, e, close)
    local v = value(ctx, e)
    if open == "{" and close == "}" then return v end
    return html and M.escape(v) or v
  end))
end

-- The HTML part: the text template, escaped, in a minimal layout.
local function html_of(t, ctx)
  local body = M.fill(t.html or t.text, ctx, true)
  if not t.html then
    body = "<p>" .. body:gsub("\n\n", "</p><p>"):gsub("\n", "<br>") .. "</p>"
  end
  return "<!doctype html><html><body style=\"font-family:sans-serif\">" .. body ..
         "<p style=\"color:#888;font-size:small\">" .. M.escape(M.product) .. "</p></body></html>"
end

function M.render(type, ctx)
  local t = T[type]
  if not t then error("no template for notification type " .. tostring(type)) end
  return { subject = M.fill(t.subject, ctx, false), text = M.fill(t.text, ctx, false),
           html = html_of(t, ctx) }
end

local sample = { conversation = { subject = "Fish & <chips>", contact = { name = "Lena" },
                                  priority = "high", status = "open" },
                 room = { name = "Berlin" }, recipient = { name = "Anna" },
                 event = { reason = "snooze ended", due = 1772469000000 } }
M.tests = {
  { name = "subject is not escaped", fn = "render", args = { "ticket.unsnoozed", sample },
    expect_match = { subject = "Fish & <chips>" } },
  { name = "html is escaped", fn = "render", args = { "ticket.unsnoozed", sample },
    expect_match = { html = "Fish &amp; &lt;chips&gt;", text = "Hello Anna" } },
  { name = "dates format in UTC", fn = "render", args = { "ticket.sla_warning", sample },
    expect_match = { subject = "2026%-03%-02 16:30 UTC" } },
  { name = "inserted text is not read again", fn = "fill",
    args = { "{{{conversation.subject}}}|{{conversation.subject}}|{{{ room.name }}}",
             { conversation = { subject = "{{room.secret}} & {{{room.secret}}}" },
               room = { name = "<b>", secret = "staff@acme.example" } }, true },
    expect = "{{room.secret}} & {{{room.secret}}}|{{room.secret}} &amp; {{{room.secret}}}|<b>" },
}
for type in pairs(T) do
  M.tests[#M.tests + 1] = { name = "renders " .. type, fn = "render", args = { type, sample },
                            expect_match = { subject = ".", text = ".", html = "<html>" } }
end

return M
