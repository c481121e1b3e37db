#!/usr/bin/env bash
# Builds the real kube-apiserver, kube-controller-manager and etcd from their official Go
# modules (the module in k8s/, pinned by its committed go.mod/go.sum; see k8s/gen-gomod.sh),
# and the local node's parts: kubelet and kube-scheduler from the same module, containerd, its
# runc shim, ctr and a pause binary from the module in node/ (runc and the CNI plugins come from
# Debian's packages; node-up.sh checks for them); helm from the module in helm/ (chart tests).
# Everything lands in the cache dir, never in the repo; a warm run only hashes and exits.
#
#   CUBBYHOLE_CACHE   cache root (default ~/.cache/cubbyhole)
#
# On success writes $CACHE/controlplane/current.env (APISERVER_BIN, CONTROLLER_MANAGER_BIN,
# ETCD_BIN, KUBELET_BIN, SCHEDULER_BIN, NODE_BIN_DIR, K8S_VERSION) and prints the paths of the
# built binaries, one per line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MOD="$HERE/k8s"
CACHE="${CUBBYHOLE_CACHE:-$HOME/.cache/cubbyhole}/controlplane"
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

die() { echo "build.sh: ERROR: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

command -v go >/dev/null || die "go not found (Go $(sed -n 's/^go //p' "$MOD/go.mod") or newer is needed)"
K8S_VERSION="$(sed -n 's/^\s*k8s.io\/kubernetes \(v[^ ]*\).*/\1/p' "$MOD/go.mod" | head -1)"
[[ -n "$K8S_VERSION" ]] || die "no k8s.io/kubernetes version in $MOD/go.mod"
GOVERSION="$(go env GOVERSION)"
NODE="$HERE/node"
HELM="$HERE/helm"
KEY="$( (cat "$MOD/go.mod" "$MOD/go.sum" "$MOD/etcd/main.go" "$NODE/go.mod" "$NODE/go.sum" "$NODE/pause/main.go" "$HELM/go.mod" "$HELM/go.sum" "$0"; echo "$GOVERSION") | sha256sum | cut -c1-16)"
OUT="$CACHE/bin/$K8S_VERSION-$GOVERSION-$KEY"
BINS=(kube-apiserver kube-controller-manager etcd kubelet kube-scheduler containerd containerd-shim-runc-v2 ctr pause helm)

# Tests start clusters in parallel and each runs this script: one at a time builds and writes
# current.env (the others wait on the lock, then find the binaries and only rewrite the env).
mkdir -p "$CACHE"
if command -v flock >/dev/null; then exec 9>"$CACHE/build.lock"; flock 9; fi

built() { for b in "${BINS[@]}"; do [[ -x "$OUT/$b" ]] || return 1; done; }
if ! built; then
  log "building Kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kubelet, kube-scheduler), etcd and containerd with $GOVERSION"
  log "first build: module download (~300 MB) and compile take about 15 minutes on 2 cores; cached afterwards in $OUT"
  mkdir -p "$OUT.tmp"
  MINOR="${K8S_VERSION#v1.}"; MINOR="${MINOR%%.*}"
  LDF="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDF+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR"
    LDF+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  start=$SECONDS
  ( cd "$MOD" && env -u GOFLAGS CGO_ENABLED=0 GOFLAGS=-mod=readonly \
      go build -trimpath -ldflags "$LDF" -o "$OUT.tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler ./etcd ) >&2 \
    || die "go build failed (see above)"
  # containerd without the snapshotters that need cgo (overlayfs is all the node uses).
  ( cd "$NODE" && env -u GOFLAGS CGO_ENABLED=0 GOFLAGS=-mod=readonly \
      go build -trimpath -tags "no_btrfs no_devmapper no_zfs urfave_cli_no_docs" -ldflags "-s -w" \
      -o "$OUT.tmp/" github.com/containerd/containerd/v2/cmd/containerd \
      github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
      github.com/containerd/containerd/v2/cmd/ctr ./pause ) >&2 \
    || die "go build of containerd failed (see above)"
  ( cd "$HELM" && env -u GOFLAGS CGO_ENABLED=0 GOFLAGS=-mod=readonly \
      go build -trimpath -ldflags "-s -w" -o "$OUT.tmp/" helm.sh/helm/v3/cmd/helm ) >&2 \
    || die "go build of helm failed (see above)"
  for b in "${BINS[@]}"; do [[ -x "$OUT.tmp/$b" ]] || die "go build produced no $b"; done
  rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
  log "built in $((SECONDS - start)) s"
fi

ENV_TMP="$(mktemp "$CACHE/current.env.XXXXXX")"
cat >"$ENV_TMP" <<ENV
K8S_VERSION=$K8S_VERSION
APISERVER_BIN=$OUT/kube-apiserver
CONTROLLER_MANAGER_BIN=$OUT/kube-controller-manager
ETCD_BIN=$OUT/etcd
KUBELET_BIN=$OUT/kubelet
SCHEDULER_BIN=$OUT/kube-scheduler
NODE_BIN_DIR=$OUT
HELM_BIN=$OUT/helm
ENV
mv -f "$ENV_TMP" "$CACHE/current.env"
for b in "${BINS[@]}"; do echo "$OUT/$b"; done
