-- Argo CD health check for envkiln.dev/EnvironmentBuild (Lua 5.1, as Argo CD runs it; `obj` is the object).
--   Succeeded                               -> Healthy     (message: the pushed image reference)
--   Pending, Building, no status yet,
--   metadata.generation > observedGeneration -> Progressing (the operator has not caught up)
--   Failed                                  -> Degraded    (message: why, and the last line of the build log)
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the envkiln operator"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the envkiln operator to observe generation " .. generation
  return hs
end
if status.phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = status.message or "Succeeded"
  return hs
end
if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = status.message or "Failed"
  if status.logTail ~= nil then
    local last = nil
    for line in string.gmatch(status.logTail, "[^\n]+") do
      if string.find(line, "%S") ~= nil then
        last = line
      end
    end
    if last ~= nil then
      hs.message = hs.message .. ": " .. last
    end
  end
  return hs
end
hs.status = "Progressing"
if status.message ~= nil then
  hs.message = status.phase .. ": " .. status.message
else
  hs.message = status.phase
end
return hs
