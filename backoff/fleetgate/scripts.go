package fleetgate

import "github.com/redis/go-redis/v9"

// admitScript is one admission's round trip: it stores the fleet pace
// (compare-and-set on its version), stores a pause, and books a GCRA slot
// on the server's clock at the fleet pace, all atomically.
//
// KEYS: tat, pace (a hash), pause, opened. ARGV: pace, estimate, startup
// (0/1), the version the pace derives from, propose (0/1), book (0/1), burst,
// push-back (µs), the pace's TTL (ms, ≤ 0: none). It returns the fleet's
// pace, estimate, startup and version, the pause left (µs), the wait for the
// booked slot (µs, -1: none) and the reopenings.
//
// Times are µs from the server's TIME and are formatted with %.0f: Lua's
// default number format would round them to 14 digits.
var admitScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[9])
local rec = redis.call('HMGET', KEYS[2], 'pace', 'est', 'startup', 'ver')
local ver = tonumber(rec[4])
local base = tonumber(ARGV[4])
if tonumber(ARGV[1]) > 0 and (ver == nil or (ARGV[5] == '1' and base == ver)) then
  ver = math.max(ver or 0, base) + 1
  rec = {ARGV[1], ARGV[2], ARGV[3]}
  redis.call('HSET', KEYS[2], 'pace', ARGV[1], 'est', ARGV[2], 'startup', ARGV[3], 'ver', string.format('%.0f', ver))
end
if ver ~= nil and ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
local pend = tonumber(redis.call('GET', KEYS[3]) or '0')
local pb = tonumber(ARGV[8])
if pb > 0 and now + pb > pend then
  pend = now + pb
  redis.call('SET', KEYS[3], string.format('%.0f', pend), 'PX', math.ceil(pb / 1000) + 1)
end
local paused = 0
if pend > now then
  paused = pend - now
end
local wait = -1
local pace = tonumber(rec[1] or '0') or 0
if paused == 0 and ARGV[6] == '1' and pace > 0 then
  local slot = 1000000 / pace
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then
    tat = now
  end
  wait = tat - (math.max(tonumber(ARGV[7]), 1) - 1) * slot - now
  if wait < 0 then
    wait = 0
  end
  tat = tat + slot
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
local opened = redis.call('GET', KEYS[4]) or '0'
return {rec[1] or '0', rec[2] or '0', rec[3] or '0', string.format('%.0f', ver or 0),
  string.format('%.0f', paused), string.format('%.0f', wait), opened}
`)

// scoutScript takes or releases the scout lease (SET NX PX), and counts a
// reopening.
//
// KEYS: lease, opened. ARGV: the member's id, the lease (ms, ≤ 0: release),
// reopened (0/1), the TTL of the count (ms, ≤ 0: none). It returns granted
// (0/1) and the reopenings.
var scoutScript = redis.NewScript(`
local opened
if ARGV[3] == '1' then
  opened = redis.call('INCR', KEYS[2])
  if tonumber(ARGV[4]) > 0 then
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
  end
else
  opened = tonumber(redis.call('GET', KEYS[2]) or '0')
end
local granted = 0
local lease = tonumber(ARGV[2])
if lease > 0 then
  if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', lease) then
    granted = 1
  end
elseif redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return {granted, opened}
`)

// heartbeatScript renews a member and counts the live ones: a sorted set
// scored by each member's expiry (ms, server clock).
//
// KEYS: members. ARGV: the member's id, its lifetime (ms). It returns the
// live members.
var heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
`)
