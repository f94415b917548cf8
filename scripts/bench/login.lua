-- login.lua: wrk script for scripts/bench.sh. Every request is a login,
-- POST /session/login {"username":"bench"} (k_proxy runs --gate soft), and every answer
-- must be 200; done() prints "LOGINS ok=N failed=M".
--
-- WRK_LOGINS=N and WRK_THREADS=T (wrk's -t) make each thread stop after its share of N
-- logins and then create the file $WRK_DONE_DIR/done.<thread>, so that bench.sh can end
-- wrk (SIGINT) as soon as all T files exist instead of waiting out -d, which still bounds
-- the run.
local total = tonumber(os.getenv("WRK_LOGINS") or "0")
local threads_n = tonumber(os.getenv("WRK_THREADS") or "1")
local done_dir = os.getenv("WRK_DONE_DIR")
local threads = {}

-- Globals, so that done() can read them from each thread with thread:get().
quota, count, bad, id = 0, 0, 0, 0

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

function init(args)
   if total > 0 then
      quota = math.ceil(total / threads_n)
   end
   wrk.method = "POST"
   wrk.body = '{"username":"bench"}'
   wrk.headers["Content-Type"] = "application/json"
end

function response(status, headers, body)
   if status == 200 then
      count = count + 1
   else
      bad = bad + 1
   end
   if quota > 0 and count >= quota then
      if done_dir then
         local marker = io.open(done_dir .. "/done." .. id, "w")
         if marker then marker:close() end
      end
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local ok, failed = 0, 0
   for _, thread in ipairs(threads) do
      ok = ok + thread:get("count")
      failed = failed + thread:get("bad")
   end
   io.write(string.format("LOGINS ok=%d failed=%d\n", ok, failed))
end
