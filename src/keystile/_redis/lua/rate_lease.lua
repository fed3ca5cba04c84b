-- "Fast" mode: reserve a few requests under each of one request's rate limits (the key's,
-- its account's), for one process to admit locally. A reservation moves the limit's GCRA
-- next-free time on as if the requests were sent now, so what all processes reserve never
-- exceeds what meter.lua would admit; the process spends them soon (rateleases.py says how
-- soon), or gives them back with its next call. All or none: when one limit has no room, nothing is reserved.
--
-- KEYS[i] a limit's next-free time (µs), all in the account's slot
-- ARGV: spread (>= 1: a reservation takes at most 1/spread of the room left), then for each
-- key: count, period (s), want, given back (reserved earlier and never spent)
-- Returns {'ok', then for each key: reserved, room left after, µs until its burst is back}
-- or {'rate', µs until a request may go, index of the limit that refused}.
-- Common path: TIME, and a GET and a SET for each key.
local spread = math.max(1, tonumber(ARGV[1]) or 1)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local planned, reply = {}, {'ok'}
for i, key in ipairs(KEYS) do
  local at = 2 + (i - 1) * 4
  local count, period = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local want, back = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local interval = math.ceil(period * 1000000 / count)
  local burst = interval * count
  local free = tonumber(redis.call('GET', key) or '0') - back * interval
  local start = math.max(free, now)
  local room = math.floor((burst - (start - now)) / interval)
  if room < 1 then return {'rate', start + interval - now - burst, i} end
  local take = math.max(1, math.min(want, math.floor(room / spread)))
  local after = start + take * interval
  planned[i] = {key, after}
  for _, v in ipairs({take, room - take, after - now}) do reply[#reply + 1] = v end
end
for _, p in ipairs(planned) do
  redis.call('SET', p[1], string.format('%.0f', p[2]), 'PX', math.ceil((p[2] - now) / 1000))
end
return reply
