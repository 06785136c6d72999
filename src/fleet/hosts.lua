-- The hosts seen in the last window and their requests in the organization's log, for
-- `oncall-agent fleet`. Hosts not seen for a window are forgotten here.
--
-- KEYS[1] hash host -> last seen (ms); KEYS[2] the organization's log (see turn.lua).
-- ARGV[1] the window (ms).
-- Returns { now, { host, ms since seen, requests counted in the last window }... }

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])

local sends = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. (now - window), '+inf')) do
  local h = string.match(m, '^([^:]*)')
  sends[h] = (sends[h] or 0) + 1
end

local out = {}
local seen = redis.call('HGETALL', KEYS[1])
for i = 1, #seen, 2 do
  local h, at = seen[i], tonumber(seen[i + 1])
  if at > now - window then
    out[#out + 1] = { h, now - at, sends[h] or 0 }
  else
    redis.call('HDEL', KEYS[1], h)
  end
end
return { now, out }
