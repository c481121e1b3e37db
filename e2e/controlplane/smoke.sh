#!/usr/bin/env bash
# smoke.sh DIR: checks a running control plane (./up.sh DIR) with kubectl and curl.
# Prints one PASS/FAIL line per check; exits non-zero if any check failed.
set -uo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR="$(cd "$1" && pwd)"
source "$DIR/env"
export KUBECONFIG
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
K() { kubectl --request-timeout=10s "$@"; }
C() { curl -sS --max-time 10 --cacert "$DIR/certs/ca.crt" --cert "$DIR/certs/admin.crt" --key "$DIR/certs/admin.key" "$@"; }
FAILS=0
check() { # name, command...
  local name="$1"; shift
  if out="$("$@" 2>&1)"; then echo "PASS $name"; else echo "FAIL $name"; echo "$out" | tail -5 | sed 's/^/     /'; FAILS=$((FAILS+1)); fi
}
NS="smoke-$RANDOM"

check "create namespace" K create namespace "$NS"
check "get core kinds" K get pods,secrets,ns,leases,serviceaccounts,configmaps,events -A
check "api-resources" bash -c "kubectl api-resources | awk '{print \$1}' | sort -u | grep -cE '^(pods|secrets|namespaces|leases|events)$' | grep -qx 5"

cat >"$T/pod.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: $NS, labels: {app: smoke}}
spec:
  containers:
  - {name: c, image: busybox, env: [{name: A, value: "1"}, {name: B, value: "1"}]}
EOF
cat >"$T/secret.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: $NS, labels: {app: smoke}}
stringData: {token: hello}
EOF
check "apply pod+secret" K apply -f "$T/pod.yaml" -f "$T/secret.yaml"
sed -i 's/name: B, value: "1"/name: B, value: "2"/' "$T/pod.yaml"; sed -i 's/hello/world/' "$T/secret.yaml"
check "re-apply (strategic merge patch)" K apply -f "$T/pod.yaml" -f "$T/secret.yaml"
check "re-apply changed env" bash -c "kubectl get pod x -n $NS -o jsonpath='{.spec.containers[0].env[1].value}' | grep -qx 2"
check "stringData folded into data" bash -c "kubectl get secret s -n $NS -o jsonpath='{.data.token}' | base64 -d | grep -qx world"
check "secret type defaults to Opaque" bash -c "kubectl get secret s -n $NS -o jsonpath='{.type}' | grep -qx Opaque"
check "pod -o yaml says apiVersion: v1" bash -c "kubectl get pod x -n $NS -o yaml | grep -qx 'apiVersion: v1'"
check "pod phase defaults to Pending" bash -c "kubectl get pod x -n $NS -o jsonpath='{.status.phase}' | grep -qx Pending"
check "label selector" bash -c "kubectl get pods,secrets -n $NS -l app=smoke -o name | wc -l | grep -qx 2"
check "kubectl patch (strategic)" K patch pod x -n "$NS" -p '{"metadata":{"labels":{"patched":"yes"}}}'
check "status patch" K patch pod x -n "$NS" --subresource=status --type=merge -p '{"status":{"phase":"Running"}}'
check "field selector status.phase" bash -c "kubectl get pods -n $NS --field-selector status.phase=Running -o name | grep -qx pod/x"
check "field selector metadata.name" bash -c "kubectl get pods -A --field-selector metadata.name=x,metadata.namespace=$NS -o name | grep -qx pod/x"

UID_="$(K get pod x -n "$NS" -o jsonpath='{.metadata.uid}')"
cat >"$T/owned.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: owned
  namespace: $NS
  ownerReferences: [{apiVersion: v1, kind: Pod, name: x, uid: "$UID_", controller: true}]
stringData: {k: v}
EOF
check "server-side apply with ownerReference" K apply --server-side --field-manager smoke -f "$T/owned.yaml"
check "ownerReference kept (apiVersion v1)" bash -c "kubectl get secret owned -n $NS -o jsonpath='{.metadata.ownerReferences[0].apiVersion}/{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].uid}' | grep -qx 'v1/Pod/$UID_'"
check "SSA conflict for a second manager" bash -c "sed 's/k: v/k: w/' $T/owned.yaml | kubectl apply --server-side --field-manager other -f - 2>&1 | grep -q -i conflict"

check "409 on create existing" bash -c "curl -s -o /dev/null -w '%{http_code}' --cacert $DIR/certs/ca.crt --cert $DIR/certs/admin.crt --key $DIR/certs/admin.key -XPOST -H 'Content-Type: application/json' $APISERVER_URL/api/v1/namespaces/$NS/secrets -d '{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":\"s\"}}' | grep -qx 409"
check "410 on too-old watch" bash -c "curl -sN --max-time 3 --cacert $DIR/certs/ca.crt --cert $DIR/certs/admin.crt --key $DIR/certs/admin.key '$APISERVER_URL/api/v1/namespaces/$NS/pods?watch=1&resourceVersion=1' | grep -q '\"code\":410'"

# watch: start, then change the pod, expect MODIFIED with apiVersion v1
( C -N --max-time 4 "$APISERVER_URL/api/v1/namespaces/$NS/pods?watch=1&allowWatchBookmarks=true" >"$T/watch.out" 2>&1 & )
( timeout 4 kubectl get pods -n "$NS" -w --no-headers >"$T/kwatch.out" 2>&1 & )
sleep 1; K label pod x -n "$NS" watched=yes >/dev/null; sleep 3.5
check "curl watch streams apiVersion v1" bash -c "grep '\"type\":\"MODIFIED\"' $T/watch.out | grep -q '\"object\":{\"apiVersion\":\"v1\",\"kind\":\"Pod\"'"
check "kubectl get -w" bash -c "test \$(grep -c '^x ' $T/kwatch.out) -ge 2"

check "events (core v1)" K create -n "$NS" -f - <<EOF
{"apiVersion":"v1","kind":"Event","metadata":{"name":"e1"},"involvedObject":{"kind":"Pod","name":"x","namespace":"$NS"},"reason":"Smoke","message":"hi","type":"Normal"}
EOF
check "events field selector" bash -c "kubectl get events -n $NS --field-selector involvedObject.name=x,reason=Smoke -o name | grep -q e1"
check "events.k8s.io/v1" K create -n "$NS" -f - <<EOF
{"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"e2"},"eventTime":"2026-01-01T00:00:00.000000Z","reportingController":"smoke","reportingInstance":"smoke","action":"Test","reason":"Smoke","regarding":{"kind":"Pod","name":"x","namespace":"$NS"},"type":"Normal"}
EOF
check "lease create" K create -n "$NS" -f - <<EOF
{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"l1"},"spec":{"holderIdentity":"a","leaseDurationSeconds":15}}
EOF
check "lease strategic patch" K patch lease l1 -n "$NS" -p '{"spec":{"holderIdentity":"b"}}'
check "serviceaccount+configmap" bash -c "kubectl create sa sa1 -n $NS && kubectl create cm cm1 -n $NS --from-literal=a=b"

cat >"$T/crd.yaml" <<EOF
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.example.com}
spec:
  group: smoke.example.com
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
EOF
check "CRD apply + Established" bash -c "kubectl apply -f $T/crd.yaml && kubectl wait --for=condition=Established crd/widgets.smoke.example.com --timeout=20s"
check "CRD object create" bash -c "echo '{\"apiVersion\":\"smoke.example.com/v1\",\"kind\":\"Widget\",\"metadata\":{\"name\":\"w1\",\"namespace\":\"$NS\"},\"spec\":{\"size\":3}}' | kubectl create -f - && kubectl get widgets -n $NS w1"

check "delete pod" K delete pod x -n "$NS" --wait=true --timeout=10s
check "namespace get (cluster scoped)" K get ns "$NS" -o name
K delete crd widgets.smoke.example.com --wait=false >/dev/null 2>&1
K delete ns "$NS" --wait=false >/dev/null 2>&1
echo "---- $FAILS failed"
exit $((FAILS > 0))
