-- wrk script: every request carries the next cookie from a file of `name=value` lines, so a run
-- rotates over many sessions. Written for `loadtest --serve DIR`, which writes such files.
--
--   wrk -t1 -c64 -d10s -s benches/wrk/rotate.lua http://127.0.0.1:PORT/views -- DIR/cookies-tessera.txt
--
-- Each wrk thread starts at its own offset in the file.

local cookies = {}
local next_index = 1

function init(args)
  local path = args[1]
  if path == nil then
    error("usage: wrk ... -s rotate.lua URL -- COOKIE_FILE")
  end
  for line in io.lines(path) do
    if #line > 0 then
      cookies[#cookies + 1] = line
    end
  end
  if #cookies == 0 then
    error(path .. " holds no cookies")
  end
  next_index = (id or 0) * 7919 % #cookies + 1
end

function setup(thread)
  thread:set("id", setup_count or 0)
  setup_count = (setup_count or 0) + 1
end

function request()
  local cookie = cookies[next_index]
  next_index = next_index % #cookies + 1
  return wrk.format(nil, nil, { Cookie = cookie })
end
