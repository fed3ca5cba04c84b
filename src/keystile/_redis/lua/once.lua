-- Prepended to each script that changes a counter (meter, settle, lease, lease_report): the
-- call carries an id unique to it, so a call whose reply was lost (a timeout, a cut link) can
-- be sent again and is answered, not run, a second time.
-- KEYS[#KEYS] the call's marker, in the slot of the other keys.
-- ARGV[1] '1' on a retry (only a retry reads the marker: a first call cannot have run before)
-- ARGV[2] how long the marker, which holds the reply, is kept (s).
local once_marker, once_ttl = KEYS[#KEYS], ARGV[2]
if ARGV[1] == '1' then
  local seen = redis.call('GET', once_marker)
  if seen then return cjson.decode(seen) end
end

-- The reply of a call that changed something, kept for its retry.
local function once(reply)
  redis.call('SET', once_marker, cjson.encode(reply), 'EX', once_ttl)
  return reply
end

-- The limit in force: the cached one, else the one the caller read from the store ('' = it
-- has none yet: nil, and the caller answers 'need_limit').
local function limit_in_force(cached, limit_key, seed_limit, limit_ttl)
  if cached then return cached end
  if seed_limit == '' then return nil end
  redis.call('SET', limit_key, seed_limit, 'EX', limit_ttl)
  return seed_limit
end


-- The thresholds ('8000,10000', in basis points) of a limit, each added to fields as its
-- mark ('th:8000'), to read with the count: an unlimited account has none to announce.
local function threshold_marks(fields, lim, thresholds)
  local marks = {}
  if lim and lim > 0 then
    for t in string.gmatch(thresholds, '[^,]+') do
      marks[#marks + 1] = t
      fields[#fields + 1] = 'th:' .. t
    end
  end
  return marks
end
