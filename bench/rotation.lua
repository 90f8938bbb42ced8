-- wrk script for the credential rotation test: every request presents the secret
-- currently in $VX11_TOKEN_FILE (re-read each time: clients "move" when it changes)
-- and counts answers that are not 2xx, by the secret's label (first line of the file
-- is "label secret"). One connection per thread, so each answer is the thread's last
-- request's.
local file = os.getenv("VX11_TOKEN_FILE")
local label, secret = "none", ""
local threads = {}
bad = {}
total = 0

local function current()
  local f = io.open(file, "r")
  if f then
    local line = f:read("*l")
    f:close()
    if line then
      local l, s = line:match("^(%S+) (%S+)$")
      if l then label, secret = l, s end
    end
  end
end

function setup(thread)
  table.insert(threads, thread)
end

function request()
  current()
  return wrk.format("POST", "/vx11/route",
    {["X-VX11-Token"] = secret, ["Content-Type"] = "application/json"},
    '{"query": "2+2"}')
end

function response(status, headers, body)
  total = total + 1
  if status < 200 or status > 299 then
    local key = label .. ":" .. status
    bad[key] = (bad[key] or 0) + 1
  end
end

function done(summary, latency, requests)
  local out, n = {}, 0
  for _, t in ipairs(threads) do
    n = n + t:get("total")
    for k, v in pairs(t:get("bad")) do out[k] = (out[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(out) do table.insert(parts, string.format('"%s": %d', k, v)) end
  io.write(string.format('ROTATION {"answers": %d, "socket_errors": %d, "bad": {%s}}\n',
    n, summary.errors.connect + summary.errors.read + summary.errors.write
       + summary.errors.timeout, table.concat(parts, ", ")))
end
