#!/usr/bin/env bash
# previous-release.sh [COMMIT]: "the previous release" of the upgrade test, built from an
# earlier commit of this repository (default: PREVIOUS_RELEASE below): its binary and its chart,
# exactly as that commit has them. Prints the directory holding bin/cubbyhole and chart/.
# Built once per commit (a few minutes: its own target directory, so this checkout's build is
# never touched), then reused.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The last commit before namespace-scoped installs, the uninstall hook and the CRD check.
PREVIOUS_RELEASE=689ad58
COMMIT="$(git -C "$ROOT" rev-parse --short=12 "${1:-$PREVIOUS_RELEASE}^{commit}")"
BASE="$ROOT/target/previous-release"
OUT="$BASE/$COMMIT"
mkdir -p "$BASE"
exec 9>"$BASE/lock"
flock 9
if [[ ! -x "$OUT/bin/cubbyhole" || ! -f "$OUT/chart/Chart.yaml" ]]; then
  rm -rf "$OUT" "$OUT.src"
  mkdir -p "$OUT.src" "$OUT/bin"
  git -C "$ROOT" archive "$COMMIT" | tar -x -C "$OUT.src"
  (cd "$OUT.src" && CARGO_TARGET_DIR="$BASE/target" CUBBYHOLE_COMMIT="$COMMIT" \
    cargo build --locked -q --bin cubbyhole) >&2
  cp "$BASE/target/debug/cubbyhole" "$OUT/bin/cubbyhole"
  cp -r "$OUT.src/charts/cubbyhole" "$OUT/chart"
  rm -rf "$OUT.src"
fi
echo "$OUT"
