"""The Lua scripts of the Redis limiter: every change to a lease is one of them.

Leases live in sorted sets scored by their expiry in milliseconds of Redis' own
clock (``TIME`` inside the script, so instances' clocks never matter). Each script
first drops expired leases (``ZREMRANGEBYSCORE``) and gives every key it writes an
expiry (``PEXPIRE``): a set lives at most one lease period after its last lease,
the epoch marker and the limits a few periods after the last live instance.

Keys (``{ns}`` is the limiter's namespace):

- ``{ns}:leases`` (ZSET) every lease, for ``max_streams``;
- ``{ns}:key:<key>`` (ZSET) the leases of one admission key, for
  ``max_streams_per_key``;
- ``{ns}:epoch`` (string) the epoch marker; missing means Redis lost its data
  (restart, ``FLUSHALL``, failover) or the cluster is new;
- ``{ns}:fence`` (string, one lease period) set when the marker was found missing:
  no admission while it lives, so holders re-add their leases first;
- ``{ns}:instances`` (ZSET) live instances scored by the expiry of their heartbeat;
- ``{ns}:limits`` (HASH) the limits last set on any instance (``max_streams``,
  ``max_streams_per_key``; ``-1`` for none);
- channels ``{ns}:released`` (a lease was released; the message is its key) and
  ``{ns}:limits`` (the limits changed; the message is the instance id).

Pure data: no I/O here, nothing that imports coredis.
"""

from __future__ import annotations

__all__ = [
    "ACQUIRE",
    "HEARTBEAT",
    "JOIN",
    "LEAVE",
    "LIMITS",
    "READ_LIMITS",
    "RELEASE",
    "STATE_FACTOR",
]

STATE_FACTOR = 10
"""The epoch marker, the instances set and the limits live this many lease periods
after the last heartbeat of any instance."""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

JOIN = (
    _NOW
    + """
-- KEYS: epoch, fence, instances, limits
-- ARGV: ttl_ms, instance_id, new_epoch, max_streams, max_per_key (-1: none)
-- The limits are written only when no instance wrote them yet.
local ttl = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('HSET', KEYS[4], 'max_streams', ARGV[4], 'max_streams_per_key', ARGV[5])
end
redis.call('PEXPIRE', KEYS[4], ttl * STATE_FACTOR)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[1], epoch, 'PX', ttl * STATE_FACTOR)
  if redis.call('ZCARD', KEYS[3]) > 0 then
    -- Other instances are alive but the marker is gone: their leases were lost.
    redis.call('SET', KEYS[2], '1', 'PX', ttl)
  end
end
redis.call('ZADD', KEYS[3], now + ttl * STATE_FACTOR, ARGV[2])
redis.call('PEXPIRE', KEYS[3], ttl * STATE_FACTOR)
return {epoch, redis.call('ZCARD', KEYS[3])}
"""
).replace("STATE_FACTOR", str(STATE_FACTOR))

ACQUIRE = (
    _NOW
    + """
-- KEYS: epoch, fence, global set, key set
-- ARGV: ttl_ms, lease_id, max_streams (-1: none), max_per_key (-1: none), new_epoch
-- Returns {1, leases held in all} when admitted; {0, 1} full (max_streams);
-- {0, 2} full (max_streams_per_key); {-1, ms} fenced for ms more.
local ttl = tonumber(ARGV[1])
if not redis.call('GET', KEYS[1]) then
  redis.call('SET', KEYS[1], ARGV[5], 'PX', ttl * STATE_FACTOR)
  redis.call('SET', KEYS[2], '1', 'PX', ttl)
  return {-1, ttl}
end
local fenced = redis.call('PTTL', KEYS[2])
if fenced > 0 then
  return {-1, fenced}
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local held = redis.call('ZCARD', KEYS[3])
local max_streams = tonumber(ARGV[3])
if max_streams >= 0 and held >= max_streams then
  return {0, 1}
end
local max_per_key = tonumber(ARGV[4])
if max_per_key >= 0 and redis.call('ZCARD', KEYS[4]) >= max_per_key then
  return {0, 2}
end
redis.call('ZADD', KEYS[3], now + ttl, ARGV[2])
redis.call('ZADD', KEYS[4], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('PEXPIRE', KEYS[4], ttl)
return {1, held + 1}
"""
).replace("STATE_FACTOR", str(STATE_FACTOR))

RELEASE = """
-- KEYS: global set, released channel, then one key set per lease
-- ARGV: pairs of (lease_id, key), as many as KEYS after the first two
-- Releases leases in one round trip; publishes the key of each that was held.
local removed = 0
for i = 3, #KEYS do
  local lease = ARGV[(i - 3) * 2 + 1]
  if redis.call('ZREM', KEYS[1], lease) > 0 then
    removed = removed + 1
    redis.call('PUBLISH', KEYS[2], ARGV[(i - 3) * 2 + 2])
  end
  redis.call('ZREM', KEYS[i], lease)
end
return removed
"""

HEARTBEAT = (
    _NOW
    + """
-- KEYS: epoch, fence, instances, global set, limits, then one key set per lease
-- ARGV: ttl_ms, instance_id, known_epoch, new_epoch, re_add (1/0), then the lease ids
-- Renews every lease this instance holds. A lease found missing is reported; it is
-- added again when re_add is 1 (after an outage) or when the epoch changed (Redis
-- lost its data: the fence keeps new admissions out while holders re-add).
-- Returns {epoch, instances alive, leases held in all, missing lease ids...}.
local ttl = tonumber(ARGV[1])
local epoch = redis.call('GET', KEYS[1])
local re_add = ARGV[5] == '1'
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[1], epoch, 'PX', ttl * STATE_FACTOR)
  redis.call('SET', KEYS[2], '1', 'PX', ttl)
  re_add = true
else
  redis.call('PEXPIRE', KEYS[1], ttl * STATE_FACTOR)
  if epoch ~= ARGV[3] then
    re_add = true
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + ttl * STATE_FACTOR, ARGV[2])
redis.call('PEXPIRE', KEYS[3], ttl * STATE_FACTOR)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('PEXPIRE', KEYS[5], ttl * STATE_FACTOR)
local result = {epoch, redis.call('ZCARD', KEYS[3]), 0}
local expiry = now + ttl
for i = 6, #ARGV do
  local lease = ARGV[i]
  local key_set = KEYS[i]
  redis.call('ZREMRANGEBYSCORE', key_set, '-inf', now)
  if not redis.call('ZSCORE', KEYS[4], lease) then
    table.insert(result, lease)
    if re_add then
      redis.call('ZADD', KEYS[4], expiry, lease)
      redis.call('ZADD', key_set, expiry, lease)
    end
  else
    redis.call('ZADD', KEYS[4], expiry, lease)
    redis.call('ZADD', key_set, expiry, lease)
  end
  redis.call('PEXPIRE', key_set, ttl)
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('PEXPIRE', KEYS[4], ttl)
end
result[3] = redis.call('ZCARD', KEYS[4])
return result
"""
).replace("STATE_FACTOR", str(STATE_FACTOR))

LEAVE = """
-- KEYS: instances; ARGV: instance_id (an instance that stops cleanly)
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

LIMITS = """
-- KEYS: limits hash, limits channel; ARGV: ttl_ms, instance_id, max_streams, max_per_key
redis.call('HSET', KEYS[1], 'max_streams', ARGV[3], 'max_streams_per_key', ARGV[4])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * STATE_FACTOR)
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
""".replace("STATE_FACTOR", str(STATE_FACTOR))

READ_LIMITS = """
-- KEYS: limits hash. Returns {max_streams, max_per_key} (-1: none; false: never set).
return redis.call('HMGET', KEYS[1], 'max_streams', 'max_streams_per_key')
"""
