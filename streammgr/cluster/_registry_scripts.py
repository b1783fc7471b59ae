"""The Lua scripts of the cluster registry and cluster cancel.

Keys (``{ns}`` is the connection's namespace):

- ``{ns}:registry`` (ZSET) instances that published a snapshot, scored by the
  expiry of that snapshot in ms of Redis' clock;
- ``{ns}:registry:<instance>`` (string, ``PX`` the registry TTL) one instance's
  snapshot as compact JSON;
- channels ``{ns}:cancel:<instance>`` (a cancel asked of that instance) and
  ``{ns}:cancel-reply:<instance>`` (the answers to that instance's requests).

Every key written gets an expiry in the same script: a dead instance's snapshot
and its place in the set vanish within the TTL. Pure data: no I/O here.
"""

from __future__ import annotations

__all__ = ["LEAVE", "PUBLISH", "READ", "REFRESH"]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

REFRESH = (
    _NOW
    + """
-- KEYS: registry set, this instance's snapshot key
-- ARGV: ttl_ms, instance_id, snapshot JSON
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return now
"""
)

READ = (
    _NOW
    + """
-- KEYS: registry set; ARGV: ttl_ms, the snapshot keys' prefix ('{ns}:registry:')
-- Returns {now, instance, seen_ms, snapshot, instance, seen_ms, snapshot, ...}
-- for every instance whose snapshot has not expired (seen_ms: Redis' clock).
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local result = {now}
for i = 1, #members, 2 do
  local snapshot = redis.call('GET', ARGV[2] .. members[i])
  if snapshot then
    table.insert(result, members[i])
    table.insert(result, tonumber(members[i + 1]) - ttl)
    table.insert(result, snapshot)
  end
end
return result
"""
)

LEAVE = """
-- KEYS: registry set, this instance's snapshot key; ARGV: instance_id
redis.call('DEL', KEYS[2])
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

PUBLISH = """
-- KEYS: channel; ARGV: message. Returns the subscribers that received it.
return redis.call('PUBLISH', KEYS[1], ARGV[1])
"""
