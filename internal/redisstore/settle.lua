-- Fenced write of the outcome of a pending refresh: the stored generation
-- must be the one the refresh read, and the refresh must still be the
-- record's pending one. The lock is not checked: a holder that lost its
-- lock in a Redis outage, or a replica restarted from its journal, may
-- still store the outcome, and nobody else writes while the marker stands
-- (Commit, which clears it, is for operators).
--
-- KEYS[1]  the record, a hash with fields gen, data, lease, pending_id,
--          pending and settled
-- ARGV[1]  the marker's id
-- ARGV[2]  the generation the refresh read
-- ARGV[3]  the generation to store, ARGV[2] + 1
-- ARGV[4]  the encoded record
-- ARGV[5]  the event channel
-- ARGV[6]  the credential id
--
-- Returns 1 when written, -2 when the record moved on. A repeat of a write
-- that was applied (same marker, same generations) returns 1 again without
-- writing, so a writer may retry a Settle whose reply it never saw.
local gen = redis.call("HGET", KEYS[1], "gen")
if not gen then
  return -2
end
if gen == ARGV[3] and redis.call("HGET", KEYS[1], "settled") == ARGV[1] then
  -- Written again, unchanged, so that a WAIT after the repeat covers it.
  redis.call("HSET", KEYS[1], "settled", ARGV[1])
  return 1
end
if gen ~= ARGV[2] or redis.call("HGET", KEYS[1], "pending_id") ~= ARGV[1] then
  return -2
end
redis.call("HSET", KEYS[1], "gen", ARGV[3], "data", ARGV[4], "settled", ARGV[1])
redis.call("HDEL", KEYS[1], "pending_id", "pending", "lease")
redis.call("PUBLISH", ARGV[5], "c " .. ARGV[3] .. " " .. ARGV[6])
return 1
