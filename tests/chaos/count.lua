-- wrk script for the chaos test: counts every response that is not 2xx
-- (wrk's own "Non-2xx or 3xx" line leaves 3xx out), which backend answered
-- (x-backend header), and prints one line
--   WRK_RESULT {"requests":N,"non2xx":N,"errors":{...},"latency_us":{...},"backends":{...}}
-- when wrk ends (its duration ran out or it got SIGINT).

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  statuses = {}
  backends = {}
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    local s = tostring(status)
    statuses[s] = (statuses[s] or 0) + 1
  end
  local b = headers["x-backend"] or "(none)"
  backends[b] = (backends[b] or 0) + 1
end

local function json_map(t)
  local parts = {}
  for k, v in pairs(t) do
    table.insert(parts, string.format("%q:%d", k, v))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local n = 0
  local st, bk = {}, {}
  for _, t in ipairs(threads) do
    n = n + t:get("non2xx")
    for k, v in pairs(t:get("statuses")) do st[k] = (st[k] or 0) + v end
    for k, v in pairs(t:get("backends")) do bk[k] = (bk[k] or 0) + v end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"non2xx":%d,"statuses":%s,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d},"backends":%s}\n',
    summary.requests, summary.duration, n, json_map(st),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, json_map(bk)))
end
