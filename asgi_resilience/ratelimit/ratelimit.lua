-- asgi-resilience rate limiter: every check of one request in ONE round trip.
--
-- Mirrors asgi_resilience/ratelimit/_policy.py line by line (integer milliseconds, GCRA in
-- microseconds). Phase 1 decides every check without writing; the request is admitted when every
-- enforced check allows it; phase 2 then commits the checks that allowed it. A rejected request
-- therefore consumes no quota anywhere.
--
-- KEYS[i]  the state key of check i (hash-tagged by the caller: all keys of a call share a slot)
-- ARGV[1]  strategy: fixed-window | sliding-window | moving-window | gcra
-- ARGV[2]  "" to take the time from Redis (TIME), or microseconds (tests with a manual clock)
-- ARGV[3]  "hit", or "refund": give back what a "hit" at time ARGV[2] consumed (Redis Cluster,
--          when another slot rejected the request)
-- ARGV[4 + 4*(i-1) ...] limit, period_ms, cost, enforce (1 or 0) of check i
-- Returns a flat array: allowed (1/0), remaining, reset_us, retry_us (-1 when allowed) per check,
-- then 1 if the checks were committed (0 if not), then the time used, in microseconds.

local strategy = ARGV[1]
local now_us
if ARGV[2] == "" then
  local t = redis.call("TIME")
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now_us = tonumber(ARGV[2])
end
local now_ms = math.floor(now_us / 1000)
local n = #KEYS
local floor = math.floor
local ceil = math.ceil

if ARGV[3] == "refund" then
  for i = 1, n do
    local key = KEYS[i]
    local base = 4 + 4 * (i - 1)
    local limit = tonumber(ARGV[base])
    local period = tonumber(ARGV[base + 1])
    local cost = tonumber(ARGV[base + 2])
    local window = floor(now_ms / period)
    if strategy == "fixed-window" or strategy == "sliding-window" then
      local w = tonumber(redis.call("HGET", key, "w"))
      local field = nil
      if w == window then field = "c" elseif w == window + 1 and strategy == "sliding-window" then field = "p" end
      if field then
        local left = tonumber(redis.call("HINCRBY", key, field, -cost))
        if left < 0 then redis.call("HSET", key, field, 0) end
      end
    elseif strategy == "moving-window" then
      local members = redis.call("ZRANGEBYSCORE", key, now_ms, now_ms, "LIMIT", 0, cost)
      if #members > 0 then redis.call("ZREM", key, unpack(members)) end
    elseif strategy == "gcra" then
      local tat = tonumber(redis.call("GET", key))
      if tat then
        local interval = math.max(1, floor(period * 1000 / limit))
        redis.call("SET", key, string.format("%.0f", tat - cost * interval), "KEEPTTL")
      end
    end
  end
  return {now_us}
end

local results = {}
local commits = {}
local admitted = true

for i = 1, n do
  local key = KEYS[i]
  local base = 4 + 4 * (i - 1)
  local limit = tonumber(ARGV[base])
  local period = tonumber(ARGV[base + 1])
  local cost = tonumber(ARGV[base + 2])
  local enforce = ARGV[base + 3] == "1"
  local allowed, remaining, reset_us, retry_us, commit

  if strategy == "fixed-window" then
    local window = floor(now_ms / period)
    local state = redis.call("HMGET", key, "w", "c")
    local count = 0
    if state[1] and tonumber(state[1]) == window then count = tonumber(state[2]) end
    local reset_ms = (window + 1) * period - now_ms
    reset_us = reset_ms * 1000
    if count + cost <= limit then
      count = count + cost
      allowed, remaining, retry_us = 1, limit - count, -1
      commit = {"HSET", key, "w", window, "c", count, reset_ms}
    else
      allowed, remaining, retry_us = 0, math.max(0, limit - count), reset_ms * 1000
    end

  elseif strategy == "sliding-window" then
    local window = floor(now_ms / period)
    local state = redis.call("HMGET", key, "w", "c", "p")
    local current, previous = 0, 0
    if state[1] then
      local w = tonumber(state[1])
      if w == window then
        current, previous = tonumber(state[2]), tonumber(state[3])
      elseif w == window - 1 then
        previous = tonumber(state[2])
      end
    end
    local elapsed = now_ms - window * period
    local left = period - elapsed
    local used = previous * left + current * period
    reset_us = left * 1000
    if used + cost * period <= limit * period then
      current = current + cost
      allowed, retry_us = 1, -1
      remaining = floor((limit * period - previous * left - current * period) / period)
      commit = {"HSET", key, "w", window, "c", current, "p", previous, left + period}
    else
      allowed = 0
      remaining = math.max(0, floor((limit * period - used) / period))
      local wait
      if cost > limit then
        wait = left + period
      else
        local need = used + cost * period - limit * period
        if previous > 0 and need <= previous * left then
          wait = ceil(need / previous)
        elseif current + cost <= limit then
          wait = left
        else
          wait = left + ceil(period * (current + cost - limit) / current)
        end
      end
      retry_us = wait * 1000
      reset_us = retry_us
    end

  elseif strategy == "moving-window" then
    local start = now_ms - period
    redis.call("ZREMRANGEBYSCORE", key, "-inf", start)
    local count = redis.call("ZCARD", key)
    if count + cost <= limit then
      allowed, remaining, retry_us = 1, limit - count - cost, -1
      local oldest = now_ms
      if count > 0 then oldest = tonumber(redis.call("ZRANGE", key, 0, 0, "WITHSCORES")[2]) end
      reset_us = (oldest + period - now_ms) * 1000
      commit = {"MOVING", key, cost, period}
    else
      allowed, remaining = 0, math.max(0, limit - count)
      local wait
      if cost > limit then
        wait = period
      else
        local idx = count + cost - limit - 1
        wait = tonumber(redis.call("ZRANGE", key, idx, idx, "WITHSCORES")[2]) + period - now_ms
      end
      retry_us = wait * 1000
      reset_us = retry_us
      if count > 0 then
        local oldest = tonumber(redis.call("ZRANGE", key, 0, 0, "WITHSCORES")[2])
        reset_us = (oldest + period - now_ms) * 1000
      end
    end

  elseif strategy == "gcra" then
    local period_us = period * 1000
    local interval = math.max(1, floor(period_us / limit))
    local tat = tonumber(redis.call("GET", key))
    if tat == nil or tat <= now_us then tat = now_us end
    local new_tat = tat + cost * interval
    local allow_at = new_tat - period_us
    if allow_at <= now_us then
      allowed, retry_us = 1, -1
      remaining = floor((period_us - (new_tat - now_us)) / interval)
      reset_us = new_tat - now_us
      commit = {"SET", key, string.format("%.0f", new_tat), "PX", math.max(1, ceil((new_tat - now_us) / 1000))}
    else
      allowed = 0
      remaining = math.max(0, floor((period_us - (tat - now_us)) / interval))
      reset_us = tat - now_us
      if cost <= limit then retry_us = allow_at - now_us else retry_us = period_us end
    end
  else
    return redis.error_reply("unknown strategy " .. tostring(strategy))
  end

  if allowed == 0 and enforce then admitted = false end
  results[#results + 1] = allowed
  results[#results + 1] = remaining
  results[#results + 1] = reset_us
  results[#results + 1] = retry_us
  commits[i] = commit
end

if not admitted then
  -- checks that allowed the request consumed nothing: report the quota as it is
  for i = 1, n do
    if results[4 * i - 3] == 1 then
      results[4 * i - 2] = results[4 * i - 2] + tonumber(ARGV[4 + 4 * (i - 1) + 2])
    end
  end
end

if admitted then
  for i = 1, n do
    local c = commits[i]
    if c then
      if c[1] == "HSET" then
        local ttl = table.remove(c)
        redis.call(unpack(c))
        redis.call("PEXPIRE", c[2], ttl)
      elseif c[1] == "MOVING" then
        local key, cost, period = c[2], c[3], c[4]
        local seq = redis.call("INCRBY", key .. ":seq", cost)
        for j = 1, cost do
          redis.call("ZADD", key, now_ms, string.format("%.0f", seq - cost + j))
        end
        redis.call("PEXPIRE", key, period)
        redis.call("PEXPIRE", key .. ":seq", period)
      else
        redis.call(unpack(c))
      end
    end
  end
end

if admitted then results[#results + 1] = 1 else results[#results + 1] = 0 end
results[#results + 1] = now_us
return results
