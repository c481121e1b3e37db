#!/usr/bin/env bash
# up.sh DIR: start etcd, the real kube-apiserver and kube-controller-manager on random free
# 127.0.0.1 ports, state in DIR. Real security: client certificates, RBAC + Node authorisation,
# the default admission plugins (webhooks included), service-account issuer and signing keys.
# Writes DIR/kubeconfig (admin, system:masters), DIR/env, DIR/*.pid, DIR/*.log.
# Idempotent: on a DIR that is already up it only checks readiness and returns.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
CERTS="$DIR/certs"
READY_TIMEOUT="${CUBBYHOLE_READY_TIMEOUT:-60}"

die() { echo "up.sh: ERROR: $*" >&2; exit 1; }
alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_port() { python3 "$HERE/../free-port.py"; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

api() { # path: GET as admin, quiet
  curl -sf --max-time 2 --cacert "$CERTS/ca.crt" --cert "$CERTS/admin.crt" --key "$CERTS/admin.key" \
    "https://127.0.0.1:$API_PORT$1" >/dev/null 2>&1
}
# Ready: the API server's own checks pass and the controller-manager has created the default
# service account (so pods can be created in a new namespace as soon as up.sh returns).
ready() { api /readyz && api /api/v1/namespaces/default/serviceaccounts/default; }

# ---- already up? ------------------------------------------------------------------------
if [[ -f "$DIR/ports.env" ]]; then source "$DIR/ports.env"; fi
if alive "$DIR/apiserver.pid" && alive "$DIR/etcd.pid" && alive "$DIR/controller-manager.pid" \
   && [[ -n "${API_PORT:-}" ]] && ready; then
  echo "up.sh: already running: KUBECONFIG=$DIR/kubeconfig"
  exit 0
fi

# ---- binaries -------------------------------------------------------------------------
"$HERE/build.sh" >"$DIR/build.log" 2>&1 || { tail -30 "$DIR/build.log" >&2; die "build.sh failed (full log: $DIR/build.log)"; }
source "${CUBBYHOLE_CACHE:-$HOME/.cache/cubbyhole}/controlplane/current.env"
for b in "$APISERVER_BIN" "$CONTROLLER_MANAGER_BIN" "$ETCD_BIN"; do [[ -x "$b" ]] || die "missing $b after build"; done

# ---- certificates and keys (EC P-256, PKCS#8: accepted by Go, kubectl and rustls) ----
if [[ ! -s "$CERTS/sa.pub" ]]; then
  rm -rf "$CERTS"; mkdir -p "$CERTS"; chmod 700 "$CERTS"
  (
    cd "$CERTS"
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    key ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=cubbyhole-e2e-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out ca.crt 2>/dev/null
    sign() { # name subject extensions
      key "$1.key"
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    client="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    sign server "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    sign admin "/O=system:masters/CN=cubbyhole-admin" "$client"
    sign controller-manager "/CN=system:kube-controller-manager" "$client"
    # Service-account token signing key pair (TokenRequest, projected tokens, TokenReview).
    key sa.key
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || die "certificate generation with openssl failed"
fi

# ---- ports (reused across restarts so etcd's stored peer URL stays valid) -------------
if [[ -z "${ETCD_PORT:-}" ]] || ! { port_free "$ETCD_PORT" || alive "$DIR/etcd.pid"; }; then ETCD_PORT="$(free_port)"; fi
if [[ -z "${PEER_PORT:-}" ]] || ! { port_free "$PEER_PORT" || alive "$DIR/etcd.pid"; }; then PEER_PORT="$(free_port)"; fi
if [[ -z "${API_PORT:-}" ]] || ! { port_free "$API_PORT" || alive "$DIR/apiserver.pid"; }; then API_PORT="$(free_port)"; fi
printf 'ETCD_PORT=%s\nPEER_PORT=%s\nAPI_PORT=%s\n' "$ETCD_PORT" "$PEER_PORT" "$API_PORT" >"$DIR/ports.env"

kubeconfig() { # file user cert key
  local b64; b64() { base64 -w0 <"$1"; }
  cat >"$1.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: cubbyhole-e2e
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$CERTS/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$3")
    client-key-data: $(b64 "$4")
contexts:
- name: cubbyhole-e2e
  context:
    cluster: cubbyhole-e2e
    user: $2
    namespace: default
current-context: cubbyhole-e2e
KC
  chmod 600 "$1.tmp"; mv "$1.tmp" "$1"
}
kubeconfig "$DIR/kubeconfig" cubbyhole-admin "$CERTS/admin.crt" "$CERTS/admin.key"
kubeconfig "$DIR/controller-manager.kubeconfig" system:kube-controller-manager \
  "$CERTS/controller-manager.crt" "$CERTS/controller-manager.key"

# ---- etcd -----------------------------------------------------------------------------
if ! alive "$DIR/etcd.pid"; then
  nohup "$ETCD_BIN" --name cubbyhole --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "cubbyhole=http://127.0.0.1:$PEER_PORT" --listen-metrics-urls "" \
    --unsafe-no-fsync --heartbeat-interval 10 --election-timeout 100 --log-level warn --quota-backend-bytes 2147483648 \
    >"$DIR/etcd.log" 2>&1 </dev/null &
  echo $! >"$DIR/etcd.pid"
fi
for _ in $(seq 1 100); do
  curl -sf --max-time 1 "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && break
  alive "$DIR/etcd.pid" || { tail -20 "$DIR/etcd.log" >&2; die "etcd exited (log: $DIR/etcd.log)"; }
  sleep 0.1
done

# ---- how the API server authenticates to webhooks --------------------------------------
# Every webhook it calls gets `Authorization: Bearer <webhook-caller-token>` (the admission
# kubeconfig's default user '*'); an operator given --webhook-caller-token-file answers only that.
if [[ ! -s "$DIR/webhook-caller-token" ]]; then
  (umask 077; head -c 32 /dev/urandom | base64 -w0 | tr -d '/+=' >"$DIR/webhook-caller-token")
fi
cat >"$DIR/webhook-callers.kubeconfig" <<KC
apiVersion: v1
kind: Config
users:
- name: '*'
  user:
    tokenFile: $DIR/webhook-caller-token
KC
cat >"$DIR/admission.yaml" <<AC
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $DIR/webhook-callers.kubeconfig
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $DIR/webhook-callers.kubeconfig
AC

# ---- kube-apiserver -------------------------------------------------------------------
# Services get cluster IPs from the default range, but nothing here ever connects to one:
# no endpoint reconciler, and webhooks are reached by URL on 127.0.0.1.
if ! alive "$DIR/apiserver.pid"; then
  nohup "$APISERVER_BIN" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$CERTS/server.crt" --tls-private-key-file "$CERTS/server.key" \
    --client-ca-file "$CERTS/ca.crt" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --admission-control-config-file "$DIR/admission.yaml" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$CERTS/sa.pub" --service-account-signing-key-file "$CERTS/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 --endpoint-reconciler-type none \
    --profiling=false --shutdown-delay-duration 0 --v "${CUBBYHOLE_APISERVER_V:-1}" \
    ${CUBBYHOLE_APISERVER_FEATURE_GATES:+--feature-gates "$CUBBYHOLE_APISERVER_FEATURE_GATES"} \
    >"$DIR/apiserver.log" 2>&1 </dev/null &
  echo $! >"$DIR/apiserver.pid"
fi

start=$SECONDS
until api /readyz; do
  alive "$DIR/apiserver.pid" || { tail -30 "$DIR/apiserver.log" >&2; die "kube-apiserver exited (log: $DIR/apiserver.log)"; }
  (( SECONDS - start < READY_TIMEOUT )) || { tail -30 "$DIR/apiserver.log" >&2; die "kube-apiserver not ready after ${READY_TIMEOUT}s"; }
  sleep 0.1
done

# ---- kube-controller-manager ----------------------------------------------------------
# The controllers a cluster needs for what we test: service accounts, namespace deletion,
# garbage collection, Deployments/ReplicaSets, StatefulSets, Jobs, the root CA ConfigMap.
# Each runs as its own service account, as on kubeadm clusters. The node lifecycle controller
# lifts the not-ready taint a kubelet registers with (node-up.sh) once the node is Ready.
if ! alive "$DIR/controller-manager.pid"; then
  nohup "$CONTROLLER_MANAGER_BIN" \
    --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    --use-service-account-credentials --service-account-private-key-file "$CERTS/sa.key" \
    --root-ca-file "$CERTS/ca.crt" \
    --controllers serviceaccount-controller,namespace-controller,garbage-collector-controller,deployment-controller,replicaset-controller,statefulset-controller,job-controller,root-ca-certificate-publisher-controller,node-lifecycle-controller \
    --profiling=false --v "${CUBBYHOLE_CONTROLLER_MANAGER_V:-1}" \
    >"$DIR/controller-manager.log" 2>&1 </dev/null &
  echo $! >"$DIR/controller-manager.pid"
fi

printf 'KUBECONFIG=%s\nAPISERVER_URL=https://127.0.0.1:%s\nETCD_URL=http://127.0.0.1:%s\nKUBE_CA=%s\nK8S_VERSION=%s\n' \
  "$DIR/kubeconfig" "$API_PORT" "$ETCD_PORT" "$CERTS/ca.crt" "$K8S_VERSION" >"$DIR/env"

# Watchdog: if DIR is deleted without down.sh (a test harness removing its temp dir), or the
# API server dies, stop every process instead of leaking them. down.sh stops it first.
if ! alive "$DIR/watchdog.pid"; then
  AP="$(cat "$DIR/apiserver.pid")" EP="$(cat "$DIR/etcd.pid")" CP="$(cat "$DIR/controller-manager.pid")"
  nohup bash -c 'while [[ -d "$0" ]] && kill -0 "$1" 2>/dev/null; do sleep 2; done
    kill -TERM "$3" 2>/dev/null; [[ -d "$0" ]] || kill -TERM "$1" "$2" 2>/dev/null' \
    "$DIR" "$AP" "$EP" "$CP" >/dev/null 2>&1 </dev/null &
  echo $! >"$DIR/watchdog.pid"
fi

until ready; do
  for p in apiserver controller-manager; do
    alive "$DIR/$p.pid" || { tail -30 "$DIR/$p.log" >&2; die "$p exited (log: $DIR/$p.log)"; }
  done
  (( SECONDS - start < READY_TIMEOUT )) || { tail -30 "$DIR/controller-manager.log" >&2; die "control plane not ready after ${READY_TIMEOUT}s"; }
  sleep 0.1
done
echo "up.sh: Kubernetes $K8S_VERSION ready at https://127.0.0.1:$API_PORT in $((SECONDS - start)) s: KUBECONFIG=$DIR/kubeconfig"
