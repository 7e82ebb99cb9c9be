-- Open the shared breaker of one origin for ARGV[1] milliseconds, unless it is already open for
-- longer. Atomic: concurrent openers from many processes keep the latest end. Returns the PTTL.
local ttl = redis.call('PTTL', KEYS[1])
local want = tonumber(ARGV[1])
if ttl < want then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', want)
  return want
end
return ttl
