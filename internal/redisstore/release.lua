-- Releases a credential's lock if the caller still holds it, and announces
-- the release either way, so that waiters on every broker try again.
--
-- KEYS[1]  the credential's redislock key
-- ARGV[1]  the holder's lock value (redislock token and metadata)
-- ARGV[2]  the event channel
-- ARGV[3]  the event payload
--
-- Returns 1 when the lock was released, 0 when it was not held with ARGV[1].
-- The PUBLISH runs on the master of the lock's slot, like the rest of the
-- script: a Redis Cluster forwards it to every node, and the release does
-- not depend on any other master.
local held = redis.call("GET", KEYS[1]) == ARGV[1]
if held then
  redis.call("DEL", KEYS[1])
end
redis.call("PUBLISH", ARGV[2], ARGV[3])
if held then
  return 1
end
return 0
