#!/usr/bin/env python3
"""Runs an Argo CD health script on one Kubernetes object, as Argo CD would.

Reads the object as JSON on stdin, runs the script (default: config/gitops/argocd-health.lua)
with `obj` set to it, and prints {"status": ..., "message": ...} as one JSON line.

Like Argo CD (util/lua/lua.go, gopher-lua): Lua 5.1 (lupa's lua51 or LuaJIT runtime), the
object converted value by value (JSON arrays become 1-based Lua arrays, null becomes nil), and
only the libraries Argo CD opens for a health script without useOpenLibs: the base library,
table, and os.time/os.date. No string or math library, and strings have no methods. A returned
status that is not one of Argo CD's becomes Unknown, as Argo CD reports it.

Needs `lupa` from PyPI (python3 -m pip install lupa; e2e/ensure-tools.sh installs it).
Used by tests/e2e_gitops.rs on real AgentSecretBinding objects.
"""

import importlib
import json
import os
import sys

VALID = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
DEFAULT_SCRIPT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "config", "gitops", "argocd-health.lua"
)

# Base library functions gopher-lua's OpenBase gives a script (Lua 5.1).
BASE = [
    "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print",
    "rawequal", "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring",
    "type", "unpack", "xpcall", "_VERSION",
]

RUNNER = """
function(source, name, obj, base)
  local env = {}
  for _, name in ipairs(base) do env[name] = _G[name] end
  env.table = {}
  for k, v in pairs(table) do env.table[k] = v end
  env.os = {time = os.time, date = os.date}
  env._G = env
  env.obj = obj
  local chunk, err = loadstring(source, "=" .. name)
  if not chunk then error(err, 0) end
  setfenv(chunk, env)
  local strings = debug.getmetatable("")
  debug.setmetatable("", nil)
  local ok, result = pcall(chunk)
  debug.setmetatable("", strings)
  if not ok then error(result, 0) end
  return result
end
"""


def runtime():
    for name in ("lupa.lua51", "lupa.luajit21", "lupa.luajit20"):
        try:
            return importlib.import_module(name).LuaRuntime(unpack_returned_tuples=False)
        except ImportError:
            continue
    try:
        import lupa  # noqa: F401
    except ImportError:
        sys.exit("argocd_health.py: lupa is not installed: python3 -m pip install lupa")
    sys.exit("argocd_health.py: this lupa has no Lua 5.1 or LuaJIT runtime (Argo CD runs Lua 5.1)")


def to_lua(lua, value):
    """Argo CD's decodeValue: objects to tables, arrays to 1-based arrays, null to nil."""
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            if item is not None:
                table[key] = to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for i, item in enumerate(value):
            table[i + 1] = to_lua(lua, item)
        return table
    return value


def main():
    script = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SCRIPT
    with open(script, encoding="utf-8") as f:
        source = f.read()
    obj = json.load(sys.stdin)
    lua = runtime()
    base = lua.table(*BASE)
    try:
        result = lua.eval(RUNNER)(source, os.path.basename(script), to_lua(lua, obj), base)
    except Exception as e:  # lupa's LuaError, one class per runtime module
        sys.exit(f"argocd_health.py: the script failed: {e}")
    kind = lua.globals().type(result)
    if kind != "table":
        sys.exit(f"argocd_health.py: expect table output from Lua script, not {kind}")
    status, message = result["status"], result["message"]
    if status not in VALID:
        status, message = "Unknown", "Lua returned an invalid health status"
    print(json.dumps({"status": status, "message": message or ""}))


if __name__ == "__main__":
    main()
