-- queue.lua: the order in which a room's support queue is served.
--
-- score(conversation, now_ms) returns a number; lower is served first. It
-- is the member's score in the Redis sorted set queue:<room_id>.
--
-- Default: by priority first (urgent, high, normal, low), then by how long
-- the customer has waited (oldest first). Scores stay exact as doubles:
-- 4 bands of 1e13 ms (317 years) each.
local M = {}

M.priority_rank = { urgent = 0, high = 1, normal = 2, low = 3 }
M.band = 1e13

-- The moment the customer started waiting: their last message, else the
-- ticket's creation, else now.
local function waiting_since(c, now_ms)
  return c.last_customer_message_at or c.created_at or now_ms
end

function M.score(conversation, now_ms)
  local rank = M.priority_rank[conversation.priority] or M.priority_rank.normal
  return rank * M.band + waiting_since(conversation, now_ms)
end

M.tests = {
  { name = "urgent before an older normal", fn = "score",
    args = { { priority = "urgent", created_at = 2000 }, 5000 }, expect = 2000 },
  { name = "unknown priority counts as normal", fn = "score",
    args = { { priority = "whatever", created_at = 7 }, 9 }, expect = 2e13 + 7 },
  { name = "last customer message wins over creation", fn = "score",
    args = { { priority = "low", created_at = 1, last_customer_message_at = 50 }, 99 },
    expect = 3e13 + 50 },
}

return M
