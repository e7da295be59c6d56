-- wrk script: replay pre-built HTTP requests (unique gzip envelopes, each with its station's
-- token) at the times planned for them, count what the collector acknowledged.
--
--   wrk -t T -c C -d D --timeout 60s -s replay.lua URL -- DIR
--
-- DIR/thread-N.bin (N = 1..T) holds thread N's requests in the order of their planned send
-- times, each as a 24-byte header "%010d%014d" (byte length, planned send time in epoch ms)
-- then the raw request (request line, headers, body). benchmarks/wrkload.py writes them.
--
-- Pacing (Debian's wrk 4.1 has no constant-rate mode): wrk calls delay() before every
-- request on a connection; delay() takes the thread's next request and returns the time left
-- until its planned send time, so each request leaves at its planned time (on a 20 ms grid,
-- see delay()) when a connection is free. When every connection is still waiting for an
-- answer, requests leave late: how late is recorded ("late" below; wrk's own latency is
-- measured from the send).
-- When a thread has sent and seen answered everything it writes DIR/thread-N.done.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } sinyal_timespec;
int clock_gettime(int clk_id, sinyal_timespec *tp);
]]
local ts = ffi.new("sinyal_timespec")
local function now_ms()
    ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME: planned times are wall-clock times
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local GRID_MS = 20
local LATE_BUCKET_MS, LATE_BUCKETS = 10, 12000 -- 10 ms buckets up to 120 s, then overflow
local threads = {}
local counter = 0

function setup(thread)
    counter = counter + 1
    thread:set("id", counter)
    table.insert(threads, thread)
end

local file, dir
local queue, qhead, qtail = {}, 1, 0
local exhausted = false
sent, answered, ok, other, accepted, rejected, late_max = 0, 0, 0, 0, 0, 0, 0
late = {}
-- never sent: wrk calls request() once at start-up to check the script's request
local PROBE = "GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n"

function init(args)
    dir = args[1]
    file = assert(io.open(dir .. "/thread-" .. id .. ".bin", "rb"))
    for i = 0, LATE_BUCKETS do late[i] = 0 end
end

function delay()
    if exhausted then return 86400000 end
    local head = file:read(24)
    if head == nil or #head < 24 then
        exhausted = true
        return 86400000
    end
    local body = file:read(tonumber(head:sub(1, 10)))
    local at = tonumber(head:sub(11, 24))
    qtail = qtail + 1
    queue[qtail] = { body, at }
    -- Deadlines on a GRID_MS grid: wrk's event loop (ae) spins in the last millisecond
    -- before a timer, once per distinct deadline, so timers that share a deadline cost one
    -- spin between them (requests leave up to GRID_MS late; measured in `late`).
    local now = now_ms()
    if at <= now then return 0 end
    return math.ceil(at / GRID_MS) * GRID_MS - math.floor(now)
end

function request()
    if qhead > qtail then return PROBE end
    local item = queue[qhead]
    queue[qhead] = nil
    qhead = qhead + 1
    local lag = now_ms() - item[2]
    if lag < 0 then lag = 0 end
    if lag > late_max then late_max = lag end
    local b = math.floor(lag / LATE_BUCKET_MS)
    if b > LATE_BUCKETS then b = LATE_BUCKETS end
    late[b] = late[b] + 1
    sent = sent + 1
    return item[1]
end

function response(status, headers, body)
    answered = answered + 1
    if status == 200 then
        ok = ok + 1
        -- {"accepted":["<32 hex>",...],"rejected":[...]}: count the accepted ids
        local a = body:match('"accepted":%[(.-)%]')
        if a then
            local _, n = a:gsub('"', "")
            accepted = accepted + n / 2
        end
        if not body:find('"rejected":%[%]') then rejected = rejected + 1 end
    else
        other = other + 1
    end
    if exhausted and qhead > qtail and answered >= sent then
        local f = io.open(dir .. "/thread-" .. id .. ".done", "w")
        if f then f:write("done\n"); f:close() end
    end
end

local function late_pct(hist, total, q)
    local want, acc = total * q / 100, 0
    for i = 0, LATE_BUCKETS do
        acc = acc + (hist[i] or 0)
        if acc >= want and acc > 0 then return (i + 1) * LATE_BUCKET_MS end
    end
    return 0
end

function done(summary, latency, requests)
    local t = { sent = 0, answered = 0, ok = 0, other = 0, accepted = 0, rejected = 0,
                late_max_ms = 0 }
    local hist = {}
    for i = 0, LATE_BUCKETS do hist[i] = 0 end
    for _, thread in ipairs(threads) do
        for _, k in ipairs({ "sent", "answered", "ok", "other", "accepted", "rejected" }) do
            t[k] = t[k] + thread:get(k)
        end
        t.late_max_ms = math.max(t.late_max_ms, thread:get("late_max"))
        local h = thread:get("late")
        for i = 0, LATE_BUCKETS do hist[i] = hist[i] + (h[i] or 0) end
    end
    local e = summary.errors
    io.write(string.format(
        'SINYAL-WRK {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,' ..
        '"write":%d,"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,' ..
        '"p999":%d,"max":%d,"mean":%.1f},"sent":%d,"answered":%d,"ok":%d,"other":%d,' ..
        '"accepted":%d,"rejected_envelopes":%d,"late_ms":{"p50":%d,"p99":%d,"max":%.1f}}\n',
        summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max, latency.mean, t.sent, t.answered, t.ok, t.other,
        t.accepted, t.rejected, late_pct(hist, t.sent, 50), late_pct(hist, t.sent, 99),
        t.late_max_ms))
end
