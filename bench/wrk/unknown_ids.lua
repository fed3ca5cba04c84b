-- wrk: every request carries a new, well-formed token (valid CRC32 checksum) whose key id
-- exists nowhere: the flood of unknown ids that keystile must refuse cheaply.
-- KS_WRK_PRINT=N prints N sample tokens at start (bench/http.py checks them with keystile).
local ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
local CRC = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if bit.band(c, 1) == 1 then c = bit.bxor(0xEDB88320, bit.rshift(c, 1)) else c = bit.rshift(c, 1) end
  end
  CRC[i] = c
end

local function crc32(text)
  local c = 0xFFFFFFFF
  for i = 1, #text do
    c = bit.bxor(CRC[bit.band(bit.bxor(c, text:byte(i)), 0xFF)], bit.rshift(c, 8))
  end
  c = bit.bxor(c, 0xFFFFFFFF)
  if c < 0 then c = c + 4294967296 end
  return c
end

local function base62(number, width)
  local digits = {}
  for i = width, 1, -1 do
    local d = number % 62
    digits[i] = ALPHABET:sub(d + 1, d + 1)
    number = (number - d) / 62
  end
  return table.concat(digits)
end

local function random_text(length)
  local chars = {}
  for i = 1, length do
    local d = math.random(0, 61)
    chars[i] = ALPHABET:sub(d + 1, d + 1)
  end
  return table.concat(chars)
end

local function token()
  local kid, secret = random_text(16), random_text(43)
  return "sk_live_" .. kid .. "_" .. secret .. base62(crc32(kid .. secret), 6)
end

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  local samples = tonumber(os.getenv("KS_WRK_PRINT") or "0")
  for _ = 1, samples do print("token " .. token()) end
end

function request()
  return wrk.format("GET", "/", {["Authorization"] = "Bearer " .. token()})
end
