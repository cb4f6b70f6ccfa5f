-- Creation of a record that does not exist yet, for Import: no lease is
-- needed, since nobody can have read, let alone refreshed, a record that
-- is not there. An existing record is left as it is.
--
-- KEYS[1]  the record (see commit.lua)
-- ARGV[1]  the encoded record
--
-- Returns 1 when created, 0 when the record existed.
if redis.call("EXISTS", KEYS[1]) == 1 then
  return 0
end
redis.call("HSET", KEYS[1], "gen", "1", "data", ARGV[1])
return 1
