-- wrk script of bench/serving.py: POST JSON bodies read from a file, one body per line, cycling.
--   wrk -t2 -c32 -d30s --latency -s bench/serving.lua http://127.0.0.1:3000/predict -- bodies.jsonl
-- Each thread starts at its own offset, so concurrent requests carry different records. At the end
-- it prints, for the harness, the percentiles wrk's --latency table leaves out (in microseconds)
-- and how many requests were sent, so the requests still in flight when wrk stopped are known.

local counter = 1
local threads = {}
sent = 0

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   local file = args[1]
   if file == nil then
      error("usage: wrk ... -s serving.lua <url> -- <file of JSON bodies, one a line>")
   end
   local headers = { ["Content-Type"] = "application/json" }
   requests = {}
   for line in io.lines(file) do
      if #line > 0 then
         table.insert(requests, wrk.format("POST", nil, headers, line))
      end
   end
   if #requests == 0 then
      error("no bodies in " .. file)
   end
   counter = (id * 7919) % #requests + 1
end

function request()
   local req = requests[counter]
   counter = counter % #requests + 1
   sent = sent + 1
   return req
end

function done(summary, latency, requests)
   for _, p in ipairs({ 50, 95, 99 }) do
      io.write(string.format("percentile_us %d %d\n", p, latency:percentile(p)))
   end
   -- Sent but not answered when wrk stopped: the server may still answer (and log) them.
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + thread:get("sent")
   end
   io.write(string.format("sent %d\n", total))
end
