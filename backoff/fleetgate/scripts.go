package fleetgate

import "github.com/redis/go-redis/v9"

// admitScript is one admission's round trip, atomic on the server's clock:
// it stores the fleet pace (compare-and-set on its version; a cut also
// replaces a growth stored just after the version it derives from),
// doubles it during startup (never while paused), stores a pause,
// reckons a held place and books the next one in the fleet's queue. Startup
// doubles the pace once per growth period, and from the gentle pace on
// multiplies it by the gentle factor instead.
//
// The queue (KEYS[1], a hash) is a GCRA counted in places: issued is the
// next place to give out; v0 is a virtual clock's reading at t0, and the
// clock runs at the fleet pace from t0 (the end of a pause, if any), never
// past issued (an idle fleet saves no burst). Place n is due when the clock
// reaches n. In startup the pace grows on a grid (one step per growth
// period from the pace's 'at'; after three periods without a booking, one
// step from now), and while it does, and no pause is on, the clock runs at
// the steps to come: a place is due at the same time whenever it is
// reckoned. A cut replaces a higher pace stored just after the version it
// derives from (a growth step or a probe), or a higher cut derived from the
// same version (another member's cut of the same overshoot: 'from' is the
// version a stored pace derived from).
//
// KEYS: queue, pace (a hash), pause, opened, members (see heartbeatScript).
// ARGV: pace, estimate, startup
// (0/1), the version the pace derives from, propose (0/1), book (0/1), the
// place held (0: none), push-back (µs), the TTL of the pace and the queue
// (ms, ≤ 0: none), the startup's doubling period (µs), the ceiling of the
// pace (95 % of a configured rate), and with the pace: the pace's Ceiling
// (0: none), its age (µs) and the last Retry-After (µs, 0: none), which a
// stored pace keeps when the proposal has none, and reopened (0/1: the
// proposal replaces a pace still in startup and unchanged for two growth
// periods, whatever its version, and never a learned one); then the pace
// from which startup grows gently (0: never) and the gentle factor. It
// returns the fleet's
// pace, estimate, startup and version, the pause left (µs), the place
// booked (0: none) and its wait (µs), the held place's wait (µs, negative
// when overdue; "lost": a place this queue never gave, lost with Redis's
// state), the reopenings, the pace's age (µs), the pace's Ceiling, the
// Ceiling's age (µs), the last Retry-After (µs), and the live members.
//
// Times are µs and formatted with %.0f, paces with %.17g: Lua's default
// number format would round them to 14 digits.
var admitScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(x) return string.format('%.0f', x) end
local rec = redis.call('HMGET', KEYS[2], 'pace', 'est', 'startup', 'ver', 'at', 'cut', 'hi', 'hiat', 'ra', 'from')
local ver = tonumber(rec[4])
local old = tonumber(rec[1] or '0') or 0
local q = redis.call('HMGET', KEYS[1], 'v0', 't0', 'issued')
local issued = tonumber(q[3] or '1')
local v = tonumber(q[1] or '1')
local t0 = tonumber(q[2] or fmt(now))
local want = tonumber(ARGV[1])
local book = ARGV[6] == '1'
local grow, gentle, gby, cap = tonumber(ARGV[10]), tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[11])
local pend = tonumber(redis.call('GET', KEYS[3]) or '0')
local function up(p)
  local by = 2
  if gentle > 0 and p >= gentle then
    by = gby
  end
  if cap > 0 then
    return math.min(p * by, cap)
  end
  return p * by
end
-- The schedule of a pace p set at a: p, and, while ramp, up(p) every grow
-- from a on. seek returns the pace at s and when its step ends.
local function seek(p, a, ramp, s)
  if not ramp then
    return p, math.huge
  end
  local k = math.max(math.floor((s - a) / grow), 0)
  for _ = 1, math.min(k, 64) do
    p = up(p)
  end
  return p, a + (k + 1) * grow
end
-- gained is how many places the clock gains from s to e on the schedule.
local function gained(p, a, ramp, s, e)
  local edge
  local g = 0
  p, edge = seek(p, a, ramp, s)
  for _ = 1, 64 do
    if e <= edge then
      break
    end
    g = g + (edge - s) * p / 1000000
    s, p, edge = edge, up(p), edge + grow
  end
  return g + math.max(e - s, 0) * p / 1000000
end
-- reach is when the clock, from s, has gained n > 0 places on the schedule.
local function reach(p, a, ramp, s, n)
  local edge
  p, edge = seek(p, a, ramp, s)
  for _ = 1, 64 do
    if s + n * 1000000 / p <= edge then
      break
    end
    n = n - (edge - s) * p / 1000000
    s, p, edge = edge, up(p), edge + grow
  end
  return s + n * 1000000 / p
end
-- live: the stored pace grows on schedule (startup, grown within the last
-- three periods, no pause now).
local function live(r)
  return r[3] == '1' and grow > 0 and pend <= now and now - tonumber(r[5] or now) < 3 * grow
end
if old > 0 and now > t0 then
  v = v + gained(old, tonumber(rec[5] or now), live(rec), t0, now)
end
v = math.min(v, issued)
if want > 0 then
  local cut = ver ~= nil and want < old and
    (tonumber(ARGV[4]) == ver - 1 or rec[6] == '1' and ARGV[4] == rec[10])
  local reset = ARGV[15] == '1' and rec[3] == '1' and now - tonumber(rec[5] or now) > 2 * grow
  local cas = ARGV[5] == '1' and ARGV[15] ~= '1' and (tonumber(ARGV[4]) == ver or cut)
  if ver == nil or cas or reset then
    ver = math.max(ver or 0, tonumber(ARGV[4])) + 1
    local isCut = '0'
    if old > 0 and want < old then
      isCut = '1'
    end
    local hi, hiat = rec[7] or '0', rec[8] or fmt(now)
    if tonumber(ARGV[12]) > 0 then
      hi, hiat = ARGV[12], fmt(now - tonumber(ARGV[13]))
    end
    local ra = rec[9] or '0'
    if tonumber(ARGV[14]) > 0 then
      ra = ARGV[14]
    end
    rec = {ARGV[1], ARGV[2], ARGV[3], ver, fmt(now), isCut, hi, hiat, ra, ARGV[4]}
    redis.call('HSET', KEYS[2], 'pace', ARGV[1], 'est', ARGV[2], 'startup', ARGV[3],
      'ver', fmt(ver), 'at', rec[5], 'cut', isCut, 'hi', hi, 'hiat', hiat, 'ra', ra, 'from', ARGV[4])
  end
end
if ver ~= nil and book and rec[3] == '1' and grow > 0 and now - tonumber(rec[5]) >= grow and pend <= now and
    tonumber(ARGV[8]) <= 0 then
  -- The steps due since the last, on the grid of the schedule; after an
  -- idle spell (no place booked for three periods), one step, from now.
  local k, at = math.floor((now - tonumber(rec[5])) / grow), now
  if k < 3 then
    at = tonumber(rec[5]) + k * grow
  else
    k = 1
  end
  local p = tonumber(rec[1])
  for _ = 1, k do
    p = up(p)
  end
  ver = ver + 1
  rec = {string.format('%.17g', p), rec[2], rec[3], ver, fmt(at), '0', rec[7], rec[8], rec[9], rec[10]}
  redis.call('HSET', KEYS[2], 'pace', rec[1], 'ver', fmt(ver), 'at', rec[5], 'cut', '0')
end
local pace = tonumber(rec[1] or '0') or 0
local pb = tonumber(ARGV[8])
if pb > 0 and now + pb > pend then
  pend = now + pb
  redis.call('SET', KEYS[3], fmt(pend), 'PX', math.ceil(pb / 1000) + 1)
end
local start = math.max(now, pend, t0)
local ramp = live(rec) and start == now
local seq, wait, due = 0, 0, '0'
if pace > 0 then
  local at = tonumber(rec[5] or now)
  if book then
    seq = issued
    issued = issued + 1
    wait = start - now
    if seq > v then
      wait = reach(pace, at, ramp, start, seq - v) - now
    end
  end
  local held = tonumber(ARGV[7])
  if held > 0 and held >= issued then
    due = 'lost'
  elseif held > v then
    due = fmt(reach(pace, at, ramp, start, held - v) - now)
  elseif held > 0 then
    due = fmt(start - now + (held - v) * 1000000 / pace)
  end
end
redis.call('HSET', KEYS[1], 'v0', string.format('%.17g', v), 't0', fmt(start), 'issued', fmt(issued))
if tonumber(ARGV[9]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[9])
  if ver ~= nil then
    redis.call('PEXPIRE', KEYS[2], ARGV[9])
  end
end
return {rec[1] or '0', rec[2] or '0', rec[3] or '0', fmt(ver or 0), fmt(math.max(pend - now, 0)),
  fmt(seq), fmt(wait), due, redis.call('GET', KEYS[4]) or '0', fmt(now - tonumber(rec[5] or now)),
  rec[7] or '0', fmt(now - tonumber(rec[8] or now)), rec[9] or '0',
  tostring(redis.call('ZCOUNT', KEYS[5], string.format('(%.0f', math.floor(now / 1000)), '+inf'))}
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
