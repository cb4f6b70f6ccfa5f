-- Marks a refresh of one credential as pending, under its lock: the writer
-- must still hold the credential's lock, and the stored generation must be
-- the one it read. The record and its generation do not change.
--
-- KEYS[1]  the record, a hash with fields gen, data, lease, pending_id,
--          pending and settled
-- KEYS[2]  the credential's redislock key (same hash slot as KEYS[1])
-- ARGV[1]  the writer's lock value (redislock token and metadata)
-- ARGV[2]  the generation the writer read
-- ARGV[3]  the marker's id
-- ARGV[4]  the marker, JSON
-- ARGV[5]  the event channel
-- ARGV[6]  the credential id
--
-- Returns 1 when marked (and publishes "p <generation> <id>", the
-- announcement replicas of credentials whose IdP revokes the previous access
-- token act on), -1 when the lock is not held with ARGV[1], -2 when the
-- stored generation is another (or the record is gone).
if redis.call("GET", KEYS[2]) ~= ARGV[1] then
  return -1
end
if redis.call("HGET", KEYS[1], "gen") ~= ARGV[2] then
  return -2
end
redis.call("HSET", KEYS[1], "pending_id", ARGV[3], "pending", ARGV[4])
redis.call("PUBLISH", ARGV[5], "p " .. ARGV[2] .. " " .. ARGV[6])
return 1
