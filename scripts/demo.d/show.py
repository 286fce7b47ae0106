"""Prints a readable picture of the demo database and Redis: conversations
with status, priority and snooze, the rooms' queues, the outbox and alerts.

usage: show.py MONGO_URL DATABASE REDIS_HOST REDIS_PORT PREFIX
"""
import sys
from datetime import datetime, timezone

import redis
from pymongo import MongoClient

url, db_name, rhost, rport, prefix = sys.argv[1:6]
db = MongoClient(url, tz_aware=True)[db_name]
r = redis.Redis(host=rhost, port=int(rport), decode_responses=True)
now = datetime.now(timezone.utc)

def rel(t):
    if t is None:
        return "-"
    s = int((t - now).total_seconds())
    sign, s = ("in ", s) if s >= 0 else ("", -s)
    unit = (f"{s // 86400}d" if s >= 86400 else f"{s // 3600}h" if s >= 3600 else f"{s // 60}m")
    return f"{sign}{unit}" + ("" if sign else " ago")

rooms = {room["_id"]: room["name"] for room in db["conversation-room"].find()}
print(f"  {'subject':32} {'room':15} {'status':9} {'priority':8} snooze until")
for c in db["conversation-conversation"].find().sort("created_at", 1):
    sn = c.get("snooze")
    print(f"  {c['subject'][:32]:32} {rooms.get(c['room_id'], '?')[:15]:15} {c['status']:9} "
          f"{c['priority']:8} {rel(sn['until']) if sn else '-'}")
for rid, name in rooms.items():
    members = r.zrange(f"{prefix}queue:{rid}", 0, -1, withscores=True)
    print(f"  queue {name}: {len(members)} conversation(s)")
print(f"  outbox: {db['conversation-notification'].count_documents({})} notification(s), "
      f"alerts: {db['conversation-alert'].count_documents({'status': 'open'})} open")
print(f"  {'message':26} {'via':9} {'status':11} history (source: status)")
for m in db["conversation-message"].find().sort("created_at", 1):
    hist = ", ".join(f"{h.get('source')}: {h.get('provider_status') or h.get('status')}"
                     + ("" if h.get("applied", True) else " (recorded only)")
                     for h in m.get("status_history", []))
    print(f"  {(m.get('provider_message_id') or '-')[:26]:26} {m.get('provider') or '-':9} "
          f"{m.get('status') or '-':11} {hist}")
for name in ("rejected", "unmatched"):
    for _, f in r.xrange(f"{prefix}status-events:{name}"):
        print(f"  status-events:{name}: {f.get('provider')} entry {f.get('origin_id')}: {f.get('reason')}")
