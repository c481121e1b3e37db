#!/usr/bin/env bash
# Builds cubbyhole-apiserver (apiextensions-apiserver + core/v1 shim) offline from
# Debian sid Go packages, and fetches etcd. Everything lands in the cache dir, never in the repo.
#
#   CUBBYHOLE_CACHE   cache root (default ~/.cache/cubbyhole)
#   CUBBYHOLE_REFRESH=1  re-resolve package versions from sid (apt-get update) even if cached
#
# On success writes $CACHE/controlplane/current.env (APISERVER_BIN=..., ETCD_BIN=...) and
# prints both paths on the last two lines.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${CUBBYHOLE_CACHE:-$HOME/.cache/cubbyhole}/controlplane"
APT="$CACHE/apt"
DEBS="$CACHE/debs"
ROOT="$CACHE/root"          # all .debs unpacked here
LOCK="$CACHE/versions.lock" # resolved "package=version" lines
K8S_VERSION="${K8S_VERSION:-v1.36.0}"

die() { echo "build.sh: ERROR: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

mkdir -p "$CACHE"

src_hash() {
  # Go sources + this script + the package list + the resolved versions.
  ( cd "$HERE" && cat build.sh packages.txt && find cmd -type f -name '*.go' | LC_ALL=C sort | xargs cat
    cat "$LOCK" ) | sha256sum | cut -c1-16
}

write_env() {
  local bin="$1" etcd="$2"
  cat >"$CACHE/current.env.tmp" <<EOF
APISERVER_BIN=$bin
ETCD_BIN=$etcd
EOF
  mv "$CACHE/current.env.tmp" "$CACHE/current.env"
  echo "$bin"
  echo "$etcd"
}

# ---- warm path: nothing to download, nothing to build --------------------------------
if [[ -z "${CUBBYHOLE_REFRESH:-}" && -s "$LOCK" ]]; then
  H="$(src_hash)"
  BIN="$CACHE/bin/$H/cubbyhole-apiserver"
  ETCD="$ROOT/usr/bin/etcd"
  if [[ -x "$BIN" && -x "$ETCD" ]]; then
    write_env "$BIN" "$ETCD"
    exit 0
  fi
fi

# ---- private apt configuration (never touches /etc/apt) ------------------------------
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
mkdir -p "$APT/etc/preferences.d" "$APT/state/lists/partial" "$APT/cache/archives/partial" "$DEBS" "$ROOT"
: >"$APT/state/status"
if [[ -s "$KEYRING" && -z "${CUBBYHOLE_APT_TRUSTED:-}" ]]; then
  echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian sid main" >"$APT/etc/sources.list"
else
  log "WARNING: using trusted=yes for the sid archive (no keyring or CUBBYHOLE_APT_TRUSTED set)"
  echo "deb [trusted=yes] http://deb.debian.org/debian sid main" >"$APT/etc/sources.list"
fi
APTOPTS=(
  -o "Dir::Etc::SourceList=$APT/etc/sources.list"
  -o "Dir::Etc::SourceParts=-"
  -o "Dir::Etc::Preferences=$APT/etc/preferences"
  -o "Dir::Etc::PreferencesParts=$APT/etc/preferences.d"
  -o "Dir::State=$APT/state"
  -o "Dir::State::Lists=$APT/state/lists"
  -o "Dir::State::status=$APT/state/status"
  -o "Dir::Cache=$APT/cache"
  -o "APT::Get::List-Cleanup=0"
  -o "APT::Architecture=amd64"
  -o "APT::Architectures::=amd64"
  -o "APT::Sandbox::User=root"
  -o "Acquire::Languages=none"
)

if [[ -n "${CUBBYHOLE_REFRESH:-}" || ! -s "$LOCK" ]]; then
  log "apt-get update (private config in $APT)"
  apt-get "${APTOPTS[@]}" -q update >&2 || die "apt-get update of Debian sid failed (network? keyring? see above)"

  # Go toolchain: the version golang-go in sid depends on (e.g. golang-1.25-go).
  GOPKG="$(apt-cache "${APTOPTS[@]}" show golang-go 2>/dev/null | sed -n 's/^Depends:.*\(golang-1\.[0-9]*-go\).*/\1/p' | head -1)"
  [[ -n "$GOPKG" ]] || die "cannot find which golang-<ver>-go golang-go depends on in sid"
  GOVER="${GOPKG#golang-}"; GOVER="${GOVER%-go}"
  log "Go toolchain: $GOPKG"

  PKGS=( $(grep -v '^\s*#' "$HERE/packages.txt" | grep -v '^\s*$') "golang-$GOVER-go" "golang-$GOVER-src" etcd-server )
  : >"$LOCK.tmp"
  for p in "${PKGS[@]}"; do
    v="$(apt-cache "${APTOPTS[@]}" policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: *//p')"
    [[ -n "$v" && "$v" != "(none)" ]] || die "package $p is not available in sid any more (sid moves: update packages.txt)"
    echo "$p=$v" >>"$LOCK.tmp"
  done
  echo "GOVER=$GOVER" >>"$LOCK.tmp"
  mv "$LOCK.tmp" "$LOCK"
fi

GOVER="$(sed -n 's/^GOVER=//p' "$LOCK")"

# ---- download + unpack (only what is missing) ----------------------------------------
mapfile -t WANT < <(grep '=' "$LOCK" | grep -v '^GOVER=')
MISSING=()
for pv in "${WANT[@]}"; do
  [[ -e "$DEBS/.unpacked.${pv//[:\/]/_}" ]] || MISSING+=("$pv")
done
if ((${#MISSING[@]})); then
  log "downloading ${#MISSING[@]} packages"
  ( cd "$DEBS" && apt-get "${APTOPTS[@]}" -q download "${MISSING[@]}" >&2 ) \
    || die "apt-get download failed (a pinned version may have left sid: rerun with CUBBYHOLE_REFRESH=1)"
  for pv in "${MISSING[@]}"; do
    p="${pv%%=*}"; v="${pv#*=}"; v="${v#*:}"
    deb="$(ls "$DEBS/${p}_"*"${v//:/%3a}"*_*.deb 2>/dev/null | head -1)"
    [[ -n "$deb" ]] || deb="$(ls "$DEBS/${p}_"*.deb | head -1)"
    [[ -f "$deb" ]] || die "downloaded .deb for $p not found"
    dpkg-deb -x "$deb" "$ROOT" || die "dpkg-deb -x $deb failed"
    touch "$DEBS/.unpacked.${pv//[:\/]/_}"
  done
fi

GOROOT="$ROOT/usr/lib/go-$GOVER"
[[ -x "$GOROOT/bin/go" ]] || die "Go toolchain not found at $GOROOT"
ETCD="$ROOT/usr/bin/etcd"
[[ -x "$ETCD" ]] || die "etcd not found at $ETCD (etcd-server package layout changed?)"

# ---- build ---------------------------------------------------------------------------
H="$(src_hash)"
OUT="$CACHE/bin/$H"
BIN="$OUT/cubbyhole-apiserver"
if [[ ! -x "$BIN" ]]; then
  GP="$CACHE/gopath"
  rm -rf "$GP"; mkdir -p "$GP/src/cubbyhole.dev/controlplane"
  cp -r "$HERE/cmd" "$GP/src/cubbyhole.dev/controlplane/"
  log "building cubbyhole-apiserver (Go $GOVER, GOPATH mode; the first build takes a few minutes)"
  mkdir -p "$OUT" "$CACHE/gocache"
  LDF="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
  LDF+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36"
  LDF+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  if ! env -u GOFLAGS GO111MODULE=off GOTOOLCHAIN=local CGO_ENABLED=0 GOPROXY=off \
      GOROOT="$GOROOT" GOPATH="$GP:$ROOT/usr/share/gocode" GOCACHE="$CACHE/gocache" \
      "$GOROOT/bin/go" build -trimpath -ldflags "$LDF" -o "$BIN.tmp" \
      cubbyhole.dev/controlplane/cmd/cubbyhole-apiserver >&2; then
    die "go build failed (sid packages may have moved: try CUBBYHOLE_REFRESH=1, then fix the Go sources)"
  fi
  mv "$BIN.tmp" "$BIN"
fi

write_env "$BIN" "$ETCD"
