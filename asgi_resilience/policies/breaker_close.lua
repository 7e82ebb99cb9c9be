-- Close the shared breaker of one origin, but only if no process re-opened it after our probe
-- started (its value is then a newer generation stamp than ARGV[1]). Returns 1 when deleted.
local value = redis.call('GET', KEYS[1])
if not value then
  return 0
end
if tonumber(value) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
