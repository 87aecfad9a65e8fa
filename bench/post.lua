-- wrk script of the benchmarks: posts the same signed JSON body on every
-- request. The body and its signature are computed once by bench/run (the
-- relay checks the signature on every request, which is the cost we want to
-- measure), and the bench route has no dedupe key, so identical bodies are
-- all accepted.
--
-- Environment: BENCH_BODY (file holding the body), BENCH_SIGNATURE (value of
-- X-Signature-256), BENCH_LIMIT (optional: stop each thread after its share
-- of this many answers, for the burst), BENCH_THREADS (wrk's -t).
--
-- done() prints one machine-readable RESULT line that bench/report.py reads.

local body_file = assert(os.getenv("BENCH_BODY"), "BENCH_BODY is not set")
local f = assert(io.open(body_file, "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Signature-256"] = assert(os.getenv("BENCH_SIGNATURE"), "BENCH_SIGNATURE is not set")

local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Counting answers by status needs a response() callback, which makes wrk
-- parse every answer in Lua; only the burst pays for it.
if limit > 0 then
  local share = math.ceil(limit / tonumber(os.getenv("BENCH_THREADS") or "2"))
  answered, accepted, refused, other = 0, 0, 0, 0
  function response(status, headers, body)
    answered = answered + 1
    if status == 202 then
      accepted = accepted + 1
    elseif status == 503 or status == 429 then
      refused = refused + 1
    else
      other = other + 1
    end
    if answered >= share then
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local accepted_, refused_, other_ = 0, 0, 0
  for _, t in ipairs(threads) do
    accepted_ = accepted_ + (t:get("accepted") or 0)
    refused_ = refused_ + (t:get("refused") or 0)
    other_ = other_ + (t:get("other") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d status_errors=%d socket_errors=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d accepted=%d refused=%d other=%d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    accepted_, refused_, other_))
end
