#!/usr/bin/env bash
# demo.sh: one command for a newcomer. Starts the local cluster (with a node: kubelet,
# containerd, runc) and OpenBao, runs the operator (with its admission webhook), applies
# config/samples (the binding, a hand-plumbed agent pod and the 3-replica agent Deployment) and
# shows the kubelet running them: each pod's init container unwraps its own wrap from the
# Secret volume, the agent container finds its token, the receipts verify. Prints each stage.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/target/e2e"
STAGES=7
stage() { echo; echo "==> [$1/$STAGES] $2"; }
# Runs "$@" with a heartbeat every 30 s, so a long first build is visibly alive.
with_heartbeat() {
  local what="$1"; shift
  local start=$SECONDS
  ( while sleep 30; do echo "    ... still $what ($((SECONDS - start)) s so far)"; done ) &
  local ticker=$!
  local rc=0
  "$@" || rc=$?
  kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
  echo "    done in $((SECONDS - start)) s"
  return $rc
}

CACHE="${CUBBYHOLE_CACHE:-$HOME/.cache/cubbyhole}"
if [[ ! -s "$CACHE/controlplane/current.env" ]]; then
  echo "First run: building kube-apiserver, kube-controller-manager, kubelet, kube-scheduler,"
  echo "etcd and containerd from their official Go modules, and the cubbyhole binary. That takes"
  echo "about 15 minutes on 2 cores (cached afterwards: later runs start in well under a minute)."
fi
stage 1 "local control plane (real kube-apiserver + kube-controller-manager + etcd) and OpenBao"
with_heartbeat "building/starting the control plane" "$ROOT/e2e/cluster-up.sh" "$DIR" >/dev/null
set -a; source "$DIR/env"; set +a
stage 2 "building cubbyhole (cargo build; a few minutes the first time)"
with_heartbeat "compiling cubbyhole" bash -c "cd '$ROOT' && cargo build -q"
BIN="$ROOT/target/debug/cubbyhole"

stage 3 "a node: containerd + runc + kubelet + kube-scheduler, images built from this checkout"
# The images are imported, never pulled (no registry here); the samples' image names are given
# to the same local images, so config/samples run as shipped.
CUBBYHOLE_BIN="$BIN" "$ROOT/e2e/controlplane/node-up.sh" "$DIR/cluster" 2>/dev/null
load() { "$ROOT/e2e/controlplane/node/load.sh" "$DIR/cluster" "$@" 2>/dev/null; }
load docker.io/library/busybox:1.36 --entrypoint /bin/sh --file "$(command -v busybox)=/bin/busybox" \
  --link /bin/sh=busybox --nonroot
load ghcr.io/cubbyhole-dev/cubbyhole:0.1.0 --entrypoint /usr/local/bin/cubbyhole --user 65532:65532 \
  --file "$BIN=/usr/local/bin/cubbyhole" --libs --nonroot
echo "\$ kubectl get nodes"; kubectl get nodes

# The operator runs as its service account (config/rbac) and logs in to OpenBao with its
# service-account token, checked by OpenBao with a TokenReview against the API server.
cat >"$DIR/operator.yaml" <<CFG
vault:
  address: $VAULT_ADDR
  auth:
    kubernetes:
      role: cubbyhole-operator
      jwtPath: $OPERATOR_JWT
allowedRoles:
  - namespaces: ["*"]
    roles: ["cubbyhole-agent"]
lookupPeriod: 2s
injector:
  image: ghcr.io/cubbyhole-dev/cubbyhole:0.1.0
CFG
stage 4 "operator (as its service account, exactly config/rbac), serving the webhook on 127.0.0.1:18443"
# A previous demo's operator is replaced, so it runs this build with the webhook on.
if [[ -s "$DIR/operator.pid" ]] && kill -0 "$(cat "$DIR/operator.pid")" 2>/dev/null; then
  kill "$(cat "$DIR/operator.pid")"; sleep 1
fi
KUBECONFIG="$OPERATOR_KUBECONFIG" POD_NAMESPACE=cubbyhole-system \
  "$BIN" operator --config "$DIR/operator.yaml" --listen 127.0.0.1:18080 \
  --webhook-listen 127.0.0.1:18443 >"$DIR/operator.log" 2>&1 &
echo $! >"$DIR/operator.pid"
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.2; done
curl -sf http://127.0.0.1:18080/readyz >/dev/null || { echo "operator not ready; see $DIR/operator.log"; exit 1; }

stage 5 "admission webhook: config/webhook/ as shipped, but reached by URL on 127.0.0.1 (no Service routing here)"
kubectl create --dry-run=client -o json -f "$ROOT/config/webhook/mutating_webhook.yaml" | python3 -c '
import json, sys
c = json.load(sys.stdin)
for w in c["webhooks"]:
    w["clientConfig"] = {"url": "https://127.0.0.1:18443/mutate-pods"}
json.dump(c, sys.stdout)' | kubectl apply -f -
kubectl apply -f "$ROOT/config/samples/binding.yaml"
echo "waiting for the operator to put its CA into the caBundle and the API server to trust it..."
for _ in $(seq 1 150); do
  out="$(kubectl run probe --image=x --labels=cubbyhole.dev/inject=true,app=research-agent \
    --dry-run=server -o jsonpath='{.metadata.annotations.cubbyhole\.dev/injected}' 2>&1 || true)"
  [[ "$out" == research-agents ]] && break; sleep 0.2
done
[[ "$out" == research-agents ]] || { echo "webhook not reachable: $out"; exit 1; }
echo "the API server calls the webhook over TLS"

# The node's pods share its network (hostNetwork) to reach OpenBao on 127.0.0.1; on a real
# cluster the samples need no change.
host_network() { python3 -c '
import json, sys
o = json.load(sys.stdin)
spec = o["spec"]["template"]["spec"] if o["kind"] == "Deployment" else o["spec"]
spec["hostNetwork"] = True
for c in spec.get("initContainers", []):
    for e in c.get("env", []):
        if e["name"] == "VAULT_ADDR":
            e["value"] = sys.argv[1]
json.dump(o, sys.stdout)' "$VAULT_ADDR"; }
stage 6 "config/samples: a hand-plumbed agent pod and the 3-replica Deployment (label cubbyhole.dev/inject=true, nothing else)"
kubectl create --dry-run=client -o json -f "$ROOT/config/samples/agent-pod.yaml" | host_network | kubectl apply -f -
kubectl create --dry-run=client -o json -f "$ROOT/config/samples/agent-deployment.yaml" | host_network | kubectl apply -f -
for _ in $(seq 1 100); do
  n=$(kubectl get pods -l fleet=research -o name | wc -l)
  [[ "$n" -ge 3 ]] && break; sleep 0.2
done
echo "\$ kubectl get pods -l fleet=research   # what the webhook injected: Secret name, init container, volumes"
kubectl get pods -l fleet=research \
  -o custom-columns='POD:.metadata.name,SECRET:.metadata.annotations.cubbyhole\.dev/secret-name,INIT:.spec.initContainers[0].name,VOLUMES:.spec.volumes[*].name'

stage 7 "the kubelet runs them: init container unwraps from the Secret volume, the agent finds its token"
echo "waiting for the 4 agent pods to run (image unpacking, sandboxes, the unwrap)..."
for _ in $(seq 1 300); do
  n=$(kubectl get pods -l app=research-agent --field-selector=status.phase=Running -o name | wc -l)
  [[ "$n" -ge 4 ]] && break; sleep 0.5
done
echo "\$ kubectl get pods -l app=research-agent -o wide"; kubectl get pods -l app=research-agent -o wide
echo; echo "what each agent container printed (the kubelet's log files; no kubectl logs: the API server"
echo "would have to reach the kubelet on the node's non-loopback address):"
for f in "$DIR"/cluster/node/pod-logs/*/agent/0.log; do
  [[ -s "$f" ]] && echo "  $(basename "$(dirname "$(dirname "$f")")" | cut -d_ -f2): $(cut -d' ' -f4- "$f" | head -1)"
done
echo "waiting for the operator to verify the receipts (the kubelet's termination messages)..."
for _ in $(seq 1 60); do
  v=$(kubectl get secrets -l cubbyhole.dev/binding=research-agents -o json | python3 -c '
import json, sys
print(sum(1 for s in json.load(sys.stdin)["items"] if s["metadata"]["annotations"].get("cubbyhole.dev/verified") == "true"))')
  [[ "$v" -ge 4 ]] && break; sleep 0.5
done
# The binding's status is written at most every few seconds: wait until it shows what the
# Secrets already say (4 pods, 4 unwrapped, 4 records verified), or say what still settles.
echo "waiting for the binding's status to show them..."
settled() { kubectl get asb research-agents -o json | python3 -c '
import json, sys
s = json.load(sys.stdin).get("status", {})
verified = sum(1 for r in s.get("records", []) if r.get("phase") == "Unwrapped" and r.get("verified"))
print("yes" if (s.get("pods"), s.get("unwrapped"), s.get("pending"), verified) == (4, 4, 0, 4) else "no")'; }
for _ in $(seq 1 60); do [[ "$(settled)" == yes ]] && break; sleep 0.5; done
echo; echo "\$ kubectl get asb"; kubectl get asb
echo; echo "\$ kubectl get secrets -l app.kubernetes.io/managed-by=cubbyhole -L cubbyhole.dev/binding"
kubectl get secrets -l app.kubernetes.io/managed-by=cubbyhole -L cubbyhole.dev/binding
echo; echo "\$ kubectl get asb research-agents -o jsonpath='{.status.records}'"
kubectl get asb research-agents -o jsonpath='{range .status.records[*]}{.pod}{"\t"}{.phase}{"\tverified="}{.verified}{"\taccessor="}{.accessor}{"\n"}{end}'
if [[ "$(settled)" != yes ]]; then
  cat <<MSG

Still settling: the status above does not yet show all 4 pods unwrapped and verified (the
operator writes it every few seconds; run \`kubectl get asb -w\` to watch it catch up). If it
never does, see the operator log below and README "Troubleshooting".
MSG
fi
cat <<MSG

The kubelet ran research-agent-0 (hand-plumbed) and the three research-fleet pods (a Deployment:
names chosen by the ReplicaSet, plumbing injected by the webhook). Each init container unwrapped
its own wrap into an in-memory volume (mode 0400), each agent container found its token, and the
receipts (the kubelet's termination messages) verified them. Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl delete pod -l fleet=research      # tokens revoked; the new pods get their own
  kubectl get asb -w
  kubectl get events.events.k8s.io
Operator log: $DIR/operator.log   metrics: curl -s localhost:18080/metrics
Node logs: $DIR/cluster/kubelet.log, containerd.log; pod logs under $DIR/cluster/node/pod-logs
Stop everything: just cluster-down
MSG
