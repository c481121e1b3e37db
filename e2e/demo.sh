#!/usr/bin/env bash
# demo.sh: one command for a newcomer. Starts the local cluster and OpenBao, runs the operator,
# applies config/samples (a binding and three agent pods), plays the kubelet for one pod by
# running `cubbyhole unwrap` and reporting its receipt, and shows what happened.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/target/e2e"
"$ROOT/e2e/cluster-up.sh" "$DIR" >/dev/null
set -a; source "$DIR/env"; set +a
(cd "$ROOT" && cargo build -q)
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
if ! { [[ -s "$DIR/operator.pid" ]] && kill -0 "$(cat "$DIR/operator.pid")" 2>/dev/null; }; then
  KUBECONFIG="$OPERATOR_KUBECONFIG" \
    "$BIN" operator --config "$DIR/operator.yaml" --listen 127.0.0.1:18080 >"$DIR/operator.log" 2>&1 &
  echo $! >"$DIR/operator.pid"
fi
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.2; done

kubectl apply -f "$ROOT/config/samples/binding.yaml"
for i in 0 1 2; do
  sed "s/research-agent-0/research-agent-$i/g" "$ROOT/config/samples/agent-pod.yaml" | kubectl apply -f -
done
echo "waiting for the wraps..."
for _ in $(seq 1 50); do
  n=$(kubectl get secrets -l app.kubernetes.io/managed-by=cubbyhole -o name | wc -l)
  [[ "$n" -ge 3 ]] && break; sleep 0.2
done

# Play the kubelet for research-agent-0: run the init container's command, report its receipt.
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
sleep 3
echo; echo "\$ kubectl get asb"; kubectl get asb
echo; echo "\$ kubectl get secrets -l app.kubernetes.io/managed-by=cubbyhole -L cubbyhole.dev/binding"
kubectl get secrets -l app.kubernetes.io/managed-by=cubbyhole -L cubbyhole.dev/binding
echo; echo "\$ kubectl get asb research-agents -o jsonpath='{.status.records}'"
kubectl get asb research-agents -o jsonpath='{range .status.records[*]}{.pod}{"\t"}{.phase}{"\tverified="}{.verified}{"\taccessor="}{.accessor}{"\n"}{end}'
cat <<MSG

research-agent-0 unwrapped its token (in $WORK/token, mode 0400) and its receipt verified it.
The other two wraps expire unconsumed in about a minute: watch them turn Expired (Degraded=True):
  export KUBECONFIG=$KUBECONFIG
  kubectl get asb -w
  kubectl get events.events.k8s.io
Operator log: $DIR/operator.log   metrics: curl -s localhost:18080/metrics
Stop everything: just cluster-down
MSG
