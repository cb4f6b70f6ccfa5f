-- Deletes one credential record and announces it.
--
-- KEYS[1]  the record
-- ARGV[1]  the event channel
-- ARGV[2]  the credential id
--
-- Returns 1 when a record was deleted, 0 when there was none.
if redis.call("DEL", KEYS[1]) == 1 then
  redis.call("PUBLISH", ARGV[1], "d 0 " .. ARGV[2])
  return 1
end
return 0
