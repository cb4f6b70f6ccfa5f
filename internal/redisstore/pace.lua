-- Takes a turn at an identity provider's token host for a Pacer, fleet-wide:
-- none while the host is held off (a 429's Retry-After), and at most ARGV[2]
-- calls at once (a sorted set of holders, each with its expiry as score, so
-- the turn of a holder that died frees itself).
--
-- KEYS[1]  the host's hold: the Unix time in ms until which it is held off
-- KEYS[2]  the host's holders (same hash slot as KEYS[1])
-- ARGV[1]  now, Unix ms
-- ARGV[2]  the most holders at once; 0: no limit
-- ARGV[3]  this turn's token
-- ARGV[4]  how long a turn lasts at most, ms
--
-- Returns {1, 0} when the turn is taken, else {0, ms to wait before trying
-- again}.
local now = tonumber(ARGV[1])
local hold = tonumber(redis.call("GET", KEYS[1]) or "0")
if hold > now then
  return {0, hold - now}
end
local max = tonumber(ARGV[2])
if max > 0 then
  redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", now)
  if redis.call("ZCARD", KEYS[2]) >= max then
    return {0, 20}
  end
  redis.call("ZADD", KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
  redis.call("PEXPIRE", KEYS[2], tonumber(ARGV[4]))
end
return {1, 0}
