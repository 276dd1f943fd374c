-- wrk script for bench/http.py: GET /quote/SYM000 ... SYM<n-1>, picked with Zipf popularity.
--   wrk -s zipf.lua URL -- <symbols> <exponent>
-- Prints one line "HTTPBENCH {json}" at the end with wrk's own counts and latency percentiles (µs).

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local cdf, paths, n = {}, {}, 0

function init(args)
  n = tonumber(args[1]) or 200
  local s = tonumber(args[2]) or 1.0
  local total = 0
  for i = 1, n do
    total = total + 1 / i ^ s
    cdf[i] = total
  end
  for i = 1, n do
    cdf[i] = cdf[i] / total
    paths[i] = wrk.format("GET", string.format("/quote/SYM%03d", i - 1))
  end
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
end

function request()
  local u = math.random()
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return paths[lo]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'HTTPBENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p75_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
