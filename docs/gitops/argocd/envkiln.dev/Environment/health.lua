-- Argo CD health check for envkiln.dev/Environment (Lua 5.1, as Argo CD runs it; `obj` is the object).
--   Ready                                   -> Healthy     (message: the image reference workloads run)
--   Pending, Building, no status yet,
--   metadata.generation > observedGeneration -> Progressing (the operator has not caught up)
--   Failed                                  -> Degraded    (message: why, from status.message)
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
if status.phase == "Ready" then
  hs.status = "Healthy"
  if status.imageRef ~= nil then
    hs.message = "Ready: workloads run " .. status.imageRef
  else
    hs.message = "Ready"
  end
  return hs
end
if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = status.message or "Failed"
  return hs
end
hs.status = "Progressing"
if status.message ~= nil then
  hs.message = status.phase .. ": " .. status.message
else
  hs.message = status.phase
end
return hs
