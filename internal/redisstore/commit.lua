-- Fenced write of one credential record: the writer must still hold the
-- credential's lock, and the stored generation must be the one it read.
--
-- KEYS[1]  the record, a hash with fields gen, data, lease, pending_id,
--          pending and settled (a Commit clears a pending refresh)
-- KEYS[2]  the credential's redislock key (same hash slot as KEYS[1])
-- ARGV[1]  the writer's lock value (redislock token and metadata)
-- ARGV[2]  the generation the writer read ("0": the record does not exist)
-- ARGV[3]  the generation to store, ARGV[2] + 1
-- ARGV[4]  the encoded record
-- ARGV[5]  the event channel
-- ARGV[6]  the credential id
--
-- Returns 1 when written, -1 when the lock is not held with ARGV[1], -2 when
-- the stored generation is another. A repeat of a write that was applied
-- (same lock value, same generations) returns 1 again without changing the
-- record, so a writer may retry a Commit whose reply it never saw, or whose
-- replicas did not acknowledge it. The repeat rewrites the lease field with
-- the value it has: a write that is replicated like any other, so that a
-- WAIT after the script, on whatever connection, waits for the replicas to
-- have everything up to the original write, too. (WAIT waits for the
-- connection's last write; Redis 7.0 counts any command as one, newer
-- servers only those that propagated something.)
if redis.call("GET", KEYS[2]) ~= ARGV[1] then
  return -1
end
local gen = redis.call("HGET", KEYS[1], "gen")
if not gen then
  gen = "0"
end
if gen ~= ARGV[2] then
  if gen == ARGV[3] and redis.call("HGET", KEYS[1], "lease") == ARGV[1] then
    redis.call("HSET", KEYS[1], "lease", ARGV[1])
    return 1
  end
  return -2
end
redis.call("HSET", KEYS[1], "gen", ARGV[3], "data", ARGV[4], "lease", ARGV[1])
redis.call("HDEL", KEYS[1], "pending_id", "pending", "settled")
redis.call("PUBLISH", ARGV[5], "c " .. ARGV[3] .. " " .. ARGV[6])
return 1
