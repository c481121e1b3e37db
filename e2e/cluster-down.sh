#!/usr/bin/env bash
# cluster-down.sh [DIR]: stops the operator (if the demo started one), OpenBao and the control
# plane started by cluster-up.sh. Safe to run twice.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/target/e2e}"
[[ -d "$DIR" ]] || exit 0
for p in operator bao; do
  if [[ -s "$DIR/$p.pid" ]]; then kill "$(cat "$DIR/$p.pid")" 2>/dev/null; rm -f "$DIR/$p.pid"; fi
done
"$ROOT/e2e/controlplane/down.sh" "$DIR/cluster" >/dev/null
CUBBYHOLE_WIPE=1 "$ROOT/e2e/controlplane/down.sh" "$DIR/cluster" >/dev/null
rm -f "$DIR/env" "$DIR/root-token" "$DIR/operator-token" "$DIR/operator-jwt" "$DIR/operator.kubeconfig" "$DIR/bao.addr"
echo "cluster-down: stopped"
