-- One dispatcher turn of one host against the fleet's shared budgets, atomically, on Redis's
-- clock (TIME), so the hosts' own clocks never enter the log.
--
-- Per scope a sorted set holds every request that may still count at OnCall: member
-- "<host>:<nonce>:<id>", score `until` (ms on Redis's clock): the answer time once settled,
-- before that `granted + bound` (the longest a grant may be held before it is used, plus the
-- request timeout). A request may be granted at `now` only while fewer than N members have
-- `until > now - W`: then ANY interval of length W holds at most N requests counted at OnCall,
-- whatever the phase of OnCall's fixed windows (the local limiter's rule,
-- src/ratelimit/limiter.rs).
--
-- KEYS[1]            hash host -> last seen (ms), for `oncall-agent fleet`
-- KEYS[2j], KEYS[2j+1] scope j's log (zset) and its waiting hosts (hash host -> fresh until ms)
-- ARGV: host, member prefix, first id, bound ms, want ttl ms, fair poll ms, S, then
--       S x (limit, window ms),
--       U, then U ops: kind ("S" settle | "R" release | "C" record), member, ms, m, m scope
--       indices; then G, then G groups: want, demand, m, m scope indices.
--   S: the request was answered; until := now + ms (ms > 0: not answered, may count that long).
--   R: it never reached OnCall; it counts nowhere.
--   C: it was sent while Redis was away; until := now + ms (ms may be negative), whatever the
--      budget says: the log must know what was sent.
-- Returns: { now, { group index per granted id, ids in order from the first id },
--            { per group: ms until a grant may be possible, 0 if all wanted were granted },
--            { per scope: live, waiting hosts, this host's live } }
--
-- Fair share: a host over N / (hosts waiting on the scope) is refused while another waiting
-- host is under it, so a host with a few alerts gets the next freed slots during another's
-- storm; share unused by hosts without work flows to those with work.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local host = ARGV[1]
local prefix = ARGV[2]
local next_id = tonumber(ARGV[3])
local bound = tonumber(ARGV[4])
local want_ttl = tonumber(ARGV[5])
local fair_poll = tonumber(ARGV[6])
local nscopes = tonumber(ARGV[7])
local a = 8

local limit, window, log, want = {}, {}, {}, {}
local max_window = 0
for j = 1, nscopes do
  limit[j] = tonumber(ARGV[a])
  window[j] = tonumber(ARGV[a + 1])
  a = a + 2
  log[j] = KEYS[2 * j]
  want[j] = KEYS[2 * j + 1]
  if window[j] > max_window then max_window = window[j] end
end

local function scope_list()
  local m = tonumber(ARGV[a])
  a = a + 1
  local l = {}
  for i = 1, m do
    l[i] = tonumber(ARGV[a])
    a = a + 1
  end
  return l
end

-- Answers, releases and records first: they can only free or honestly fill the log.
local nops = tonumber(ARGV[a])
a = a + 1
for _ = 1, nops do
  local kind, member, ms = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  for _, j in ipairs(scope_list()) do
    if kind == 'S' then
      redis.call('ZADD', log[j], 'XX', now + ms, member)
    elseif kind == 'R' then
      redis.call('ZREM', log[j], member)
    elseif kind == 'C' and now + ms > now - window[j] then
      redis.call('ZADD', log[j], now + ms, member)
    end
  end
end

local ngroups = tonumber(ARGV[a])
a = a + 1
local gwant, gdemand, gscopes = {}, {}, {}
local demand = {}
for g = 1, ngroups do
  gwant[g] = tonumber(ARGV[a])
  gdemand[g] = math.max(tonumber(ARGV[a + 1]), gwant[g])
  a = a + 2
  gscopes[g] = scope_list()
  for _, j in ipairs(gscopes[g]) do
    demand[j] = (demand[j] or 0) + gdemand[g]
  end
end

local function host_of(member)
  return string.match(member, '^([^:]*)')
end

-- Per scope: prune what can no longer share a window with a request sent now, count the live
-- requests per host, and who is waiting.
local live, mine, share, other_under, waiting = {}, {}, {}, {}, {}
for j = 1, nscopes do
  redis.call('ZREMRANGEBYSCORE', log[j], '-inf', now - window[j])
  local members = redis.call('ZRANGE', log[j], 0, -1)
  local per = {}
  for _, m in ipairs(members) do
    local h = host_of(m)
    per[h] = (per[h] or 0) + 1
  end
  live[j] = #members
  mine[j] = per[host] or 0
  if (demand[j] or 0) > 0 then
    redis.call('HSET', want[j], host, now + want_ttl)
  else
    redis.call('HDEL', want[j], host)
  end
  local w = redis.call('HGETALL', want[j])
  local hosts = {}
  for i = 1, #w, 2 do
    if tonumber(w[i + 1]) > now then
      hosts[#hosts + 1] = w[i]
    else
      redis.call('HDEL', want[j], w[i])
    end
  end
  waiting[j] = #hosts
  if #hosts > 0 then
    redis.call('PEXPIRE', want[j], want_ttl * 2)
  end
  share[j] = limit[j] / math.max(#hosts, 1)
  other_under[j] = false
  for _, h in ipairs(hosts) do
    if h ~= host and (per[h] or 0) < share[j] then other_under[j] = true end
  end
end

local function may(g)
  for _, j in ipairs(gscopes[g]) do
    if live[j] >= limit[j] then return false end
    if mine[j] >= share[j] and other_under[j] then return false end
  end
  return true
end

-- Round-robin over the groups, one slot at a time, each slot in every scope of its group.
local granted, left = {}, {}
for g = 1, ngroups do left[g] = gwant[g] end
local progress = true
while progress do
  progress = false
  for g = 1, ngroups do
    if left[g] > 0 and may(g) then
      local member = prefix .. ':' .. next_id
      next_id = next_id + 1
      for _, j in ipairs(gscopes[g]) do
        redis.call('ZADD', log[j], now + bound, member)
        live[j] = live[j] + 1
        mine[j] = mine[j] + 1
      end
      granted[#granted + 1] = g
      left[g] = left[g] - 1
      progress = true
    end
  end
end

-- When a group still short of grants may try again: the budget's next free moment, or, when
-- only fairness holds it back, a short poll (the hosts under their share may not take it all).
local waits = {}
for g = 1, ngroups do
  local w = 0
  if left[g] > 0 then
    w = 1
    for _, j in ipairs(gscopes[g]) do
      if live[j] >= limit[j] then
        local r = redis.call('ZRANGE', log[j], live[j] - limit[j], live[j] - limit[j], 'WITHSCORES')
        w = math.max(w, tonumber(r[2]) + window[j] - now)
      elseif mine[j] >= share[j] and other_under[j] then
        w = math.max(w, fair_poll)
      end
    end
  end
  waits[g] = w
end

-- Idle scopes vanish: each log lives a window past its latest `until`.
local use = {}
for j = 1, nscopes do
  local top = redis.call('ZRANGE', log[j], -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('PEXPIRE', log[j], math.max(tonumber(top[2]) + window[j] - now, 1))
  end
  use[#use + 1] = live[j]
  use[#use + 1] = waiting[j]
  use[#use + 1] = mine[j]
end

redis.call('HSET', KEYS[1], host, now)
redis.call('PEXPIRE', KEYS[1], max_window * 2)

return { now, granted, waits, use }
