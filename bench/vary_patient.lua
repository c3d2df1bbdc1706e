-- wrk script: the benchmark search with the patient cycling p0 .. p(N-1), one per request, so
-- that no two consecutive requests ask the same question (or hit the same cache entry).
-- Usage: wrk -s vary_patient.lua URL -- '/Observation?patient={patient}&...' N
local requests = {}
local index = 0

function init(args)
  local path, patients = args[1], tonumber(args[2])
  for i = 0, patients - 1 do
    requests[#requests + 1] = wrk.format("GET", (path:gsub("{patient}", "p" .. i)))
  end
end

function request()
  index = index % #requests + 1
  return requests[index]
end
