#!/usr/bin/env bash
# down.sh DIR: stop the node (if node-up.sh started one), the controller-manager, the API
# server, then etcd. Keeps data, certs and
# logs; safe to run twice. CUBBYHOLE_WIPE=1 also deletes DIR's etcd data and kubeconfig.
set -uo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR="$1"
[[ -d "$DIR" ]] || exit 0

stop() { # pidfile name
  local f="$DIR/$1.pid" pid
  [[ -s "$f" ]] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -CONT "$pid" 2>/dev/null
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "down.sh: $1 (pid $pid) did not stop in 10s, killing" >&2
      kill -KILL "$pid" 2>/dev/null
    fi
  fi
  rm -f "$f"
}

if [[ -s "$DIR/node/node.env" ]]; then
  "$(dirname "${BASH_SOURCE[0]}")/node/stop.sh" "$(sed -n 's/^NODE_RUN=//p' "$DIR/node/node.env")" "$DIR" >/dev/null
fi
stop watchdog
stop controller-manager
stop apiserver
stop etcd
if [[ -n "${CUBBYHOLE_WIPE:-}" ]]; then rm -rf "$DIR/etcd" "$DIR/kubeconfig" "$DIR/env" "$DIR/ports.env"; fi
echo "down.sh: stopped ($DIR)"
