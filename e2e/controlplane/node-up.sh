#!/usr/bin/env bash
# node-up.sh DIR: give the control plane that up.sh DIR started a node that really runs pods:
# containerd (runc, a CNI bridge), kube-scheduler and a kubelet registered as node
# "cubbyhole-node" with a client certificate of its own (Node authorizer + NodeRestriction).
# The images it runs are built from this machine (node/image.py) and imported, never pulled:
#   127.0.0.1:5000/pause:e2e       the pod sandbox (node/pause)
#   127.0.0.1:5000/busybox:e2e     Debian's busybox-static, for app containers
#   127.0.0.1:5000/cubbyhole:dev   $CUBBYHOLE_BIN with the libraries it links (if set)
# Their registry address is loopback with nothing listening: a pull fails at once, locally.
# Pods reach OpenBao and the operator on 127.0.0.1 with hostNetwork; the bridge only makes the
# runtime's network ready. State in DIR/node, sockets in /run/cubbyhole/<id>, pods in the
# cgroup /cubbyhole/<id>: two nodes of two clusters do not meet. down.sh DIR stops it all.
# Needs root, runc, the CNI plugins and busybox-static (Debian: runc containernetworking-plugins
# busybox-static).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR="$(cd "$1" && pwd)"
CERTS="$DIR/certs"
NODE_DIR="$DIR/node"
NODE_NAME=cubbyhole-node
READY_TIMEOUT="${CUBBYHOLE_READY_TIMEOUT:-90}"

die() { echo "node-up.sh: ERROR: $*" >&2; exit 1; }
alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
free_port() { python3 "$HERE/../free-port.py"; }

[[ -s "$DIR/ports.env" && -s "$DIR/env" ]] || die "no control plane in $DIR: run up.sh $DIR first"
source "$DIR/ports.env"
source "${CUBBYHOLE_CACHE:-$HOME/.cache/cubbyhole}/controlplane/current.env"
[[ -x "${KUBELET_BIN:-}" && -x "$NODE_BIN_DIR/containerd" ]] || die "no kubelet/containerd: run build.sh"
[[ $EUID -eq 0 ]] || die "the kubelet and containerd need root"
RUNC="$(command -v runc || true)"
[[ -n "$RUNC" ]] || die "runc not found (Debian: apt-get install runc)"
CNI_BIN=/usr/lib/cni
[[ -x "$CNI_BIN/bridge" && -x "$CNI_BIN/host-local" ]] || die "CNI plugins not in $CNI_BIN (Debian: apt-get install containernetworking-plugins)"
BUSYBOX="$(command -v busybox || true)"
[[ -n "$BUSYBOX" ]] && ! ldd "$BUSYBOX" >/dev/null 2>&1 || die "a static busybox is needed (Debian: apt-get install busybox-static)"

# One id per cluster directory names everything the node puts outside it.
ID="$(printf %s "$DIR" | sha256sum | cut -c1-10)"
RUN="/run/cubbyhole/$ID"
SOCK="$RUN/containerd.sock"
CGROUP_ROOT="/cubbyhole/$ID"
BRIDGE="cbh${ID:0:8}"
PIDS="$RUN"  # pids live outside DIR, so node/stop.sh finds them even if DIR was deleted
mkdir -p "$NODE_DIR" "$RUN"
printf 'NODE_ID=%s\nNODE_RUN=%s\nCONTAINERD_SOCK=%s\nNODE_CGROUP_ROOT=%s\nNODE_BRIDGE=%s\nNODE_NAME=%s\nNODE_BIN_DIR=%s\n' \
  "$ID" "$RUN" "$SOCK" "$CGROUP_ROOT" "$BRIDGE" "$NODE_NAME" "$NODE_BIN_DIR" >"$RUN/node.env"
cp "$RUN/node.env" "$NODE_DIR/node.env"

api() { # path: GET as admin
  curl -sf --max-time 2 --cacert "$CERTS/ca.crt" --cert "$CERTS/admin.crt" --key "$CERTS/admin.key" \
    "https://127.0.0.1:$API_PORT$1"
}
node_ready() {
  api "/api/v1/nodes/$NODE_NAME" 2>/dev/null | python3 -c '
import json, sys
conds = json.load(sys.stdin).get("status", {}).get("conditions", [])
sys.exit(0 if any(c["type"] == "Ready" and c["status"] == "True" for c in conds) else 1)' 2>/dev/null
}

if alive "$PIDS/kubelet.pid" && alive "$PIDS/containerd.pid" && node_ready; then
  echo "node-up.sh: node $NODE_NAME already Ready"
  exit 0
fi
start=$SECONDS

# ---- identities: the kubelet as system:node:<name>, the scheduler as system:kube-scheduler ----
sign() { # name subject
  [[ -s "$CERTS/$1.crt" ]] && return 0
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$CERTS/$1.key" 2>/dev/null
  openssl req -new -key "$CERTS/$1.key" -subj "$2" -out "$CERTS/$1.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$CERTS/$1.ext"
  openssl x509 -req -in "$CERTS/$1.csr" -CA "$CERTS/ca.crt" -CAkey "$CERTS/ca.key" -CAcreateserial \
    -sha256 -days 3650 -extfile "$CERTS/$1.ext" -out "$CERTS/$1.crt" 2>/dev/null
  rm -f "$CERTS/$1.csr" "$CERTS/$1.ext"
}
sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
sign scheduler "/CN=system:kube-scheduler"
kubeconfig() { # file user cert key
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$CERTS/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$3", client-key: "$4"}
contexts:
- name: local
  context: {cluster: local, user: $2}
current-context: local
KC
  chmod 600 "$1"
}
kubeconfig "$NODE_DIR/kubelet.kubeconfig" "system:node:$NODE_NAME" "$CERTS/kubelet.crt" "$CERTS/kubelet.key"
kubeconfig "$NODE_DIR/scheduler.kubeconfig" system:kube-scheduler "$CERTS/scheduler.crt" "$CERTS/scheduler.key"

# ---- containerd ---------------------------------------------------------------------------
SUBNET="10.$((16#${ID:0:2} % 64 + 128)).$((16#${ID:2:2})).0/24"
mkdir -p "$NODE_DIR/cni"
cat >"$NODE_DIR/cni/10-bridge.conflist" <<CNI
{"cniVersion": "1.0.0", "name": "cubbyhole-$ID", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/ipam", "ranges": [[{"subnet": "$SUBNET"}]]}}]}
CNI
cat >"$NODE_DIR/containerd.toml" <<TOML
version = 3
root = "$NODE_DIR/containerd"
state = "$RUN/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$RUN/containerd.sock.ttrpc"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '127.0.0.1:5000/pause:e2e'
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  netns_mounts_under_state_dir = true
  # Nothing here may lower an oom_score_adj (the sandbox's -998 is refused even to root):
  # clamp containers to containerd's own score, as rootless nodes do.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '$RUNC'
        Root = '$RUN/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['$CNI_BIN']
    conf_dir = '$NODE_DIR/cni'
# NRI listens on one host-wide socket (/var/run/nri/nri.sock): two nodes side by side would
# fight over it, and nothing here uses NRI plugins.
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
TOML
if ! alive "$PIDS/containerd.pid"; then
  PATH="$NODE_BIN_DIR:$PATH" nohup "$NODE_BIN_DIR/containerd" --config "$NODE_DIR/containerd.toml" --log-level warn \
    >"$DIR/containerd.log" 2>&1 </dev/null &
  echo $! >"$PIDS/containerd.pid"
fi
ctr() { "$NODE_BIN_DIR/ctr" --address "$SOCK" --namespace k8s.io "$@"; }
until ctr version >/dev/null 2>&1; do
  alive "$PIDS/containerd.pid" || { tail -20 "$DIR/containerd.log" >&2; die "containerd exited (log: $DIR/containerd.log)"; }
  (( SECONDS - start < READY_TIMEOUT )) || die "containerd not serving after ${READY_TIMEOUT}s"
  sleep 0.1
done

# ---- images ---------------------------------------------------------------------------------
"$HERE/node/load.sh" "$DIR" 127.0.0.1:5000/pause:e2e --entrypoint /pause --user 65535:65535 \
  --file "$NODE_BIN_DIR/pause=/pause"
"$HERE/node/load.sh" "$DIR" 127.0.0.1:5000/busybox:e2e --entrypoint /bin/sh \
  --file "$BUSYBOX=/bin/busybox" --link /bin/sh=busybox --nonroot
if [[ -n "${CUBBYHOLE_BIN:-}" ]]; then
  "$HERE/node/load.sh" "$DIR" 127.0.0.1:5000/cubbyhole:dev --entrypoint /usr/local/bin/cubbyhole \
    --user 65532:65532 --file "$CUBBYHOLE_BIN=/usr/local/bin/cubbyhole" --libs --nonroot
fi

# ---- kube-scheduler -----------------------------------------------------------------------
if ! alive "$PIDS/scheduler.pid"; then
  nohup "$SCHEDULER_BIN" --kubeconfig "$NODE_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$NODE_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$NODE_DIR/scheduler.kubeconfig" \
    --leader-elect=false --secure-port 0 --profiling=false --v 1 \
    >"$DIR/scheduler.log" 2>&1 </dev/null &
  echo $! >"$PIDS/scheduler.pid"
fi

# ---- kubelet --------------------------------------------------------------------------------
# Its own cgroup root in every v1 hierarchy (cpuset needs cpus and mems before it takes tasks).
for h in /sys/fs/cgroup/*/; do
  [[ "$h" == */unified/ ]] && continue
  mkdir -p "$h${CGROUP_ROOT#/}"
  if [[ -f "${h}cpuset.cpus" ]]; then
    d="$h"
    for part in ${CGROUP_ROOT//\// }; do
      d="$d$part/"
      [[ -s "${d}cpuset.cpus" && "$(cat "${d}cpuset.cpus")" != "" ]] || cat "${d%/*/}/cpuset.cpus" >"${d}cpuset.cpus"
      [[ "$(cat "${d}cpuset.mems")" != "" ]] || cat "${d%/*/}/cpuset.mems" >"${d}cpuset.mems"
    done
  fi
done
KUBELET_PORT="$(free_port)"
HEALTHZ_PORT="$(free_port)"
cat >"$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$CERTS/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: "unix://$SOCK"
cgroupDriver: cgroupfs
cgroupRoot: "$CGROUP_ROOT"
failCgroupV1: false
failSwapOn: false
podLogsDir: "$NODE_DIR/pod-logs"
resolvConf: /etc/resolv.conf
serializeImagePulls: false
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
YAML
if ! alive "$PIDS/kubelet.pid"; then
  nohup "$KUBELET_BIN" --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" --root-dir "$NODE_DIR/kubelet" --cert-dir "$NODE_DIR/kubelet-pki" \
    --v "${CUBBYHOLE_KUBELET_V:-1}" >"$DIR/kubelet.log" 2>&1 </dev/null &
  echo $! >"$PIDS/kubelet.pid"
fi

# Watchdog: if DIR goes without down.sh, or the API server dies, take the node down too.
if ! alive "$PIDS/watchdog.pid"; then
  nohup bash -c 'while [[ -d "$0" ]] && kill -0 "$1" 2>/dev/null; do sleep 2; done; exec "$2" "$3" "$0"' \
    "$DIR" "$(cat "$DIR/apiserver.pid")" "$HERE/node/stop.sh" "$RUN" >/dev/null 2>&1 </dev/null &
  echo $! >"$PIDS/watchdog.pid"
fi

until node_ready; do
  for p in containerd scheduler kubelet; do
    alive "$PIDS/$p.pid" || { tail -30 "$DIR/$p.log" >&2; die "$p exited (log: $DIR/$p.log)"; }
  done
  (( SECONDS - start < READY_TIMEOUT )) || { tail -30 "$DIR/kubelet.log" >&2; die "node not Ready after ${READY_TIMEOUT}s"; }
  sleep 0.2
done
echo "node-up.sh: node $NODE_NAME Ready in $((SECONDS - start)) s (containerd at $SOCK)"
