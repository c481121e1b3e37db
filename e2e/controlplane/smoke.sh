#!/usr/bin/env bash
# smoke.sh DIR: checks a running control plane (./up.sh DIR) with kubectl and curl: that it is
# the real thing (RBAC enforced, admission, controllers, TokenRequest/TokenReview).
# Prints one PASS/FAIL line per check; exits non-zero if any check failed.
set -uo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR="$(cd "$1" && pwd)"
source "$DIR/env"
export KUBECONFIG
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
K() { kubectl --request-timeout=10s "$@"; }
FAILS=0
check() { # name, command...
  local name="$1"; shift
  if out="$("$@" 2>&1)"; then echo "PASS $name"; else echo "FAIL $name"; echo "$out" | tail -5 | sed 's/^/     /'; FAILS=$((FAILS+1)); fi
}
eventually() { # seconds, command...: retry every 0.2 s
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do (( SECONDS < until )) || { "$@"; return 1; }; sleep 0.2; done
}
NS="smoke-$RANDOM"

check "server version is $K8S_VERSION" bash -c "kubectl version -o json | grep -q '\"gitVersion\": \"$K8S_VERSION\"'"
check "create namespace" K create namespace "$NS"
check "default service account created by the controller" eventually 20 K get serviceaccount default -n "$NS"
check "kube-root-ca.crt published" eventually 20 K get configmap kube-root-ca.crt -n "$NS"
check "get core kinds" K get pods,secrets,ns,leases,serviceaccounts,configmaps,events -A

cat >"$T/pod.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: $NS, labels: {app: smoke}}
spec:
  containers: [{name: c, image: busybox}]
YAML
check "create pod" K apply -f "$T/pod.yaml"
check "ServiceAccount admission mounted a projected token" \
  bash -c "kubectl get pod x -n $NS -o jsonpath='{.spec.volumes[0].projected.sources[0].serviceAccountToken.path}' | grep -qx token"
check "status patch" K patch pod x -n "$NS" --subresource=status --type=merge -p '{"status":{"phase":"Running"}}'
check "validation refuses a bad pod" bash -c "! kubectl run bad -n $NS --image='' --restart=Never 2>/dev/null"

# Garbage collection: a Secret owned by the pod goes with it.
UID_="$(K get pod x -n "$NS" -o jsonpath='{.metadata.uid}')"
cat >"$T/owned.yaml" <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: owned
  namespace: $NS
  ownerReferences: [{apiVersion: v1, kind: Pod, name: x, uid: "$UID_"}]
stringData: {k: v}
YAML
check "create owned secret" K apply -f "$T/owned.yaml"
check "delete pod (unscheduled: at once)" K delete pod x -n "$NS" --wait=true --timeout=20s
check "garbage collector removed the owned secret" eventually 30 bash -c "! kubectl get secret owned -n $NS"

# Controllers: a Deployment gets a ReplicaSet and pods named by generateName.
check "create deployment" K create deployment web -n "$NS" --image=busybox --replicas=2
check "replicaset controller created 2 pods" eventually 30 \
  bash -c "kubectl get pods -n $NS -l app=web -o name | wc -l | grep -qx 2"
check "job controller creates a pod" bash -c "kubectl create job j -n $NS --image=busybox && sleep 0.1"
check "job pod exists" eventually 30 bash -c "kubectl get pods -n $NS -l job-name=j -o name | grep -q pod/"

# RBAC: a service account without grants is refused; with a Role it is allowed.
check "create service account" K create serviceaccount probe -n "$NS"
check "TokenRequest" bash -c "kubectl create token probe -n $NS --duration=10m >$T/token"
KT() { kubectl --request-timeout=10s --token="$(cat "$T/token")" --kubeconfig=/dev/null \
  --server="$APISERVER_URL" --certificate-authority="$KUBE_CA" "$@"; }
refused() { local out; out="$(KT "$@" 2>&1)"; [[ "$out" == *Forbidden* ]]; }
whoami_is() { [[ "$(KT auth whoami -o jsonpath='{.status.userInfo.username}')" == "$1" ]]; }
check "RBAC refuses an ungranted verb" refused get pods -n "$NS"
check "whoami is the service account" whoami_is "system:serviceaccount:$NS:probe"
check "grant list pods" K create role reader -n "$NS" --verb=list --resource=pods
check "bind it" K create rolebinding reader -n "$NS" --role=reader --serviceaccount="$NS:probe"
check "RBAC allows the granted verb" eventually 10 KT get pods -n "$NS"
cat >"$T/review.json" <<JSON
{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"$(cat "$T/token")"}}
JSON
check "TokenReview authenticates the token" bash -c "kubectl create -f $T/review.json -o jsonpath='{.status.authenticated}' | grep -qx true"

# Admission webhooks are called: a webhook that cannot be reached, failurePolicy Fail, refuses
# the objects its objectSelector matches and no others.
cat >"$T/webhook.yaml" <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: smoke-$NS}
webhooks:
- name: smoke.cubbyhole.dev
  clientConfig: {url: "https://127.0.0.1:1/validate"}
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}]
  objectSelector: {matchLabels: {smoke-webhook: "yes"}}
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: $NS}}
  failurePolicy: Fail
  sideEffects: None
  admissionReviewVersions: [v1]
  timeoutSeconds: 2
YAML
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hooked, namespace: %s, labels: {smoke-webhook: "yes"}}\n' "$NS" >"$T/hooked.yaml"
webhook_refuses() { local out; out="$(K create -f "$T/hooked.yaml" 2>&1)"; [[ "$out" == *"failed calling webhook"* ]]; }
check "create webhook configuration" K apply -f "$T/webhook.yaml"
check "webhook (unreachable, Fail) refuses a matching object" eventually 10 webhook_refuses
check "non-matching objects pass" K create configmap plain -n "$NS"
check "delete webhook configuration" K delete -f "$T/webhook.yaml"

check "namespace deletion completes (namespace controller)" K delete namespace "$NS" --wait=true --timeout=60s

echo
if ((FAILS)); then echo "smoke: $FAILS check(s) failed"; exit 1; fi
echo "smoke: all checks passed"
