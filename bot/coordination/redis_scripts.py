"""Lua for `RedisCoordinator`: every step that reads and then writes shared state runs as one atomic script.

Time is Redis's (`TIME`), never a replica's clock, so replicas with skewed clocks still agree. Pacing and rate
times are whole microseconds, written with "%.0f" (Lua would print 16 digits in exponent form).
"""

from __future__ import annotations

_NOW_US = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: waiting (zset member -> update id), seen (hash member -> last poll, ms), lease.
# ARGV: member, update id, lease ms. 1: the turn is the member's (it left the waiting set), 0: keep waiting.
# A waiter ahead that stopped polling for a lease (its replica died) is dropped, so it never blocks the chat.
TURN_TRY = _NOW_MS + """
local lease_ms = tonumber(ARGV[3])
if redis.call('GET', KEYS[3]) == ARGV[1] then return 1 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], now)
redis.call('PEXPIRE', KEYS[1], lease_ms * 2)
redis.call('PEXPIRE', KEYS[2], lease_ms * 2)
while true do
  local lowest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if lowest == ARGV[1] then break end
  if now - tonumber(redis.call('HGET', KEYS[2], lowest) or 0) <= lease_ms then return 0 end
  redis.call('ZREM', KEYS[1], lowest)
  redis.call('HDEL', KEYS[2], lowest)
end
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', lease_ms) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# KEYS: lease. ARGV: owner, lease ms. 1 while still the owner's.
TURN_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: waiting, seen, lease. ARGV: member, channel, chat id. Leaves the line; a held turn is handed on.
TURN_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# KEYS: items (hash update id -> payload), meta (hash: opener, last). ARGV: update id, payload, ttl ms.
# 1 for the opener: the first item's update, also when that update is handled again after a takeover.
ALBUM_ADD = _NOW_MS + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSETNX', KEYS[2], 'opener', ARGV[1])
redis.call('HSET', KEYS[2], 'last', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if redis.call('HGET', KEYS[2], 'opener') == ARGV[1] then return 1 end
return 0
"""

# KEYS: meta. Milliseconds since the last item arrived; -1 when there is no such album.
ALBUM_QUIET = _NOW_MS + """
local last = redis.call('HGET', KEYS[1], 'last')
if not last then return -1 end
return now - tonumber(last)
"""

# KEYS: items, meta. The items (flat field/value list), the album closed: a later item opens a new one.
ALBUM_CLOSE = """
local items = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return items
"""

# KEYS: the chat's bucket (its theoretical arrival time, GCRA), the bot's reserved send times (zset), the bot's pause
# end (times in us). ARGV: chat interval, chat tolerance (how far ahead the arrival time may be), bot gap, longest wait
# (-1: any) (us). Reserves the earliest time the chat's bucket and the pause allow that is a gap away from every other
# reservation, so one chat's spacing never holds back the others (a single "bot next" time would: a chat reserving a
# second ahead would push every chat behind it). Returns how far away it is (us), or -1 (nothing reserved) when that
# is further than the longest wait.
SEND_SLOT = _NOW_US + """
local interval = tonumber(ARGV[1])
local gap = tonumber(ARGV[3])
local due = tonumber(redis.call('GET', KEYS[1]) or 0)
local slot = math.max(now, due - tonumber(ARGV[2]), tonumber(redis.call('GET', KEYS[3]) or 0))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now - gap))
for _, taken in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], string.format('(%.0f', slot - gap), '+inf')) do
  taken = tonumber(taken)
  if taken >= slot + gap then break end
  slot = taken + gap
end
if tonumber(ARGV[4]) >= 0 and slot - now > tonumber(ARGV[4]) then return -1 end
local stamp = string.format('%.0f', slot)
redis.call('ZADD', KEYS[2], stamp, stamp)
local last = tonumber(redis.call('ZRANGE', KEYS[2], -1, -1)[1])
redis.call('PEXPIRE', KEYS[2], math.ceil((last + gap - now) / 1000) + 1000)
if interval > 0 then
  due = math.max(due, slot) + interval
  redis.call('SET', KEYS[1], string.format('%.0f', due), 'PX', math.ceil((due - now) / 1000) + 1000)
end
return slot - now
"""

# KEYS: a next free time (us). ARGV: pause (us). Pushes it to at least now + pause.
PAUSE = _NOW_US + """
local till = now + tonumber(ARGV[1])
if till > tonumber(redis.call('GET', KEYS[1]) or 0) then
  redis.call('SET', KEYS[1], string.format('%.0f', till), 'PX', math.ceil((till - now) / 1000) + 1000)
end
return 0
"""

# KEYS: the user's requests (zset of times, us). ARGV: allowed, window (us), unique suffix.
# -1: admitted and counted; else microseconds until the oldest counted request leaves the window.
RATE_SLOT = _NOW_US + """
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
  return oldest + window - now
end
local stamp = string.format('%.0f', now)
redis.call('ZADD', KEYS[1], stamp, stamp .. ':' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
return -1
"""
