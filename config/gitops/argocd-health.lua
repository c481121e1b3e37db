-- Argo CD health check for cubbyhole.dev/AgentSecretBinding (see README.md beside this file).
-- Argo CD runs it in gopher-lua (Lua 5.1) with `obj` set to the binding and, unless
-- resource.customizations.useOpenLibs is set, only the base, table and os libraries: no
-- string.* or math.* here. Mapping, first match wins:
--   no status yet, or status.observedGeneration behind metadata.generation -> Progressing
--   Stalled=True     (a person must act: invalid spec, role not allowed...)  -> Degraded
--   Reconciling=True (Vault unavailable, retried by the operator)            -> Progressing
--   Degraded=True    (wraps tampered with or expired unconsumed)            -> Degraded
--   Ready=True                                                               -> Healthy
--   anything else                                                            -> Progressing
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function isTrue(c)
  return c ~= nil and c.status == "True"
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local generation = obj.metadata.generation
local observed = nil
if obj.status ~= nil then
  observed = obj.status.observedGeneration
end
if observed == nil or (generation ~= nil and observed < generation) then
  hs.status = "Progressing"
  if observed == nil then
    hs.message = "waiting for the operator: no status yet"
  else
    hs.message = "waiting for the operator: generation " .. tostring(generation) ..
      " not observed yet (status describes " .. tostring(observed) .. ")"
  end
  return hs
end

local ready = condition("Ready")
local stalled = condition("Stalled")
if isTrue(stalled) then
  local reason = stalled.reason
  if ready ~= nil and ready.reason ~= nil and ready.reason ~= "" then
    reason = ready.reason
  end
  hs.status = "Degraded"
  hs.message = tostring(reason) .. ": " .. text(ready, text(stalled, "stalled"))
  return hs
end

local reconciling = condition("Reconciling")
if isTrue(reconciling) then
  hs.status = "Progressing"
  hs.message = text(reconciling, "the operator is retrying")
  return hs
end

-- A security event: wraps consumed by someone other than the pods' agents, or left to expire.
local degraded = condition("Degraded")
if isTrue(degraded) then
  hs.status = "Degraded"
  hs.message = tostring(degraded.reason) .. ": " .. text(degraded, "degraded")
  return hs
end

if isTrue(ready) then
  hs.status = "Healthy"
  hs.message = text(ready, "ready")
  return hs
end

hs.status = "Progressing"
hs.message = text(ready, "waiting for the Ready condition")
return hs
