#!/usr/bin/env bash
# demo.sh: one command for a newcomer. Starts the local cluster and OpenBao, runs the operator
# (with its admission webhook), applies config/samples (a binding and three agent pods), plays the
# kubelet for one pod by running `cubbyhole unwrap` and reporting its receipt, then installs the
# webhook and the sample 3-replica agent Deployment and shows each of its pods receiving,
# unwrapping and verifying its own wrap. Prints each stage as it goes.
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
  echo "First run: building kube-apiserver, kube-controller-manager and etcd from the official"
  echo "Kubernetes Go modules and the cubbyhole binary. That takes about 10 minutes on 2 cores"
  echo "(cached afterwards: later runs start in well under a minute)."
fi
stage 1 "local control plane (real kube-apiserver + kube-controller-manager + etcd) and OpenBao"
with_heartbeat "building/starting the control plane" "$ROOT/e2e/cluster-up.sh" "$DIR" >/dev/null
set -a; source "$DIR/env"; set +a
stage 2 "building cubbyhole (cargo build; a few minutes the first time)"
with_heartbeat "compiling cubbyhole" bash -c "cd '$ROOT' && cargo build -q"
BIN="$ROOT/target/debug/cubbyhole"

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
CFG
stage 3 "operator (as its service account, exactly config/rbac), serving the webhook on 127.0.0.1:18443"
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

stage 4 "config/samples: the binding and three hand-plumbed agent pods"
kubectl apply -f "$ROOT/config/samples/binding.yaml"
for i in 0 1 2; do
  sed "s/research-agent-0/research-agent-$i/g" "$ROOT/config/samples/agent-pod.yaml" | kubectl apply -f -
done
echo "waiting for the operator to mint their wraps..."
for _ in $(seq 1 50); do
  n=$(kubectl get secrets -l app.kubernetes.io/managed-by=cubbyhole -o name | wc -l)
  [[ "$n" -ge 3 ]] && break; sleep 0.2
done

# Play the kubelet for research-agent-0: run the init container's command, report its receipt.
echo "playing the kubelet for research-agent-0: cubbyhole unwrap, then its receipt"
WORK="$DIR/agent-0"; mkdir -p "$WORK"; chmod 700 "$WORK"
kubectl get secret research-agent-0-wrap -o jsonpath='{.data.token}' | base64 -d >"$WORK/wrap"
"$BIN" unwrap --token-file "$WORK/wrap" --out "$WORK/token" --receipt-file "$WORK/receipt" \
  --expect-path auth/token/create/cubbyhole-agent --vault-addr "$VAULT_ADDR"
rm -f "$WORK/wrap"
now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
kubectl patch pod research-agent-0 --subresource=status --type=merge -p "$(cat <<JSON
{"status":{"phase":"Running","initContainerStatuses":[{"name":"unwrap","image":"cubbyhole","imageID":"","ready":true,"restartCount":0,
 "state":{"terminated":{"exitCode":0,"finishedAt":"$now","message":$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$WORK/receipt")}}}]}}
JSON
)" >/dev/null

stage 5 "admission webhook: config/webhook/ as shipped, but reached by URL on 127.0.0.1 (no Service routing here)"
kubectl create --dry-run=client -o json -f "$ROOT/config/webhook/mutating_webhook.yaml" | python3 -c '
import json, sys
c = json.load(sys.stdin)
for w in c["webhooks"]:
    w["clientConfig"] = {"url": "https://127.0.0.1:18443/mutate-pods"}
json.dump(c, sys.stdout)' | kubectl apply -f -
echo "waiting for the operator to put its CA into the caBundle and the API server to trust it..."
for _ in $(seq 1 150); do
  out="$(kubectl run probe --image=x --labels=cubbyhole.dev/inject=true,app=research-agent \
    --dry-run=server -o jsonpath='{.metadata.annotations.cubbyhole\.dev/injected}' 2>&1 || true)"
  [[ "$out" == research-agents ]] && break; sleep 0.2
done
[[ "$out" == research-agents ]] || { echo "webhook not reachable: $out"; exit 1; }
echo "the API server calls the webhook over TLS"

stage 6 "config/samples/agent-deployment.yaml: 3 replicas, label cubbyhole.dev/inject=true, nothing else"
kubectl apply -f "$ROOT/config/samples/agent-deployment.yaml"
for _ in $(seq 1 100); do
  n=$(kubectl get pods -l fleet=research -o name | wc -l)
  [[ "$n" -ge 3 ]] && break; sleep 0.2
done
echo "\$ kubectl get pods -l fleet=research   # what the webhook injected: Secret name, init container, volumes"
kubectl get pods -l fleet=research \
  -o custom-columns='POD:.metadata.name,SECRET:.metadata.annotations.cubbyhole\.dev/secret-name,INIT:.spec.initContainers[0].name,VOLUMES:.spec.volumes[*].name'
FLEET=$(kubectl get pods -l fleet=research -o jsonpath='{.items[*].metadata.name}')
echo "waiting for a wrap in each pod's injected Secret..."
for pod in $FLEET; do
  secret=$(kubectl get pod "$pod" -o jsonpath='{.metadata.annotations.cubbyhole\.dev/secret-name}')
  for _ in $(seq 1 100); do
    [[ -n "$(kubectl get secret "$secret" -o jsonpath='{.data.token}' 2>/dev/null)" ]] && break; sleep 0.2
  done
done

stage 7 "playing the kubelet for each Deployment pod: its injected init container, exactly as stored"
for pod in $FLEET; do
  WORK="$DIR/$pod"; mkdir -p "$WORK"; chmod 700 "$WORK"
  secret=$(kubectl get pod "$pod" -o jsonpath='{.metadata.annotations.cubbyhole\.dev/secret-name}')
  kubectl get secret "$secret" -o jsonpath='{.data.token}' | base64 -d >"$WORK/wrap"
  mapfile -t args < <(kubectl get pod "$pod" -o json | python3 -c '
import json, sys
c = json.load(sys.stdin)["spec"]["initContainers"][0]
print("\n".join(c["args"]))')
  run=()
  for a in "${args[@]}"; do
    case "$a" in
      --token-file=*) run+=("--token-file=$WORK/wrap") ;;
      --out=*) run+=("--out=$WORK/token") ;;
      *) run+=("$a") ;;
    esac
  done
  echo "$pod: cubbyhole ${args[*]}"
  "$BIN" "${run[@]}" --receipt-file "$WORK/receipt"
  rm -f "$WORK/wrap"
  now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  kubectl patch pod "$pod" --subresource=status --type=merge -p "$(cat <<JSON
{"status":{"phase":"Running","initContainerStatuses":[{"name":"unwrap","image":"cubbyhole","imageID":"","ready":true,"restartCount":0,
 "state":{"terminated":{"exitCode":0,"finishedAt":"$now","message":$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$WORK/receipt")}}}]}}
JSON
)" >/dev/null
  echo "$pod: unwrapped into $WORK/token (mode 0400), receipt reported"
done
echo "waiting for the operator to verify the receipts..."
for _ in $(seq 1 60); do
  v=0
  for pod in $FLEET; do
    [[ "$(kubectl get secrets -l cubbyhole.dev/binding=research-agents -o jsonpath="{range .items[?(@.metadata.annotations.cubbyhole\.dev/pod==\"$pod\")]}{.metadata.annotations.cubbyhole\.dev/verified}{end}")" == true ]] && v=$((v + 1))
  done
  [[ "$v" -eq 3 ]] && break; sleep 0.5
done
echo; echo "\$ kubectl get asb"; kubectl get asb
echo; echo "\$ kubectl get secrets -l app.kubernetes.io/managed-by=cubbyhole -L cubbyhole.dev/binding"
kubectl get secrets -l app.kubernetes.io/managed-by=cubbyhole -L cubbyhole.dev/binding
echo; echo "\$ kubectl get asb research-agents -o jsonpath='{.status.records}'"
kubectl get asb research-agents -o jsonpath='{range .status.records[*]}{.pod}{"\t"}{.phase}{"\tverified="}{.verified}{"\taccessor="}{.accessor}{"\n"}{end}'
cat <<MSG

research-agent-0 and the three research-fleet pods (a Deployment: names chosen by the ReplicaSet,
plumbing injected by the webhook) unwrapped their tokens (mode 0400, in $DIR/agent-0/token and $DIR/<pod>/token) and
their receipts verified them. The other two bare pods' wraps expire unconsumed in about a minute:
watch them turn Expired (Degraded=True):
  export KUBECONFIG=$KUBECONFIG
  kubectl get asb -w
  kubectl get events.events.k8s.io
Operator log: $DIR/operator.log   metrics: curl -s localhost:18080/metrics
Stop everything: just cluster-down
MSG
