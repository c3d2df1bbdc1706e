-- wrk script for bench/webhook_bench.py: form-encoded Withings notifications (withings-api §5.4)
-- with a random user among `users` consecutive ids and a random window, so that they are not all
-- duplicates of one another. Arguments after `--`: first_user users seed.
local first_user, users = 0, 1

function init(args)
  first_user = tonumber(args[1])
  users = tonumber(args[2])
  math.randomseed(tonumber(args[3] or "1"))
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"

-- 2023-11-14T22:13:20Z: windows fall in the month after it.
local epoch = 1700000000

function request()
  local userid = first_user + math.random(0, users - 1)
  local startdate = epoch + math.random(0, 30 * 86400)
  local enddate = startdate + math.random(60, 3600)
  local body = string.format("userid=%d&appli=1&startdate=%d&enddate=%d", userid, startdate, enddate)
  return wrk.format(nil, nil, nil, body)
end
