-- Argo CD health check for batchguard.dev/BatchRun (resource.customizations.health.batchguard.dev_BatchRun).
-- Healthy once every record is done, Degraded when the run failed or stalled, Suspended while
-- spec.suspend holds it, Progressing otherwise (including a spec change not yet observed).
local hs = {status = "Progressing", message = "Waiting for the operator"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end
local conditions = {}
for _, c in ipairs(obj.status.conditions or {}) do
  conditions[c.type] = c
end
local function is_true(type_)
  return conditions[type_] ~= nil and conditions[type_].status == "True"
end
if is_true("Complete") then
  hs.status = "Healthy"
  hs.message = conditions["Complete"].message
elseif is_true("Failed") or is_true("Stalled") then
  local c = conditions["Failed"] or conditions["Stalled"]
  hs.status = "Degraded"
  hs.message = c.message
elseif obj.status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "spec.suspend holds new batches"
elseif conditions["Reconciling"] ~= nil then
  hs.message = conditions["Reconciling"].message
end
return hs
